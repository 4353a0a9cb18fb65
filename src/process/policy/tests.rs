use super::*;

/// An event with the attributes a policy looks at. `object` is
/// `(apiGroup, resource, subresource, namespace, name)`; `None` makes a
/// non-resource request to `uri`.
struct Ev {
    user: &'static str,
    groups: &'static [&'static str],
    verb: &'static str,
    object: Option<(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )>,
    uri: &'static str,
    stage: &'static str,
}

const fn ev(
    user: &'static str,
    verb: &'static str,
    object: (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ),
) -> Ev {
    Ev {
        user,
        groups: &["system:authenticated"],
        verb,
        object: Some(object),
        uri: "/api/v1/x",
        stage: "ResponseComplete",
    }
}

const fn url(user: &'static str, uri: &'static str) -> Ev {
    Ev {
        user,
        groups: &["system:authenticated"],
        verb: "get",
        object: None,
        uri,
        stage: "ResponseComplete",
    }
}

impl Ev {
    const fn groups(mut self, g: &'static [&'static str]) -> Self {
        self.groups = g;
        self
    }
    const fn stage(mut self, s: &'static str) -> Self {
        self.stage = s;
        self
    }
    fn json(&self) -> String {
        let mut e = serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": "a1", "stage": self.stage, "requestURI": self.uri, "verb": self.verb,
            "user": {"username": self.user, "groups": self.groups},
        });
        if let Some((g, r, s, ns, n)) = self.object {
            let mut o = serde_json::json!({"resource": r, "apiVersion": "v1"});
            for (k, v) in [
                ("apiGroup", g),
                ("subresource", s),
                ("namespace", ns),
                ("name", n),
            ] {
                if !v.is_empty() {
                    o[k] = v.into();
                }
            }
            e["objectRef"] = o;
        }
        e.to_string()
    }
}

