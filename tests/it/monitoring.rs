//! The dashboard and the alert rules in `deploy/monitoring/` name only metrics
//! the forwarder exports: a typo or a renamed metric would leave a panel empty
//! or an alert silent for ever, which nobody notices until it matters. The
//! forwarder runs with a disk buffer, so that the buffer's metrics (exported
//! only then) are served too.

use std::collections::BTreeSet;
use std::path::PathBuf;

use kube_audit_forwarder::config::BufferKind;

use crate::harness::*;

const PREFIX: &str = "audit_forwarder_";
const BUFFER_PREFIX: &str = "audit_forwarder_buffer_";

fn monitoring_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/monitoring")
        .join(name)
}

fn read_text(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard's panels, with its variables as
/// written (`$__rate_interval`, `$namespace`).
pub fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&read_text(monitoring_file("dashboard.json")))
            .expect("dashboard.json is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            out.push(expr.to_owned());
        }
    }
    out
}

/// Every `audit_forwarder_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer identifier (`xaudit_forwarder_`) is not a name.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// What the forwarder exports: the names in `src/metrics/names.rs` and those
/// a running forwarder serves, with the histograms among them.
struct Exported {
    names: BTreeSet<String>,
    /// Only what the running forwarder served.
    served: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

impl Exported {
    /// The names `reference` uses that are not exported. A histogram's
    /// `_bucket`, `_sum` and `_count` series count as exported.
    fn missing(&self, reference: &BTreeSet<String>) -> Vec<String> {
        reference
            .iter()
            .filter(|name| {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| self.histograms.contains(*base));
                !self.names.contains(*name) && base.is_none()
            })
            .cloned()
            .collect()
    }

    /// The names `reference` uses that the running forwarder did not serve,
    /// a histogram's series counting as its name.
    fn not_served(&self, reference: &BTreeSet<String>) -> Vec<String> {
        reference
            .iter()
            .filter(|name| {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|base| self.histograms.contains(*base));
                !self.served.contains(*name) && base.is_none()
            })
            .cloned()
            .collect()
    }
}

