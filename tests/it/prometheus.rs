//! A real Prometheus (Debian's `prometheus` package, which `.ci/run` installs)
//! scrapes a running forwarder on loopback, as the ServiceMonitor in
//! `deploy/monitoring/` has it do in a cluster; the answers of its HTTP API are
//! what a dashboard or an alert would see.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::monitoring::dashboard_queries;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// How long Prometheus gets to start, scrape and answer: its TSDB start-up on
/// a busy two-core machine takes a few seconds, the scrapes come every second.
const DEADLINE: Duration = Duration::from_secs(90);

/// A Prometheus server with its own config and storage in a temp dir,
/// killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second under the job name
    /// the alert rules expect.
    fn start(target: SocketAddr) -> Self {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install Debian's prometheus package (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kube-audit-forwarder\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = free_loopback_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self { child, addr, dir }
    }

    /// Prometheus's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=...`: the parsed JSON answer, or `None` while
    /// Prometheus does not answer yet.
    async fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let mut stream = TcpStream::connect(self.addr).await.ok()?;
        // HTTP/1.0: the answer is not chunked and ends when the server closes.
        let head = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// Polls `promql` until its single result has `value`, or fails after
    /// [`DEADLINE`] saying what was last seen.
    async fn wait_for_value(&self, promql: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = None;
        loop {
            if let Some(answer) = self.query(promql).await {
                if sample_value(&answer) == Some(value) {
                    return;
                }
                last = Some(answer);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus never answered {value} for {promql}; last answer: {last:?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
fn free_loopback_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of a query answer holding exactly one sample.
fn sample_value(answer: &serde_json::Value) -> Option<f64> {
    let result = answer["data"]["result"].as_array()?;
    match result.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_forwarders_counters_after_a_batch() {
    let fwd = Forwarder::start(config()).await;
    let prom = Prometheus::start(fwd.metrics_addr);

    // The target is up under the job name AuditForwarderDown watches.
    prom.wait_for_value(r#"up{job="kube-audit-forwarder"}"#, 1.0)
        .await;
    prom.wait_for_value("audit_forwarder_events_received_total", 0.0)
        .await;

    let resp = fwd.post(&read("corpus/liggitt-audit2rbac/demo.log")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    fwd.out.wait_lines(37).await;

    prom.wait_for_value("audit_forwarder_events_received_total", 37.0)
        .await;
    prom.wait_for_value(r#"audit_forwarder_events_sent_total{sink="stdout"}"#, 37.0)
        .await;
    prom.wait_for_value(r#"audit_forwarder_requests_total{code="200"}"#, 1.0)
        .await;
    // The queue-fill ratio of AuditForwarderQueueFilling matches series of
    // the two gauges by their labels: one ratio for the one sink, now empty.
    prom.wait_for_value(
        "max by (sink) (audit_forwarder_queue_events / audit_forwarder_queue_capacity_events)",
        0.0,
    )
    .await;
    // The latency panels' histogram has buckets Prometheus can use.
    let p99 = prom
        .query(
            "histogram_quantile(0.99, sum by (le) (audit_forwarder_request_duration_seconds_bucket))",
        )
        .await
        .expect("prometheus answers");
    let p99 = sample_value(&p99).unwrap_or_else(|| panic!("no p99: {p99}"));
    assert!(p99 > 0.0 && p99 <= 10.0, "p99 {p99}");

    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_accepts_every_dashboard_query() {
    let fwd = Forwarder::start(config()).await;
    let prom = Prometheus::start(fwd.metrics_addr);
    prom.wait_for_value(r#"up{job="kube-audit-forwarder"}"#, 1.0)
        .await;
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    for q in &queries {
        // Grafana's variables, filled in as Grafana would with "All".
        let promql = q
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$pod", ".*");
        let answer = prom.query(&promql).await.expect("prometheus answers");
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
    }
    fwd.stop().await;
}
