//! The config that `deploy/base/` puts in the pod's ConfigMap, run by the real
//! binary as the Deployment runs it (`--config FILE`), moved to loopback by
//! environment overrides: the kubelet's probes get their answers, events come
//! out on stdout with nothing else there, and SIGTERM drains well inside the
//! pod's grace period. The config's disk buffer lives in a temp dir here, as
//! it lives on the pod's volume there.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-audit-forwarder");

/// `terminationGracePeriodSeconds` in deploy/base/deployment.yaml.
const GRACE_PERIOD: Duration = Duration::from_secs(35);

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resp = rt.block_on(request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n").into_bytes(),
    ));
    (resp.status, resp.text())
}

#[test]
fn the_deployed_stdout_config_serves_probes_events_and_drains_on_sigterm() {
    let config = data("../../deploy/base/config.yaml");
    let buffer = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .env("AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS", "127.0.0.1:0")
        .env("AUDIT_FORWARDER__METRICS__ADDRESS", "127.0.0.1:0")
        .env("AUDIT_FORWARDER__BUFFER__PATH", buffer.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // log.format: json — the listeners' addresses come as JSON log lines.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let (mut webhook, mut metrics) = (None, None);
    while webhook.is_none() || metrics.is_none() {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("listener addresses logged");
        let entry = json(&line);
        let fields = &entry["fields"];
        let addr = fields["address"].as_str().map(|a| a.parse().unwrap());
        match fields["message"].as_str() {
            Some("webhook listener ready") => webhook = addr,
            Some("metrics listener ready") => metrics = addr,
            _ => {}
        }
        logs.push(line);
    }
    let (webhook, metrics): (SocketAddr, SocketAddr) = (webhook.unwrap(), metrics.unwrap());

    // The Deployment's probes.
    assert_eq!(get(metrics, "/healthz").0, 200);
    assert_eq!(get(metrics, "/readyz").0, 200);
    let (status, text) = get(metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"audit_forwarder_queue_capacity_bytes{sink="stdout"} 134217728"#),
        "the ConfigMap's queue size is in force: {text}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = read("corpus/liggitt-audit2rbac/demo.log");
    let resp = rt.block_on(post(
        webhook,
        "/post?timeout=30s",
        &[("Content-Type", "application/json")],
        &body,
    ));
    assert_eq!(resp.status, 200, "{}", resp.text());

    // What the kubelet does to stop the pod.
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() < GRACE_PERIOD,
        "drained in {:?}",
        sent.elapsed()
    );

    // stdout holds the events and nothing else, so the node's logging agent
    // can take every stdout line as an event.
    assert_eq!(out.as_bytes(), &body[..]);
    // stderr holds only JSON log lines.
    logs.extend(rx.try_iter());
    for line in &logs {
        let entry = json(line);
        assert!(
            entry["level"].is_string() && entry.get("auditID").is_none(),
            "{line}"
        );
    }
}