async fn exported() -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.buffer.kind = BufferKind::Disk;
    cfg.buffer.path = dir.path().join("buffer");
    let fwd = Forwarder::start(cfg).await;
    // A batch, so that the labelled histograms have series to show.
    assert_eq!(fwd.post(&read("cases/BH-01/body.json")).await.status, 200);
    fwd.out.wait_lines(400).await;
    let resp = request(
        fwd.metrics_addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    fwd.stop().await;
    let text = resp.text();
    let mut names = names_in(&read_text(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/metrics/names.rs"),
    ));
    let mut served = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let (name, kind) = decl.split_once(' ').unwrap();
            names.insert(name.to_owned());
            served.insert(name.to_owned());
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
        }
    }
    Exported {
        names,
        served,
        histograms,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported = exported().await;
    assert!(
        exported
            .histograms
            .contains("audit_forwarder_request_duration_seconds")
            && exported
                .histograms
                .contains("audit_forwarder_send_duration_seconds"),
        "{:?}",
        exported.histograms
    );

    let dashboard: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|q| names_in(q))
        .collect();
    // The panels the issue asks for are there.
    for wanted in [
        "audit_forwarder_requests_total",
        "audit_forwarder_events_received_total",
        "audit_forwarder_events_sent_total",
        "audit_forwarder_queue_events",
        "audit_forwarder_error_total",
        "audit_forwarder_request_duration_seconds_bucket",
        "audit_forwarder_send_duration_seconds_bucket",
        "audit_forwarder_tls_certificate_expiry_timestamp_seconds",
        "audit_forwarder_buffer_bytes",
        "audit_forwarder_buffer_max_bytes",
        "audit_forwarder_buffer_oldest_event_age_seconds",
        "audit_forwarder_buffer_fsync_duration_seconds_bucket",
        "audit_forwarder_buffer_disk_errors_total",
        "audit_forwarder_buffer_replayed_events_total",
    ] {
        assert!(dashboard.contains(wanted), "no panel uses {wanted}");
    }
    assert_eq!(
        exported.missing(&dashboard),
        Vec::<String>::new(),
        "dashboard.json"
    );

    let mut buffer: BTreeSet<String> = dashboard
        .iter()
        .filter(|n| n.starts_with(BUFFER_PREFIX))
        .cloned()
        .collect();
    for file in ["alerts.yaml", "alerts_test.yaml"] {
        let names = names_in(&read_text(monitoring_file(file)));
        assert!(names.len() >= 10, "{file}: {names:?}");
        assert_eq!(exported.missing(&names), Vec::<String>::new(), "{file}");
        buffer.extend(names.into_iter().filter(|n| n.starts_with(BUFFER_PREFIX)));
    }
    // The alerts the disk buffer needs watch these.
    for wanted in [
        "audit_forwarder_buffer_oldest_event_age_seconds",
        "audit_forwarder_buffer_bytes",
        "audit_forwarder_buffer_max_bytes",
        "audit_forwarder_buffer_disk_errors_total",
        "audit_forwarder_buffer_corrupt_records_total",
        "audit_forwarder_buffer_filesystem_free_bytes",
    ] {
        assert!(buffer.contains(wanted), "no alert or panel uses {wanted}");
    }
    // A name in names.rs is not enough for the buffer's metrics: a forwarder
    // with a disk buffer serves each of them after one batch, the counters
    // at 0 (a counter that appears with its first increment hides that
    // increment from increase(), and the alerts use increase()).
    assert_eq!(
        exported.not_served(&buffer),
        Vec::<String>::new(),
        "buffer metrics in deploy/monitoring/ that a forwarder with buffer.type disk does not serve"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_name_check_refuses_a_misspelt_or_suffixed_name() {
    let exported = exported().await;
    let wrong = names_in(
        "rate(audit_forwarder_event_received_total[5m]) + audit_forwarder_queue_events_bucket \
         + audit_forwarder_request_duration_seconds_count + xaudit_forwarder_ignored",
    );
    assert_eq!(
        exported.missing(&wrong),
        vec![
            "audit_forwarder_event_received_total".to_owned(),
            "audit_forwarder_queue_events_bucket".to_owned(),
        ]
    );
}

#[tokio::test]
async fn process_series_and_every_known_label_are_there_before_any_traffic() {
    let mut cfg = config();
    cfg.sinks
        .push(kube_audit_forwarder::config::SinkConfig::Tcp(
            kube_audit_forwarder::config::TcpSinkConfig {
                endpoint: "127.0.0.1:9".into(),
                ..Default::default()
            },
        ));
    let fwd = Forwarder::start(cfg).await;
    let m = fwd.metrics().await;
    for series in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(m.get(series) > 0.0, "{series}");
    }
    assert!(m.value("process_cpu_seconds_total").is_some());
    for series in [
        r#"audit_forwarder_requests_total{code="200"}"#,
        r#"audit_forwarder_requests_total{code="400"}"#,
        r#"audit_forwarder_requests_total{code="413"}"#,
        r#"audit_forwarder_requests_total{code="503"}"#,
        r#"audit_forwarder_requests_rejected_total{reason="queue_full"}"#,
        r#"audit_forwarder_requests_rejected_total{reason="invalid_json"}"#,
        r#"audit_forwarder_requests_rejected_total{reason="too_many_events"}"#,
        r#"audit_forwarder_decode_errors_total{reason="invalid_json"}"#,
        r#"audit_forwarder_events_dropped_total{reason="event_too_large",sink="all"}"#,
        r#"audit_forwarder_error_total{reason="write",sink="stdout"}"#,
        r#"audit_forwarder_error_total{reason="connection",sink="tcp"}"#,
        r#"audit_forwarder_connection_errors_total{reason="broken",sink="tcp"}"#,
    ] {
        assert_eq!(m.value(series), Some(0.0), "{series} is exported at 0");
    }
    fwd.stop().await;
}
