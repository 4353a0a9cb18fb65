use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::config::ProcessConfig;
use crate::decode::{DecodeOptions, decode};
use crate::pipeline::Origin;

fn batch(items: &[String], path: &str) -> Batch {
    let body = Bytes::from(format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    ));
    let opts = DecodeOptions {
        max_events: usize::MAX,
        max_event_bytes: 0,
    };
    let events = decode(&body, &opts).expect("valid").events;
    let origin = Origin {
        path_and_query: path.to_owned(),
        ..Origin::default()
    };
    Batch::with_origin(body, events, origin)
}

fn no_redaction() -> ProcessConfig {
    let mut c = ProcessConfig::default();
    c.redact.secrets = false;
    c
}

/// The events of what `p` made of `b`, as text, with the spans of the
/// routing fields checked against the new body.
fn run(p: &Processor, b: &Batch) -> Option<Vec<String>> {
    match p.process(b).0 {
        Processed::Same => None,
        Processed::Changed(out) => {
            let list: Value = serde_json::from_slice(&out.body).expect("body is JSON");
            assert_eq!(list["items"].as_array().unwrap().len(), out.events.len());
            for e in &out.events {
                let v: Value = serde_json::from_slice(&e.raw).expect("event is JSON");
                let id = e.meta.audit_id.map(|s| s.get(&out.body).to_vec());
                assert_eq!(id.as_deref(), v["auditID"].as_str().map(str::as_bytes));
            }
            Some(
                out.events
                    .iter()
                    .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
                    .collect(),
            )
        }
    }
}

const FULL: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"id-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/d/pods","verb":"create","user":{"username":"alice","groups":["system:authenticated"]},"objectRef":{"resource":"pods","namespace":"d","name":"p","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestObject":{"kind":"Pod","metadata":{"name":"p","managedFields":[{"manager":"kubectl"}],"labels":{"a":"\u00e9"}}},"responseObject":{"kind":"Pod","metadata":{"managedFields":[],"name":"p"},"spec":{"n":1.50e3}},"requestReceivedTimestamp":"2026-01-01T00:00:00.000000Z","annotations":{"authorization.k8s.io/decision":"allow"}}"#;

#[test]
fn an_untouched_batch_is_the_same_batch() {
    let p = Processor::with_policy(
        &ProcessConfig::default(),
        Some(Policy::parse("rules: [{level: RequestResponse}]").unwrap()),
    );
    let b = batch(&[FULL.to_owned(), FULL.replace("id-1", "id-2")], "/post");
    assert!(run(&p, &b).is_none());
}

