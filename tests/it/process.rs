//! Per-sink processing seen from outside: the audit policy of one sink, secret
//! redaction in every sink's bytes, labels from the request path, dedup of a
//! re-sent batch (across a restart with the disk buffer), policy reloads and
//! `check-config` of a policy file.

use kube_audit_forwarder::config::{
    BufferKind, Config, Encoding, HttpSinkConfig, LabelFromPathConfig, ProcessConfig, RetryConfig,
    SinkConfig, TcpSinkConfig,
};
use serde_json::{Value, json};

use crate::backends::*;
use crate::harness::*;

/// Values that must appear in no sink's output.
const SECRETS: [&str; 7] = [
    "czNjcjN0LXBhc3N3b3Jk",
    "cGxhaW4tc2VjcmV0LTI=",
    "plain-string-data-value",
    "bGlzdGVkLXNlY3JldA==",
    "eyJhbGciOiJSUzI1NiJ9.dG9rZW4tcmVxdWVzdA.c2ln",
    "review-token-value-42",
    "cmVhZC1zZWNyZXQ=",
];

fn event(id: &str, verb: &str, object: Value, req: Option<Value>, resp: Option<Value>) -> String {
    let mut e = json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": id, "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/team-a/secrets", "verb": verb,
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "objectRef": object, "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": "2026-01-01T00:00:00.000000Z",
        "stageTimestamp": "2026-01-01T00:00:00.002000Z",
    });
    if let Some(r) = req {
        e["requestObject"] = r;
    }
    if let Some(r) = resp {
        e["responseObject"] = r;
    }
    e.to_string()
}

fn secret(name: &str, data: Value, annotations: Value) -> Value {
    json!({"kind": "Secret", "apiVersion": "v1", "type": "Opaque",
        "metadata": {"name": name, "namespace": "team-a", "annotations": annotations}, "data": data})
}

/// A Secret created, updated, patched by `kubectl apply`, listed and read, a
/// TokenRequest and a TokenReview, all at RequestResponse.
fn secret_events() -> Vec<String> {
    let obj = |name: &str| json!({"resource": "secrets", "namespace": "team-a", "name": name, "apiVersion": "v1"});
    let applied = |value: &str| {
        json!({"kubectl.kubernetes.io/last-applied-configuration":
            format!("{}\n", json!({"apiVersion": "v1", "kind": "Secret", "data": {"password": value}, "metadata": {"annotations": {}, "name": "db", "namespace": "team-a"}}))})
    };
    let mut create_req = secret("db", json!({"password": SECRETS[0]}), applied(SECRETS[0]));
    create_req["stringData"] = json!({"note": SECRETS[2]});
    vec![
        event(
            "s-create",
            "create",
            obj("db"),
            Some(create_req),
            Some(secret("db", json!({"password": SECRETS[0]}), json!({}))),
        ),
        event(
            "s-update",
            "update",
            obj("db"),
            Some(secret("db", json!({"password": SECRETS[1]}), json!({}))),
            Some(secret("db", json!({"password": SECRETS[1]}), json!({}))),
        ),
        event(
            "s-patch",
            "patch",
            obj("db"),
            Some(
                json!({"data": {"password": SECRETS[1]}, "metadata": {"annotations": applied(SECRETS[1])}}),
            ),
            Some(secret(
                "db",
                json!({"password": SECRETS[1]}),
                applied(SECRETS[1]),
            )),
        ),
        event(
            "s-list",
            "list",
            json!({"resource": "secrets", "namespace": "team-a", "apiVersion": "v1"}),
            None,
            Some(
                json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
                "items": [secret("a", json!({"k": SECRETS[3]}), json!({})), secret("b", json!({"k": SECRETS[6], "empty": null}), json!({}))]}),
            ),
        ),
        event(
            "s-get",
            "get",
            obj("b"),
            None,
            Some(secret("b", json!({"k": SECRETS[6]}), json!({}))),
        ),
        event(
            "t-request",
            "create",
            json!({"resource": "serviceaccounts", "subresource": "token", "namespace": "team-a", "name": "default", "apiVersion": "v1"}),
            Some(
                json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": {"audiences": ["api"], "expirationSeconds": 3600}}),
            ),
            Some(
                json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": {"audiences": ["api"]},
                "status": {"token": SECRETS[4], "expirationTimestamp": "2026-01-01T01:00:00Z"}}),
            ),
        ),
        event(
            "t-review",
            "create",
            json!({"resource": "tokenreviews", "apiGroup": "authentication.k8s.io", "apiVersion": "v1"}),
            Some(
                json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {"token": SECRETS[5]}}),
            ),
            Some(
                json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {"token": SECRETS[5]}, "status": {"authenticated": true}}),
            ),
        ),
    ]
}

