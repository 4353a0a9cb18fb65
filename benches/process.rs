//! Per-sink processing of 400-event batches against their decode, in one run:
//!
//! - `metadata` and `mixed`: the synthetic traffic of `decode` under a
//!   20-rule audit policy whose first 19 rules miss and whose last keeps
//!   everything at its level (the costliest policy that leaves events alone),
//!   with secret redaction on (the default); every event leaves unchanged.
//! - `secrets`: 400 Secret events at RequestResponse, each with a Secret in
//!   `requestObject` and `responseObject` and a `last-applied-configuration`
//!   annotation, every value redacted.
//!
//! `cargo bench --bench process`; throughput is in bytes of body. Compare
//! `decode` with `decode_and_process` of the same group.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_forwarder::config::ProcessConfig;
use kube_audit_forwarder::decode::{DecodeOptions, decode};
use kube_audit_forwarder::pipeline::Batch;
use kube_audit_forwarder::process::{ProcessMetrics, Processed, Processor};
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, event_list};

/// Nineteen rules the synthetic traffic misses, then one that keeps it all.
const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - {level: None, users: ["system:kube-proxy"], verbs: [watch], resources: [{group: "", resources: [endpoints, services]}]}
  - {level: None, users: ["system:unsecured"], namespaces: [kube-system], resources: [{group: "", resources: [configmaps]}]}
  - {level: None, users: [kubelet], verbs: [get], resources: [{group: "", resources: [nodes, nodes/status]}]}
  - {level: None, userGroups: ["system:serviceaccounts:kube-system"]}
  - {level: None, users: ["system:kube-controller-manager", "system:kube-scheduler"], verbs: [get, update], namespaces: [kube-system], resources: [{group: "", resources: [endpoints]}]}
  - {level: None, users: ["system:apiserver"], verbs: [get], resources: [{group: "", resources: [namespaces, namespaces/status, namespaces/finalize]}]}
  - {level: None, users: ["cluster-autoscaler"], verbs: [get, update], namespaces: [kube-system], resources: [{group: "", resources: [configmaps, endpoints]}]}
  - {level: None, nonResourceURLs: ["/healthz*", "/version", "/swagger*", "/readyz*", "/livez*"]}
  - {level: None, resources: [{group: "", resources: [events]}]}
  - {level: None, userGroups: ["system:monitoring"], verbs: [get, list]}
  - {level: Request, users: [kubelet, "system:node-problem-detector", "system:serviceaccount:kube-system:node-problem-detector"], verbs: [update, patch], resources: [{group: "", resources: [nodes/status, pods/status]}]}
  - {level: Request, userGroups: ["system:nodes"], verbs: [update, patch], resources: [{group: "", resources: [nodes/status, pods/status]}]}
  - {level: Request, users: ["system:serviceaccount:kube-system:namespace-controller"], verbs: [deletecollection]}
  - {level: Metadata, resources: [{group: "authentication.k8s.io", resources: [tokenreviews]}]}
  - {level: RequestResponse, resources: [{group: "rbac.authorization.k8s.io"}]}
  - {level: Request, verbs: [get, list, watch], resources: [{group: "apiextensions.k8s.io"}, {group: "apiregistration.k8s.io"}]}
  - {level: Request, resources: [{group: "coordination.k8s.io", resources: ["*/status"]}]}
  - {level: Metadata, resources: [{group: "storage.k8s.io", resources: [csinodes]}], namespaces: [""]}
  - {level: Metadata, resources: [{group: "", resources: ["pods/log", "pods/exec", "pods/portforward", "pods/proxy", "services/proxy"]}]}
  - {level: RequestResponse}
"#;

fn secret_list(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n)
        .map(|i| {
            let data = serde_json::json!({"username": "YWRtaW4=", "password": format!("c2VjcmV0LXt{i:08x}"), "token": "ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklpSjk="});
            let applied = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "data": data, "metadata": {"annotations": {}, "name": format!("s-{i}"), "namespace": "team-a"}, "type": "Opaque"});
            let secret = serde_json::json!({"kind": "Secret", "apiVersion": "v1", "type": "Opaque", "data": data,
                "metadata": {"name": format!("s-{i}"), "namespace": "team-a", "uid": format!("{i:032x}"), "resourceVersion": "4711",
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!("{applied}\n")}}});
            serde_json::json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
                "auditID": format!("{i:08x}-0000-4000-8000-000000000000"), "stage": "ResponseComplete",
                "requestURI": format!("/api/v1/namespaces/team-a/secrets/s-{i}"), "verb": "update",
                "user": {"username": "alice", "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.1"],
                "userAgent": "kubectl/v1.30.2 (linux/amd64) kubernetes/39683505",
                "objectRef": {"resource": "secrets", "namespace": "team-a", "name": format!("s-{i}"), "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": 200}, "requestObject": secret, "responseObject": secret,
                "requestReceivedTimestamp": "2026-01-01T00:00:00.000000Z", "stageTimestamp": "2026-01-01T00:00:00.002000Z",
                "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}})
            .to_string()
        })
        .collect();
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    use SynthLevel::*;
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let metrics = ProcessMetrics::register(&prometheus::Registry::new());
    let with_policy = Processor::build(
        "policy",
        &ProcessConfig {
            policy_file: Some(policy_file),
            ..ProcessConfig::default()
        },
        None,
        &metrics,
    )
    .unwrap();
    let redact_only =
        Processor::build("redact", &ProcessConfig::default(), None, &metrics).unwrap();
    let batches = [
        (
            "metadata",
            Bytes::from(event_list(&mut Rng::new(42), 0, 400, &[Metadata])),
            &with_policy,
            false,
        ),
        (
            "mixed",
            Bytes::from(event_list(&mut Rng::new(42), 0, 400, &MIXED)),
            &with_policy,
            false,
        ),
        ("secrets", Bytes::from(secret_list(400)), &redact_only, true),
    ];
    let opts = DecodeOptions::default();
    for (name, body, processor, changes) in batches {
        let batch = Batch::new(body.clone(), decode(&body, &opts).unwrap().events);
        let (out, _) = processor.process(&batch);
        assert_eq!(matches!(out, Processed::Changed(_)), changes, "{name}");
        let mut group = c.benchmark_group(format!("process_400_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("decode", |b| {
            b.iter(|| decode(&body, &opts).unwrap().events.len())
        });
        group.bench_function("decode_and_process", |b| {
            b.iter(|| {
                let batch = Batch::new(body.clone(), decode(&body, &opts).unwrap().events);
                match processor.process(&batch).0 {
                    Processed::Same => batch.events.len(),
                    Processed::Changed(b) => b.events.len(),
                }
            })
        });
        group.bench_function("process_only", |b| {
            b.iter(|| match processor.process(&batch).0 {
                Processed::Same => 0,
                Processed::Changed(b) => b.body.len(),
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