fn policy(file: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/policy")
        .join(file);
    Policy::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// `(level, rule, stage omitted)`.
type Outcome = (AuditLevel, Option<usize>, bool);

/// What `p` decides for event `e`.
fn decide(p: &Policy, e: &Ev) -> Outcome {
    let text = e.json();
    let v = View::new(text.as_bytes()).unwrap();
    let d = p.decide(&v);
    (d.level, d.rule, d.omit_stage)
}

use AuditLevel::{Metadata as M, None as N, Request as Rq, RequestResponse as RR};

#[test]
fn the_kubernetes_docs_example_decides_as_documented() {
    let p = policy("k8s-docs-example.yaml");
    let table: &[(Ev, Outcome)] = &[
        (
            ev("alice", "create", ("", "pods", "", "default", "p")),
            (RR, Some(0), false),
        ),
        // "pods" does not match a subresource of pods.
        (
            ev("alice", "get", ("", "pods", "log", "default", "p")),
            (M, Some(1), false),
        ),
        (
            ev("alice", "update", ("", "pods", "status", "default", "p")),
            (M, Some(1), false),
        ),
        (
            ev("alice", "create", ("", "pods", "exec", "default", "p")),
            (Rq, Some(7), false),
        ),
        (
            ev(
                "alice",
                "get",
                ("", "configmaps", "", "default", "controller-leader"),
            ),
            (N, Some(2), false),
        ),
        (
            ev(
                "alice",
                "get",
                ("", "configmaps", "", "kube-system", "other"),
            ),
            (Rq, Some(5), false),
        ),
        (
            ev("alice", "get", ("", "configmaps", "", "default", "other")),
            (M, Some(6), false),
        ),
        (
            ev(
                "system:kube-proxy",
                "watch",
                ("", "endpoints", "", "default", ""),
            ),
            (N, Some(3), false),
        ),
        (
            ev(
                "system:kube-proxy",
                "list",
                ("", "endpoints", "", "default", ""),
            ),
            (Rq, Some(7), false),
        ),
        (
            ev("bob", "watch", ("", "services", "", "default", "")),
            (Rq, Some(7), false),
        ),
        (url("bob", "/apis/apps/v1"), (N, Some(4), false)),
        (url("bob", "/api"), (N, Some(4), false)),
        (url("bob", "/version"), (N, Some(4), false)),
        (url("bob", "/version/x?y=1"), (M, Some(8), false)),
        (url("bob", "/healthz"), (M, Some(8), false)),
        (
            url("system:anonymous", "/api").groups(&["system:unauthenticated"]),
            (M, Some(8), false),
        ),
        (
            ev("alice", "get", ("", "secrets", "", "default", "s")),
            (M, Some(6), false),
        ),
        (
            ev("alice", "get", ("", "namespaces", "", "", "default")),
            (Rq, Some(7), false),
        ),
        (
            ev(
                "alice",
                "get",
                ("extensions", "ingresses", "", "default", "i"),
            ),
            (Rq, Some(7), false),
        ),
        (
            ev("alice", "get", ("apps", "deployments", "", "default", "d")),
            (M, Some(8), false),
        ),
        (
            ev("alice", "create", ("", "pods", "", "default", "p")).stage("RequestReceived"),
            (RR, Some(0), true),
        ),
        (
            ev("alice", "get", ("apps", "deployments", "", "default", "d"))
                .stage("RequestReceived"),
            (M, Some(8), true),
        ),
    ];
    for (i, (e, want)) in table.iter().enumerate() {
        assert_eq!(decide(&p, e), *want, "row {i}: {}", e.json());
    }
}

#[test]
fn a_managed_provider_shaped_policy_decides_each_field() {
    let p = policy("managed.yaml");
    let sa = &[
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:authenticated",
    ];
    let nodes = &["system:nodes", "system:authenticated"];
    let table: &[(Ev, Outcome)] = &[
        (
            ev(
                "system:serviceaccount:kube-system:x",
                "update",
                ("", "pods", "", "kube-system", "p"),
            )
            .groups(sa),
            (N, Some(0), false),
        ),
        (
            ev("kubelet", "get", ("", "nodes", "status", "", "n1")),
            (N, Some(1), false),
        ),
        (
            ev("kubelet", "update", ("", "nodes", "status", "", "n1")),
            (Rq, Some(8), false),
        ),
        (
            ev("system:node:n1", "watch", ("", "pods", "", "", "")).groups(nodes),
            (N, Some(2), false),
        ),
        (url("bob", "/readyz/etcd"), (N, Some(3), false)),
        (url("bob", "/metrics"), (N, Some(3), false)),
        (url("bob", "/metrics/cadvisor"), (M, Some(9), false)),
        (
            ev("bob", "get", ("", "secrets", "", "default", "s")),
            (M, Some(4), false),
        ),
        (
            ev(
                "bob",
                "create",
                ("", "serviceaccounts", "token", "default", "sa"),
            ),
            (M, Some(4), false),
        ),
        (
            ev(
                "bob",
                "create",
                ("authentication.k8s.io", "tokenreviews", "", "", ""),
            ),
            (M, Some(4), false),
        ),
        (
            ev(
                "bob",
                "create",
                ("rbac.authorization.k8s.io", "clusterroles", "", "", "r"),
            ),
            (RR, Some(5), false),
        ),
        // Cluster-scoped reads: namespaces [""].
        (
            ev("bob", "list", ("", "namespaces", "", "", "")),
            (M, Some(6), false),
        ),
        // "pods/*" matches pods itself too, as in kube-apiserver's checker.
        (
            ev("bob", "list", ("", "pods", "", "default", "")),
            (Rq, Some(7), false),
        ),
        (
            ev("bob", "list", ("", "services", "", "default", "")),
            (M, Some(9), false),
        ),
        // "*/scale" and "pods/*".
        (
            ev(
                "bob",
                "update",
                ("apps", "deployments", "scale", "default", "d"),
            ),
            (Rq, Some(7), false),
        ),
        (
            ev("bob", "get", ("", "pods", "log", "default", "p")),
            (Rq, Some(7), false),
        ),
        (
            ev("bob", "update", ("apps", "deployments", "", "default", "d")),
            (Rq, Some(8), false),
        ),
        (
            ev("bob", "watch", ("apps", "deployments", "", "default", "")).stage("ResponseStarted"),
            (M, Some(9), true),
        ),
        (
            ev("bob", "get", ("", "services", "", "default", "s")).stage("RequestReceived"),
            (M, Some(9), true),
        ),
    ];
    for (i, (e, want)) in table.iter().enumerate() {
        assert_eq!(decide(&p, e), *want, "row {i}: {}", e.json());
    }
}

#[test]
fn rule_fields_and_edge_semantics() {
    let p = Policy::parse(
        r#"
rules:
  - level: Request
    resources: [{group: "", resources: ["configmaps"], resourceNames: ["a", "b"]}]
  - level: Metadata
    namespaces: [""]
  - level: RequestResponse
    nonResourceURLs: ["*"]
  - level: None
"#,
    )
    .unwrap();
    // resourceNames; group "" is core only, so an apps object skips rule 0.
    assert_eq!(
        decide(&p, &ev("u", "get", ("", "configmaps", "", "d", "b"))).1,
        Some(0)
    );
    assert_eq!(
        decide(&p, &ev("u", "get", ("", "configmaps", "", "d", "c"))).1,
        Some(3)
    );
    assert_eq!(
        decide(&p, &ev("u", "get", ("apps", "configmaps", "", "d", "a"))).1,
        Some(3)
    );
    // Cluster-scoped only.
    assert_eq!(
        decide(&p, &ev("u", "get", ("", "nodes", "", "", "n"))).1,
        Some(1)
    );
    // "*" matches every non-resource URL and no resource request.
    assert_eq!(decide(&p, &url("u", "/anything")).1, Some(2));
    // A rule with only a level matches everything; no rule means None.
    assert_eq!(
        decide(&Policy::parse("rules: []").unwrap(), &url("u", "/")),
        (N, None, false)
    );
    // The rule's omitManagedFields wins over the policy's.
    let p = Policy::parse("omitManagedFields: true\nrules:\n- level: Metadata\n  omitManagedFields: false\n- level: Metadata\n").unwrap();
    let text = url("u", "/").json();
    let v = View::new(text.as_bytes()).unwrap();
    assert!(!p.decide(&v).omit_managed_fields);
}

#[test]
fn errors_name_the_rule_index_and_key() {
    let cases = [
        (
            "rules:\n- level: Metadata\n- level: Metadata\n  verb: [get]\n",
            "rules[1].verb",
            "unknown field `verb`",
        ),
        ("rules:\n- level: Everything\n", "rules[0].level", "must be"),
        ("rules:\n- verbs: [get]\n", "rules[0]", "missing"),
        (
            "rules:\n- level: None\n  omitStages: [Done]\n",
            "rules[0].omitStages[0]",
            "unknown stage",
        ),
        (
            "rules:\n- level: None\n  resources: [{group: '', resourcez: [pods]}]\n",
            "rules[0].resources[0].resourcez",
            "unknown field `resourcez`",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: [healthz]\n",
            "rules[0].nonResourceURLs[0]",
            "start with",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]\n",
            "rules[0].nonResourceURLs",
            "both",
        ),
        (
            "rules:\n- level: None\n  resources: [{resourceNames: [a]}]\n",
            "rules[0].resources[0].resourceNames",
            "requires",
        ),
        ("kind: Config\nrules: []\n", "kind", "Policy"),
        (
            "omitStages: [Nope]\nrules: []\n",
            "omitStages[0]",
            "unknown stage",
        ),
    ];
    for (text, key, message) in cases {
        let (k, m) = Policy::parse(text).expect_err(text);
        assert_eq!(k, key, "{text}: {m}");
        assert!(m.contains(message), "{text}: {m}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, cases[0].0).unwrap();
    let e = Policy::load(&file).unwrap_err().to_string();
    assert!(
        e.contains("p.yaml") && e.contains("rules[1]") && e.contains("verb"),
        "{e}"
    );
}