/// The corpus's JSON lines of events that are not about Secrets.
fn corpus_events() -> Vec<String> {
    String::from_utf8(read("corpus/liggitt-audit2rbac/demo.log"))
        .unwrap()
        .lines()
        .filter(|l| !l.contains(r#""resource":"secrets""#))
        .map(str::to_owned)
        .collect()
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_backoff_ms: 20,
        max_backoff_secs: 1,
        ..RetryConfig::default()
    }
}

fn stdout_process(c: &mut Config) -> &mut ProcessConfig {
    match &mut c.sinks[0] {
        SinkConfig::Stdout(s) => &mut s.process,
        _ => panic!("the first sink is not stdout"),
    }
}

#[tokio::test]
async fn secret_values_reach_no_sink_keys_stay_and_other_events_are_byte_identical() {
    let http = HttpBackend::start().await;
    let tcp = TcpBackend::start(TcpMode::Read).await;
    let mut cfg = config();
    cfg.sinks.push(SinkConfig::Http(HttpSinkConfig {
        name: "relay".into(),
        endpoints: vec![format!("http://{}/audit", http.addr)],
        encoding: Encoding::Passthrough,
        retry: fast_retry(),
        ..HttpSinkConfig::default()
    }));
    cfg.sinks.push(SinkConfig::Tcp(TcpSinkConfig {
        name: "lines".into(),
        endpoint: tcp.addr.to_string(),
        retry: fast_retry(),
        ..TcpSinkConfig::default()
    }));
    let fwd = Forwarder::start(cfg).await;
    let secrets = secret_events();
    let others = corpus_events();
    let mut items = secrets.clone();
    items.extend(others.iter().cloned());
    let body = event_list_of(&items);
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);

    let lines = fwd.out.wait_lines(items.len()).await;
    eventually("the relay and line sinks receive every event", || async {
        http.events().len() == items.len() && tcp.lines().len() == items.len()
    })
    .await;
    let relayed: Vec<u8> = http
        .recorded()
        .iter()
        .flat_map(|r| r.plain_body())
        .collect();
    let outputs = [
        fwd.out.text(),
        String::from_utf8(relayed).unwrap(),
        tcp.lines().join("\n"),
    ];
    for (sink, text) in ["stdout", "relay", "lines"].iter().zip(&outputs) {
        for s in SECRETS {
            assert!(!text.contains(s), "{sink} carries {s}");
        }
        assert!(
            text.contains(r#""password":"[REDACTED]""#),
            "{sink}: keys stay"
        );
        assert!(text.contains(r#""token":"[REDACTED]""#), "{sink}");
    }
    // Every event that is not about a secret comes out as it went in.
    assert_eq!(lines[secrets.len()..], others[..]);
    assert_eq!(tcp.lines()[secrets.len()..], others[..]);
    // The list keeps its null and its keys; last-applied stays a JSON string.
    let list = json_of(&lines, "s-list");
    assert_eq!(
        list["responseObject"]["items"][1]["data"],
        json!({"k": "[REDACTED]", "empty": null})
    );
    let patch = json_of(&lines, "s-patch");
    let applied = patch["requestObject"]["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("still a string");
    let applied: Value = serde_json::from_str(applied).expect("still JSON");
    assert_eq!(applied["data"]["password"], "[REDACTED]");
    assert_eq!(applied["metadata"]["name"], "db");

    let want: usize = SECRETS.iter().map(|s| body.matches(s).count()).sum();
    let m = fwd.metrics().await;
    for sink in ["stdout", "relay", "lines"] {
        let got = m.get(&format!(
            r#"audit_forwarder_process_fields_redacted_total{{sink="{sink}"}}"#
        ));
        assert_eq!(got as usize, want, "{sink}");
    }
    fwd.stop().await;
}

fn json_of(lines: &[String], id: &str) -> Value {
    lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["auditID"] == id)
        .unwrap_or_else(|| panic!("no event {id}"))
}

fn labelled(c: &mut Config) {
    let p = stdout_process(c);
    p.labels
        .insert("forwarder.example.com/region".into(), "eu".into());
    p.label_from_path = Some(LabelFromPathConfig {
        annotation: "forwarder.example.com/cluster".into(),
        prefix: "/post/".into(),
    });
    p.dedup.enabled = true;
}

async fn post_to(fwd: &Forwarder, path: &str, body: &str) -> u16 {
    post(
        fwd.addr,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .status
}

#[tokio::test]
async fn two_clusters_are_labelled_apart_and_a_resent_batch_reaches_the_sink_once() {
    let mut cfg = config();
    labelled(&mut cfg);
    let fwd = Forwarder::start(cfg).await;
    let (a, b) = (list(0..3), list(3..5));
    assert_eq!(post_to(&fwd, "/post/prod-1?timeout=30s", &a).await, 200);
    assert_eq!(post_to(&fwd, "/post/prod-2?timeout=30s", &b).await, 200);
    fwd.out.wait_lines(5).await;
    // The API server re-sends the batch it saw time out.
    assert_eq!(post_to(&fwd, "/post/prod-1?timeout=30s", &a).await, 200);
    assert_eq!(
        post_to(&fwd, "/post/prod-2?timeout=30s", &list(5..6)).await,
        200
    );
    let lines = fwd.out.wait_lines(6).await;
    assert_eq!(audit_ids(&lines), (0..6).map(case_id).collect::<Vec<_>>());
    for (i, line) in lines.iter().enumerate() {
        let cluster = if i < 3 { "prod-1" } else { "prod-2" };
        let a = &json(line)["annotations"];
        assert_eq!(a["forwarder.example.com/cluster"], cluster, "{line}");
        assert_eq!(a["forwarder.example.com/region"], "eu", "{line}");
    }
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_process_duplicates_dropped_total{sink="stdout"}"#),
        3.0
    );
    assert_eq!(
        m.get(r#"audit_forwarder_process_labels_added_total{sink="stdout"}"#),
        12.0
    );
    fwd.stop().await;
}

#[tokio::test]
async fn each_listener_labels_what_it_receives_and_the_sink_label_wins() {
    let p = crate::tls::pki();
    let mut cfg = crate::pki::https_config(config(), &p.secret);
    let set = |m: &mut std::collections::BTreeMap<String, String>, pairs: &[(&str, &str)]| {
        m.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
    };
    set(
        &mut cfg.source.http.labels,
        &[
            ("example.com/cluster", "in-cluster"),
            ("example.com/team", "x"),
        ],
    );
    set(
        &mut cfg.source.https.labels,
        &[
            ("example.com/cluster", "prod-eu-1"),
            ("example.com/via", "tls"),
        ],
    );
    set(
        &mut stdout_process(&mut cfg).labels,
        &[("example.com/team", "sre")],
    );
    let fwd = Forwarder::start(cfg).await;
    assert_eq!(post_to(&fwd, "/post", &list(0..2)).await, 200);
    fwd.out.wait_lines(2).await;
    let me = crate::pki::Client::new(&p.ca, Some(p.ca.client("kube-apiserver-audit", None)));
    let mut h2 = me.open(fwd.https_addr.unwrap()).await.unwrap();
    assert_eq!(h2.post(list(2..5).as_bytes(), &[]).await.unwrap().0, 200);
    let lines = fwd.out.wait_lines(5).await;
    assert_eq!(audit_ids(&lines), (0..5).map(case_id).collect::<Vec<_>>());
    for (i, line) in lines.iter().enumerate() {
        let a = &json(line)["annotations"];
        let (cluster, via) = if i < 2 {
            ("in-cluster", Value::Null)
        } else {
            ("prod-eu-1", json!("tls"))
        };
        assert_eq!(a["example.com/cluster"], cluster, "{line}");
        assert_eq!(a["example.com/via"], via, "{line}");
        assert_eq!(a["example.com/team"], "sre", "{line}");
    }
    fwd.stop().await;
}

#[tokio::test]
async fn a_restart_inside_the_window_with_the_disk_buffer_keeps_the_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let disk = |c: &mut Config| {
        c.buffer.kind = BufferKind::Disk;
        c.buffer.path = dir.path().join("buffer");
        stdout_process(c).dedup.enabled = true;
    };
    let mut cfg = config();
    disk(&mut cfg);
    let fwd = Forwarder::start(cfg).await;
    assert_eq!(fwd.post(list(0..4).as_bytes()).await.status, 200);
    fwd.out.wait_lines(4).await;
    fwd.stop().await;
    assert!(dir.path().join("buffer/stdout.dedup").exists());

    let mut cfg = config();
    disk(&mut cfg);
    let fwd = Forwarder::start(cfg).await;
    assert_eq!(fwd.post(list(0..4).as_bytes()).await.status, 200);
    assert_eq!(fwd.post(list(4..5).as_bytes()).await.status, 200);
    let lines = fwd.out.wait_lines(1).await;
    assert_eq!(audit_ids(&lines), [case_id(4)]);
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_process_duplicates_dropped_total{sink="stdout"}"#),
        4.0
    );
    fwd.stop().await;
}

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: ["system:kube-proxy"]
  - level: Metadata
    resources: [{group: "", resources: ["secrets"]}]
  - level: RequestResponse
"#;

#[tokio::test]
async fn a_policy_applies_to_its_own_sink_only_and_is_reloaded_when_its_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let tcp = TcpBackend::start(TcpMode::Read).await;
    let mut cfg = config();
    stdout_process(&mut cfg).policy_file = Some(file.clone());
    cfg.sinks.push(SinkConfig::Tcp(TcpSinkConfig {
        name: "everything".into(),
        endpoint: tcp.addr.to_string(),
        retry: fast_retry(),
        process: ProcessConfig {
            redact: kube_audit_forwarder::config::RedactConfig {
                secrets: false,
                paths: Vec::new(),
            },
            ..ProcessConfig::default()
        },
        ..TcpSinkConfig::default()
    }));
    let fwd = Forwarder::start(cfg).await;
    let proxy = secret_events()[4]
        .replace("alice", "system:kube-proxy")
        .replace("s-get", "proxy");
    let received = secret_events()[4]
        .replace("ResponseComplete", "RequestReceived")
        .replace("s-get", "early");
    let items = [secret_events()[4].clone(), proxy, received];
    assert_eq!(fwd.post(event_list_of(&items).as_bytes()).await.status, 200);
    let lines = fwd.out.wait_lines(1).await;
    eventually("the other sink gets every event unchanged", || async {
        tcp.lines().len() == 3
    })
    .await;
    assert_eq!(tcp.lines(), items);
    assert_eq!(lines.len(), 1);
    let got = json(&lines[0]);
    assert_eq!(got["level"], "Metadata");
    assert!(got.get("responseObject").is_none(), "{got}");
    let m = fwd.metrics().await;
    let dropped = |rule: &str, reason: &str| {
        m.get(&format!(
            r#"audit_forwarder_process_policy_dropped_events_total{{reason="{reason}",rule="{rule}",sink="stdout"}}"#
        ))
    };
    assert_eq!(
        (dropped("0", "level_none"), dropped("1", "omit_stage")),
        (1.0, 1.0)
    );
    assert_eq!(
        m.get(r#"audit_forwarder_process_levels_lowered_total{sink="stdout"}"#),
        1.0
    );

    // A broken edit keeps the policy in use; a valid one takes over.
    std::fs::write(&file, "rules:\n- level: Metadata\n  verb: [get]\n").unwrap();
    let m = &fwd;
    eventually("the broken policy is refused", || async {
        m.metrics()
            .await
            .get(r#"audit_forwarder_process_policy_reloads_total{result="failure",sink="stdout"}"#)
            == 1.0
    })
    .await;
    std::fs::write(
        &file,
        "rules:\n- level: None\n  verbs: [get]\n- level: RequestResponse\n",
    )
    .unwrap();
    eventually("the new policy is loaded", || async {
        m.metrics()
            .await
            .get(r#"audit_forwarder_process_policy_reloads_total{result="success",sink="stdout"}"#)
            == 1.0
    })
    .await;
    let list_event = secret_events()[3].clone();
    assert_eq!(
        fwd.post(event_list_of(&[items[0].clone(), list_event]).as_bytes())
            .await
            .status,
        200
    );
    // The get comes first in the batch: the list being next shows it dropped.
    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(json(&lines[1])["auditID"], "s-list");
    assert_eq!(json(&lines[1])["level"], "RequestResponse");
    fwd.stop().await;
}

#[test]
fn check_config_names_the_policy_file_rule_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(&policy, "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n- level: Metadata\n  resources:\n  - group: ''\n    resource: [pods]\n").unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "sinks:\n- type: stdout\n  process:\n    policy_file: {}\n",
            policy.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-forwarder"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("sinks[0].process.policy_file")
            && msg.contains(&policy.display().to_string())
            && msg.contains("rules[1].resources[0].resource")
            && msg.contains("unknown field"),
        "{msg}"
    );
    std::fs::write(&policy, "rules:\n- level: Metadata\n").unwrap();
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_kube-audit-forwarder"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
}
