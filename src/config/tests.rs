use super::*;
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn no_file_gives_the_built_in_default() {
    assert_eq!(load(None, no_env()).unwrap(), Config::default());
}

#[test]
fn default_yaml_documents_exactly_the_built_in_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.yaml");
    assert_eq!(load(Some(&path), no_env()).unwrap(), Config::default());
}

#[test]
fn example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        load(Some(&path), no_env()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let f = file("sinks:\n  - type: stdout\n    queue:\n      capacity_event: 10\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(
        msg.contains("sinks[0].queue") && msg.contains("capacity_event"),
        "{msg}"
    );
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
}

#[test]
fn wrong_type_and_invalid_value_are_named() {
    let f = file("source:\n  http:\n    address: not-an-address\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.http.address"), "{msg}");
    let f = file("sinks:\n  - type: stdout\n  - type: stdout\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("sinks[1].name"), "{msg}");
    let f = file("sinks:\n  - type: loki\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("sinks[0]") && msg.contains("loki"), "{msg}");
}

#[test]
fn environment_overrides_the_file_and_skips_service_links() {
    let f = file("source:\n  http:\n    address: 127.0.0.1:1\n");
    let env = [
        ("AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS", "127.0.0.1:2"),
        ("AUDIT_FORWARDER__SOURCE__HTTP__PATHS", "/post,/k8s-audit"),
        ("AUDIT_FORWARDER__PIPELINE__ADMISSION_WAIT_MS", "5"),
        ("AUDIT_FORWARDER_SERVICE_HOST", "10.0.0.1"),
        ("AUDIT_FORWARDER__X_SERVICE_HOST", "10.0.0.1"),
        ("AUDIT_FORWARDER__X_PORT_3000_TCP", "tcp://10.0.0.1:3000"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = load(Some(f.path()), env).unwrap();
    assert_eq!(c.source.http.address.port(), 2);
    assert_eq!(c.source.http.paths, ["/post", "/k8s-audit"]);
    assert_eq!(c.pipeline.admission_wait_ms, 5);
}

#[test]
fn unknown_environment_override_is_an_error() {
    let env = vec![(
        "AUDIT_FORWARDER__SOURCE__HTTP__ADDRES".to_owned(),
        "x".to_owned(),
    )];
    let msg = load(None, env).unwrap_err().to_string();
    assert!(msg.contains("addres"), "{msg}");
}

#[test]
fn network_sink_mistakes_are_named() {
    let cases = [
        (
            "sinks:\n  - type: http\n    endpoints: []\n",
            "sinks[0].endpoints",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"ftp://x/\"]\n",
            "sinks[0].endpoints[0]",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"http://x/\"]\n    tls:\n      crt_file: /a.crt\n",
            "sinks[0].tls.key_file",
        ),
        (
            "sinks:\n  - type: tcp\n    endpoint: \"x:1\"\n    tls:\n      key_file: /a.key\n",
            "sinks[0].tls.crt_file",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"http://x/\"]\n    retry:\n      retry_statuses: [\"6xx\"]\n",
            "sinks[0].retry.retry_statuses[0]",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"http://x/\"]\n    encoding: protobuf\n",
            "sinks[0].encoding",
        ),
        (
            "sinks:\n  - type: tcp\n    endpoint: \"nohost\"\n",
            "sinks[0].endpoint",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"http://x/\"]\n    headers:\n      Authorization: {}\n",
            "sinks[0].headers.Authorization",
        ),
    ];
    for (yaml, key) in cases {
        let f = file(yaml);
        let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(msg.contains(key), "{key}: {msg}");
    }
}

#[test]
fn retry_status_patterns() {
    assert!(StatusPattern::parse("5xx").unwrap().matches(503));
    assert!(!StatusPattern::parse("5xx").unwrap().matches(429));
    assert!(StatusPattern::parse("429").unwrap().matches(429));
    assert!(StatusPattern::parse("42").is_none());
}

#[test]
fn half_a_tls_identity_names_the_missing_key() {
    let f = file(
        "source:\n  https:\n    enabled: true\n    crt_file: /c/tls.crt\n    client_auth: none\n",
    );
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.https.key_file"), "{msg}");
    let f = file(
        "source:\n  https:\n    enabled: true\n    key_file: /c/tls.key\n    client_auth: none\n",
    );
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.https.crt_file"), "{msg}");
}

#[test]
fn client_certificates_need_a_client_ca() {
    let f = file(
        "source:\n  https:\n    enabled: true\n    crt_file: /c/tls.crt\n    key_file: /c/tls.key\n",
    );
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.https.client_ca_file"), "{msg}");
    let f = file(
        "source:\n  https:\n    enabled: true\n    crt_file: /c/tls.crt\n    key_file: /c/tls.key\n    client_auth: none\n    allowed_client_names: [kube-apiserver]\n",
    );
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.https.allowed_client_names"), "{msg}");
}

#[test]
fn at_least_one_listener_is_enabled() {
    let f = file("source:\n  http:\n    enabled: false\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.http.enabled"), "{msg}");
    let f = file(
        "source:\n  http:\n    enabled: false\n  https:\n    enabled: true\n    crt_file: /c/tls.crt\n    key_file: /c/tls.key\n    client_ca_file: /c/ca.crt\n    client_auth: required\n    allowed_client_names: [kube-apiserver-audit]\n",
    );
    let c = load(Some(f.path()), no_env()).unwrap();
    assert!(!c.source.http.enabled && c.source.https.enabled);
    assert_eq!(c.source.https.client_auth, ClientAuth::Required);
}

#[test]
fn a_misspelt_log_level_is_refused() {
    let f = file("log:\n  level: inf\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("log.level"), "{msg}");
    let f = file("log:\n  level: \"warn,kube_audit_forwarder=debug\"\n");
    load(Some(f.path()), no_env()).unwrap();
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let f = file("source:\n  http:\n    address: 0.0.0.0:9090\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(
        msg.contains("metrics.address") && msg.contains("source.http.address"),
        "{msg}"
    );
}

#[test]
fn list_keys_are_overridden_from_the_environment() {
    let env = [
        (
            "AUDIT_FORWARDER__SOURCE__HTTPS__ALLOWED_CLIENT_NAMES",
            "kube-apiserver,audit-relay",
        ),
        ("AUDIT_FORWARDER__SOURCE__HTTP__PATHS", "/post"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = load(None, env).unwrap();
    assert_eq!(
        c.source.https.allowed_client_names,
        ["kube-apiserver", "audit-relay"]
    );
    assert_eq!(c.source.http.paths, ["/post"]);
}

#[test]
fn an_environment_mistake_names_the_variable_not_the_file() {
    let f = file("log:\n  level: info\n");
    let path = f.path().display().to_string();
    for (var, value, key) in [
        (
            "AUDIT_FORWARDER__SOURCE__HTTP__MAX_BODY_BYTE",
            "10",
            "source.http.max_body_byte",
        ),
        (
            "AUDIT_FORWARDER__SOURCE__HTTP__MAX_BODY_BYTES",
            "ten",
            "source.http.max_body_bytes",
        ),
        (
            "AUDIT_FORWARDER__SOURCE__HTTP__MAX_BODY_BYTES",
            "0",
            "source.http.max_body_bytes",
        ),
    ] {
        let env = vec![(var.to_owned(), value.to_owned())];
        let msg = load(Some(f.path()), env).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("environment variable {var}")) && msg.contains(key),
            "{msg}"
        );
        assert!(!msg.contains(&path), "{msg}");
        assert!(!msg.contains("in the environment"), "{msg}");
    }
    let f = file("source:\n  http:\n    max_body_bytes: 0\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains(&f.path().display().to_string()), "{msg}");
}

#[test]
fn messages_name_no_rust_types() {
    for (yaml, expected) in [
        (
            "log:\n  format: xml\n",
            "log.format: unknown variant `xml`, expected `text` or `json`",
        ),
        (
            "buffer:\n  type: tape\n",
            "buffer.type: unknown variant `tape`, expected `memory` or `disk`",
        ),
        (
            "source:\n  https:\n    client_auth: maybe\n",
            "unknown variant `maybe`, expected `none`, `optional` or `required`",
        ),
        (
            "sinks:\n  - type: stdout\n    queue:\n      when_full: drop_oldest\n",
            "unknown variant `drop_oldest`, expected `block` or `drop_newest`",
        ),
        (
            "sinks:\n  - type: stdout\n    queue: 5\n",
            "sinks[0].queue: invalid type: number, expected a map of keys",
        ),
        (
            "sinks:\n  - type: http\n    endpoints: [\"http://x\"]\n    timeout_secs: abc\n",
            "expected a non-negative integer",
        ),
        ("source: 5\n", "expected a map of keys"),
    ] {
        let f = file(yaml);
        let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(msg.contains(expected), "{yaml}: {msg}");
    }
}

#[test]
fn kafka_sink_keys_are_checked() {
    let base = "sinks:\n  - type: kafka\n    endpoints: [\"127.0.0.1:9092\"]\n";
    let ok = file(&format!(
        "{base}    topic: \"audit-{{level}}.{{namespace}}\"\n    key: none\n    compression: zstd\n"
    ));
    let cfg = load(Some(ok.path()), no_env()).unwrap();
    let SinkConfig::Kafka(k) = &cfg.sinks[0] else {
        panic!("not kafka")
    };
    assert_eq!(
        (k.key, k.compression),
        (KafkaKey::None, KafkaCompression::Zstd)
    );
    for (extra, key) in [
        ("    topic: \"audit-{cluster}\"\n", "sinks[0].topic"),
        ("    topic: \"audit log\"\n", "sinks[0].topic"),
        ("    acks: leader\n", "sinks[0].acks"),
        (
            "    max_in_flight_events: 0\n",
            "sinks[0].max_in_flight_events",
        ),
        (
            "    tls: {enabled: true, server_name: kafka}\n",
            "sinks[0].tls.server_name",
        ),
        ("    key: auditID\n", "sinks[0].key"),
    ] {
        let f = file(&format!("{base}{extra}"));
        let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
        assert!(msg.contains(key), "{extra}: {msg}");
    }
    let f = file("sinks:\n  - type: kafka\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("sinks[0].endpoints"), "{msg}");
}

#[test]
fn labels_keep_dotted_keys_and_bad_keys_are_named() {
    let f = file(
        "source:\n  http:\n    labels:\n      example.com/cluster: prod-eu-1\n  https:\n    labels:\n      example.com/via: tls\nsinks:\n  - type: stdout\n    process:\n      labels:\n        example.com/team: sre\n",
    );
    let cfg = load(Some(f.path()), no_env()).unwrap();
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pairs(&cfg.source.http.labels),
        ["example.com/cluster=prod-eu-1"]
    );
    assert_eq!(pairs(&cfg.source.https.labels), ["example.com/via=tls"]);
    assert_eq!(
        pairs(&cfg.sinks[0].process().labels),
        ["example.com/team=sre"]
    );
    let f = file("source:\n  https:\n    labels:\n      \"bad key\": x\n");
    let msg = load(Some(f.path()), no_env()).unwrap_err().to_string();
    assert!(msg.contains("source.https.labels.bad key"), "{msg}");
}
