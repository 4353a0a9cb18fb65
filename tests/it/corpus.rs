//! Every file of the real-event corpus (tests/data/corpus, see SOURCES.md)
//! posted as an API server would post it.

use crate::harness::*;

/// The events of a corpus file, as raw JSON texts: one per line for JSON-lines
/// files, the whole file (without its BOM) otherwise.
pub fn events_of(rel: &str) -> Vec<String> {
    let text = String::from_utf8(read(rel)).unwrap();
    let text = text.trim_start_matches('\u{feff}');
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() > 1
        && lines
            .iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    {
        lines.into_iter().map(str::to_owned).collect()
    } else {
        vec![text.to_owned()]
    }
}

pub const FILES: &[&str] = &[
    "corpus/afcollins-kube-audit-log-tool/single-event.json",
    "corpus/falcosecurity-falco/anonymous_creates_namespace_foo.json",
    "corpus/falcosecurity-falco/create_configmap_sensitive_values.json",
    "corpus/falcosecurity-falco/create_nginx_pod_privileged.json",
    "corpus/falcosecurity-falco/create_service_account_token_secret.json",
    "corpus/falcosecurity-falco/exec_pod.json",
    "corpus/falcosecurity-falco/modify_cluster_role_node_problem_detector.json",
    "corpus/kubernetes-sigs-apisnoop/audit_event.json",
    "corpus/liggitt-audit2rbac/demo.log",
    "corpus/sysdiglabs-aks-audit-log/sample_KubeAuditLog_event.json",
];

/// Every corpus event as a parsed JSON value, for tests that build their
/// own batches from real events.
pub fn corpus_values() -> Vec<serde_json::Value> {
    FILES
        .iter()
        .flat_map(|f| events_of(f))
        .map(|e| serde_json::from_str(&e).unwrap())
        .collect()
}

/// Checks that `lines` are exactly `events`: same JSON values in the same order,
/// byte-identical where the input was compact, one valid JSON text per line.
fn assert_same_events(lines: &[String], events: &[String], file: &str) {
    assert_eq!(lines.len(), events.len(), "{file}: line count");
    for (line, event) in lines.iter().zip(events) {
        assert_eq!(json(line), json(event), "{file}: event changed");
        if !event.contains('\n') && !event.starts_with(' ') {
            assert_eq!(
                line,
                event.trim_end(),
                "{file}: compact event not byte-identical"
            );
        }
    }
}

#[tokio::test]
async fn every_corpus_file_as_an_event_list_comes_out_as_its_events() {
    let fwd = Forwarder::start(config()).await;
    let mut expected = Vec::new();
    for file in FILES {
        let events = events_of(file);
        let body = format!(
            r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
            events.join(",")
        );
        let resp = fwd.post(body.as_bytes()).await;
        assert_eq!(resp.status, 200, "{file}: {}", resp.text());
        assert_eq!(resp.json()["events"], events.len(), "{file}");
        let before = expected.len();
        expected.extend(events);
        let lines = fwd.out.wait_lines(expected.len()).await;
        assert_same_events(&lines[before..], &expected[before..], file);
    }
    let m = fwd.metrics().await;
    assert_eq!(
        m.get("audit_forwarder_events_received_total"),
        expected.len() as f64
    );
    fwd.stop().await;
}

#[tokio::test]
async fn every_corpus_file_posted_as_is_comes_out_as_its_events() {
    // JSON lines stay JSON lines, a single pretty-printed event (BOM and all) is
    // one event: what a replay of the files with curl sends.
    let fwd = Forwarder::start(config()).await;
    let mut total = 0;
    for file in FILES {
        let events = events_of(file);
        let resp = fwd.post(&read(file)).await;
        assert_eq!(resp.status, 200, "{file}: {}", resp.text());
        total += events.len();
        let lines = fwd.out.wait_lines(total).await;
        assert_same_events(&lines[total - events.len()..], &events, file);
    }
    fwd.stop().await;
}

#[tokio::test]
async fn azure_envelope_is_refused_with_a_reason() {
    let fwd = Forwarder::start(config()).await;
    let resp = fwd
        .post(&read("corpus/sysdiglabs-aks-audit-log/event.json"))
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.reason(), "not_an_event_list");
    assert!(
        resp.json()["error"].as_str().unwrap().contains("records"),
        "{}",
        resp.text()
    );
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_requests_rejected_total{reason="not_an_event_list"}"#),
        1.0
    );
    assert_eq!(
        m.get(r#"audit_forwarder_decode_errors_total{reason="not_an_event_list"}"#),
        1.0
    );
    let out = fwd.out.clone();
    fwd.stop().await;
    assert_eq!(out.text(), "", "nothing of a refused body is written");
}
