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

/// The `server:` URL of a webhook kubeconfig in deploy/webhook/.
fn kubeconfig_server(name: &str) -> url::Url {
    let path = data(&format!("../../deploy/webhook/{name}"));
    let text = std::fs::read_to_string(&path).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}: no server", path.display()));
    url::Url::parse(server).unwrap()
}

/// The default of `make-webhook-certs.sh --path`.
fn cert_script_default_path() -> String {
    let text = std::fs::read_to_string(data("../../deploy/make-webhook-certs.sh")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("path="))
        .expect("path= default in make-webhook-certs.sh")
        .to_owned()
}

#[tokio::test]
async fn every_example_config_accepts_the_webhook_url_of_its_kubeconfig() {
    let http = kubeconfig_server("webhook-http.kubeconfig");
    let https = kubeconfig_server("webhook-https.kubeconfig");
    assert_eq!(http.scheme(), "http");
    assert_eq!(https.scheme(), "https");
    assert_eq!(
        https.path(),
        cert_script_default_path(),
        "make-webhook-certs.sh writes the kubeconfig's path"
    );
    let mut configs: Vec<std::path::PathBuf> = ["config", "deploy/base", "deploy/overlays"]
        .iter()
        .flat_map(|dir| walk_yaml(&data(&format!("../../{dir}"))))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            // Only forwarder configs: kustomize patches and secrets are not.
            !text.contains("apiVersion:")
        })
        .collect();
    configs.sort();
    assert!(configs.len() >= 8, "{configs:?}");
    for path in configs {
        let cfg = kube_audit_forwarder::config::load(Some(&path), std::iter::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let url = if cfg.source.https.enabled {
            // The Service's port 443 targets the pod's port "https" (4443).
            assert_eq!(
                cfg.source.https.address.port(),
                4443,
                "{}: source.https.address",
                path.display()
            );
            &https
        } else {
            assert_eq!(
                cfg.source.http.address.port(),
                3000,
                "{}: source.http.address",
                path.display()
            );
            &http
        };
        // The same path rules apply on both listeners: served here over the
        // plain one, with the sinks replaced by stdout (their certificate
        // files do not exist here).
        let mut served = config();
        served.source.http.paths = cfg.source.http.paths.clone();
        let fwd = Forwarder::start(served).await;
        let target = format!("{}?timeout=30s", url.path());
        let resp = post(fwd.addr, &target, &[], list(0..1).as_bytes()).await;
        assert_eq!(
            resp.status,
            200,
            "{} refuses {url} ({}): {}",
            path.display(),
            if cfg.source.https.enabled {
                "webhook-https.kubeconfig"
            } else {
                "webhook-http.kubeconfig"
            },
            resp.text()
        );
        fwd.stop().await;
    }
}

fn walk_yaml(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk_yaml(&p));
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
    out
}