#[test]
fn lowering_the_level_removes_bodies_and_keeps_every_other_byte() {
    let policy = Policy::parse("rules: [{level: Metadata}]").unwrap();
    let p = Processor::with_policy(&no_redaction(), Some(policy));
    let out = run(&p, &batch(&[FULL.to_owned()], "/")).expect("changed");
    let want = FULL
        .replace(r#""level":"RequestResponse""#, r#""level":"Metadata""#)
        .replace(
            &FULL[FULL.find(r#","requestObject""#).unwrap()
                ..FULL.find(r#","requestReceivedTimestamp""#).unwrap()],
            "",
        );
    assert_eq!(out, [want]);
    let policy = Policy::parse("rules: [{level: Request, omitManagedFields: true}]").unwrap();
    let p = Processor::with_policy(&no_redaction(), Some(policy));
    let out = run(&p, &batch(&[FULL.to_owned()], "/")).expect("changed");
    assert!(
        out[0].contains(
            r#""requestObject":{"kind":"Pod","metadata":{"name":"p","labels":{"a":"\u00e9"}}}"#
        ),
        "{}",
        out[0]
    );
    assert!(!out[0].contains("responseObject") && !out[0].contains("managedFields"));
}

#[test]
fn dropped_events_leave_their_neighbours_byte_identical() {
    let policy =
        Policy::parse("rules: [{level: None, users: [bob]}, {level: RequestResponse}]").unwrap();
    let p = Processor::with_policy(&no_redaction(), Some(policy));
    let bob = FULL.replace("alice", "bob").replace("id-1", "id-b");
    let out = run(&p, &batch(&[bob, FULL.to_owned()], "/")).expect("changed");
    assert_eq!(out, [FULL]);
}

#[test]
fn labels_and_dedup() {
    let mut cfg = no_redaction();
    cfg.labels
        .insert("example.com/cluster".into(), "prod".into());
    cfg.dedup.enabled = true;
    let p = Processor::with_policy(&cfg, None);
    let b = batch(&[FULL.to_owned()], "/");
    let (first, done) = p.process(&b);
    let Processed::Changed(first) = first else {
        panic!("labels change the event")
    };
    assert!(std::str::from_utf8(&first.events[0].raw).unwrap().ends_with(r#""annotations":{"example.com/cluster":"prod","authorization.k8s.io/decision":"allow"}}"#));
    drop(done);
    let Processed::Changed(again) = p.process(&b).0 else {
        panic!("a repeat is dropped")
    };
    assert!(again.events.is_empty());
}

/// Strategies for events and policies over small vocabularies, so that rules
/// and events meet.
fn word(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(options).prop_map(str::to_owned)
}

fn any_event() -> impl Strategy<Value = Value> {
    let object = prop::option::of((
        word(&["", "apps", "rbac.authorization.k8s.io"]),
        word(&["pods", "secrets", "nodes", "deployments"]),
        word(&["", "log", "scale", "status"]),
        word(&["", "default", "kube-system"]),
        word(&["", "a", "b"]),
    ));
    let body = prop_oneof![
        Just(Value::Null),
        Just(
            json!({"kind": "X", "metadata": {"managedFields": [{"m": 1}], "name": "n"}, "n": 1.0e5})
        ),
        Just(
            json!({"items": [{"metadata": {"name": "x", "managedFields": []}}], "s": "\u{e9}\"\\"})
        ),
        Just(json!({"kind": "Secret", "data": {"k": "dg=="}})),
    ];
    (
        word(&["alice", "bob", "system:kube-proxy"]),
        prop::collection::vec(word(&["g1", "g2", "system:authenticated"]), 0..3),
        word(&["get", "list", "watch", "create"]),
        object,
        word(&["/api", "/apis/x", "/healthz", "/version"]),
        word(&["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]),
        word(&["Metadata", "Request", "RequestResponse"]),
        body.clone(),
        body,
        any::<u32>(),
    )
        .prop_map(|(user, groups, verb, object, uri, stage, level, req, resp, id)| {
            let mut e = json!({"level": level, "auditID": id.to_string(), "stage": stage,
                "requestURI": uri, "verb": verb, "user": {"username": user, "groups": groups}});
            if let Some((g, r, s, ns, n)) = object {
                e["objectRef"] = json!({"apiGroup": g, "resource": r, "subresource": s, "namespace": ns, "name": n});
            }
            if !req.is_null() {
                e["requestObject"] = req;
            }
            if !resp.is_null() {
                e["responseObject"] = resp;
            }
            e
        })
}

fn any_policy() -> impl Strategy<Value = String> {
    let list = |options: &'static [&'static str]| prop::collection::vec(word(options), 0..2);
    let rule = (
        word(&["None", "Metadata", "Request", "RequestResponse"]),
        list(&["alice", "bob"]),
        list(&["g1", "system:authenticated"]),
        list(&["get", "watch", "create"]),
        prop::option::of((word(&["", "apps"]), list(&["pods", "*", "pods/log", "*/scale", "pods/*", "secrets"]), list(&["a"]))),
        list(&["", "default"]),
        list(&["/api*", "*", "/healthz", "/version"]),
        list(&["RequestReceived", "Panic"]),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(level, users, groups, verbs, res, ns, urls, omit, mf)| {
            let mut r = json!({"level": level, "users": users, "userGroups": groups, "verbs": verbs, "omitStages": omit});
            match res {
                Some((g, rs, names)) if urls.is_empty() => {
                    let names = if rs.is_empty() { Vec::new() } else { names };
                    r["resources"] = json!([{"group": g, "resources": rs, "resourceNames": names}]);
                    r["namespaces"] = json!(ns);
                }
                _ if !urls.is_empty() => r["nonResourceURLs"] = json!(urls),
                _ => r["namespaces"] = json!(ns),
            }
            if let Some(mf) = mf {
                r["omitManagedFields"] = json!(mf);
            }
            r
        });
    (
        prop::collection::vec(rule, 0..5),
        any::<bool>(),
        list(&["ResponseStarted"]),
    )
        .prop_map(|(rules, mf, omit)| {
            json!({"rules": rules, "omitManagedFields": mf, "omitStages": omit}).to_string()
        })
}

fn rank(level: &str) -> AuditLevel {
    match level {
        "Metadata" => AuditLevel::Metadata,
        "Request" => AuditLevel::Request,
        _ => AuditLevel::RequestResponse,
    }
}

fn strip_managed_fields(o: &mut Value) {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    if let Some(items) = o.get_mut("items").and_then(Value::as_array_mut) {
        for i in items {
            strip_managed_fields(i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// For any events and any policy: every output event is valid JSON, equal
    /// to what the policy says of the input, and byte-identical when the
    /// policy leaves it alone.
    #[test]
    fn any_policy_keeps_json_valid_and_untouched_events_identical(
        events in prop::collection::vec(any_event(), 1..6),
        policy in any_policy(),
    ) {
        let policy = Policy::parse(&policy).expect("generated policies are valid");
        let texts: Vec<String> = events.iter().map(Value::to_string).collect();
        let b = batch(&texts, "/");
        let mut want: Vec<(String, bool)> = Vec::new();
        for text in &texts {
            let d = policy.decide(&View::new(text.as_bytes()).unwrap());
            if d.level == AuditLevel::None || d.omit_stage {
                continue;
            }
            let mut v: Value = serde_json::from_str(text).unwrap();
            let have = rank(v["level"].as_str().unwrap());
            let mut same = true;
            if d.level < have {
                same = false;
                v["level"] = json!(d.level.as_str());
                let o = v.as_object_mut().unwrap();
                o.remove("responseObject");
                if d.level == AuditLevel::Metadata {
                    o.remove("requestObject");
                }
            }
            if d.omit_managed_fields {
                for k in ["requestObject", "responseObject"] {
                    if let Some(o) = v.get_mut(k) {
                        let before = o.clone();
                        strip_managed_fields(o);
                        same &= before == *o;
                    }
                }
            }
            want.push((if same { text.clone() } else { v.to_string() }, same));
        }
        let p = Processor::with_policy(&no_redaction(), Some(policy));
        let out = run(&p, &b).unwrap_or_else(|| texts.clone());
        prop_assert_eq!(out.len(), want.len());
        for (got, (w, same)) in out.iter().zip(&want) {
            if *same {
                prop_assert_eq!(got, w);
            } else {
                let got: Value = serde_json::from_str(got).expect("valid JSON");
                let w: Value = serde_json::from_str(w).unwrap();
                prop_assert_eq!(got, w);
            }
        }
    }
}
