//! The network sinks against real servers on 127.0.0.1: delivery, encodings,
//! retries, dead letters, failover, back-pressure, and the BH-13/BH-14 cases.

use std::time::Duration;

use kube_audit_forwarder::config::{
    Balance, ClientTlsConfig, Compression, Config, Encoding, HealthCheckConfig, HttpSinkConfig,
    QueueConfig, RetryConfig, SinkConfig, TcpSinkConfig,
};
use kube_audit_forwarder::pipeline::WhenFull;

use crate::backends::*;
use crate::harness::*;
use crate::pki::pki;

fn fast_retry() -> RetryConfig {
    RetryConfig {
        initial_backoff_ms: 20,
        max_backoff_secs: 1,
        ..RetryConfig::default()
    }
}

fn http(urls: &[String]) -> HttpSinkConfig {
    HttpSinkConfig {
        endpoints: urls.to_vec(),
        retry: fast_retry(),
        ..HttpSinkConfig::default()
    }
}

fn tcp(addr: std::net::SocketAddr) -> TcpSinkConfig {
    TcpSinkConfig {
        endpoint: addr.to_string(),
        retry: fast_retry(),
        ..TcpSinkConfig::default()
    }
}

fn queue(events: usize) -> QueueConfig {
    QueueConfig {
        capacity_events: events,
        ..QueueConfig::default()
    }
}

fn with_sinks(sinks: Vec<SinkConfig>) -> Config {
    let mut c = config();
    c.sinks = sinks;
    // Sinks that cannot deliver give up quickly at the end of a test.
    c.shutdown.deadline_secs = 1;
    c
}

fn list(ids: std::ops::Range<u64>) -> Vec<u8> {
    crate::harness::list(ids).into_bytes()
}

fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(case_id).collect()
}

async fn wait_ids(what: &str, mut get: impl FnMut() -> Vec<String>, n: usize) -> Vec<String> {
    eventually(what, || {
        let have = get().len();
        async move { have >= n }
    })
    .await;
    get()
}

fn sent(m: &Metrics, sink: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_events_sent_total{{sink="{sink}"}}"#
    ))
}

#[tokio::test]
async fn http_passthrough_relays_each_batch_byte_identical() {
    let backend = HttpBackend::start().await;
    let url = format!("http://{}/audit", backend.addr);
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(http(&[url]))])).await;
    let bodies = [
        read("cases/BH-01/body.json"),
        read("cases/BH-05/body.json"),
        read("cases/BH-11/body.json"),
    ];
    for b in &bodies {
        assert_eq!(fwd.post(b).await.status, 200);
    }
    let got = wait_ids(
        "3 requests",
        || backend.recorded().iter().map(|r| r.path.clone()).collect(),
        3,
    )
    .await;
    assert_eq!(got, ["/audit"; 3]);
    let recorded = backend.recorded();
    // Batches go out several at a time, so in any order.
    for b in &bodies {
        assert!(
            recorded.iter().any(|r| r.body[..] == b[..]),
            "each body relayed byte for byte"
        );
    }
    assert!(
        recorded
            .iter()
            .all(|r| r.headers["content-type"] == "application/json")
    );
    eventually("sent counted", || async {
        sent(&fwd.metrics().await, "http") == 408.0
    })
    .await;
    fwd.stop().await;
}

/// An API server sends up to 15 batches at once (its throttle's burst, each
/// POSTed on its own): by default a passthrough sink relays as many at once,
/// rather than leaving them in its queue while the destination could take
/// them.
#[tokio::test]
async fn http_passthrough_relays_as_many_batches_at_once_as_an_api_server_sends() {
    let backend = HoldingBackend::start().await;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(http(&[format!(
        "http://{}/",
        backend.addr
    )]))]))
    .await;
    for i in 0..16 {
        assert_eq!(fwd.post(&list(i * 2..i * 2 + 2)).await.status, 200);
    }
    eventually("16 batches at the destination, none answered", || {
        let n = backend.arrived();
        async move { n == 16 }
    })
    .await;
    assert_eq!(sent(&fwd.metrics().await, "http"), 0.0);
    backend.release();
    eventually("every event sent", || async {
        sent(&fwd.metrics().await, "http") == 32.0
    })
    .await;
    fwd.stop().await;
}

#[tokio::test]
async fn http_passthrough_gzip_when_configured() {
    let backend = HttpBackend::start().await;
    let mut sink = http(&[format!("http://{}/", backend.addr)]);
    sink.compression = Compression::Gzip;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
    let body = read("cases/BH-01/body.json");
    assert_eq!(fwd.post(&body).await.status, 200);
    wait_ids(
        "one request",
        || backend.recorded().iter().map(|r| r.path.clone()).collect(),
        1,
    )
    .await;
    let r = &backend.recorded()[0];
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert!(r.body.len() < body.len() / 4);
    assert_eq!(r.plain_body(), body);
    fwd.stop().await;
}

#[tokio::test]
async fn http_passthrough_relays_a_gzip_body_as_received_and_the_path_when_asked() {
    use std::io::Write;
    let (relay, decoded) = (HttpBackend::start().await, HttpBackend::start().await);
    let mut as_received = http(&[format!("http://{}/ingest/", relay.addr)]);
    as_received.name = "relay".into();
    as_received.forward_path = true;
    let mut plain = http(&[format!("http://{}/ingest", decoded.addr)]);
    plain.name = "decoded".into();
    plain.compression = Compression::None;
    let fwd = Forwarder::start(with_sinks(vec![
        SinkConfig::Http(as_received),
        SinkConfig::Http(plain),
    ]))
    .await;
    let body = list(1..4);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&body).unwrap();
    let wire = gz.finish().unwrap();
    let gzip = [("Content-Encoding", "gzip")];
    assert_eq!(
        post(fwd.addr, "/post?timeout=30s", &gzip, &wire)
            .await
            .status,
        200
    );
    assert_eq!(
        post(fwd.addr, "/k8s-audit", &[], &list(4..5)).await.status,
        200
    );
    for backend in [&relay, &decoded] {
        wait_ids(
            "2 requests",
            || backend.recorded().iter().map(|r| r.path.clone()).collect(),
            2,
        )
        .await;
    }
    let mut got = relay.recorded();
    got.sort_by_key(|r| r.target.clone());
    assert_eq!(got[0].target, "/ingest/k8s-audit");
    assert_eq!(got[1].target, "/ingest/post?timeout=30s");
    assert_eq!(got[1].headers["content-encoding"], "gzip");
    assert_eq!(
        got[1].body[..],
        wire[..],
        "the received gzip bytes, unchanged"
    );
    assert!(got[0].headers.get("content-encoding").is_none());
    assert_eq!(got[0].body[..], list(4..5)[..]);
    let got = decoded.recorded();
    assert!(
        got.iter().all(|r| r.target == "/ingest"),
        "the endpoint URL as written"
    );
    assert!(
        got.iter()
            .all(|r| r.headers.get("content-encoding").is_none())
    );
    assert!(
        got.iter().any(|r| r.body[..] == body[..]),
        "decompressed on request"
    );
    fwd.stop().await;
}

#[tokio::test]
async fn http_ndjson_and_json_array_rebatch_events() {
    for encoding in [Encoding::Ndjson, Encoding::JsonArray] {
        let backend = HttpBackend::start().await;
        let mut sink = http(&[format!("http://{}/", backend.addr)]);
        sink.encoding = encoding;
        sink.batch.max_events = 4;
        sink.batch.timeout_ms = 50;
        let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
        for i in 0..3 {
            assert_eq!(fwd.post(&list(i * 3 + 1..i * 3 + 4)).await.status, 200);
        }
        let got = wait_ids("9 events", || backend.audit_ids(), 9).await;
        assert_eq!(got, ids(1..10), "{encoding:?}");
        let recorded = backend.recorded();
        assert!(
            recorded.iter().all(|r| r.events().len() <= 4),
            "{encoding:?}: max_events respected"
        );
        let ct = if encoding == Encoding::Ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        assert_eq!(recorded[0].headers["content-type"], ct);
        // The events are the items, unchanged.
        assert_eq!(
            backend.events()[0],
            json(&format!(
                r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","verb":"get"}}"#,
                case_id(1)
            ))
        );
        fwd.stop().await;
    }
}

#[tokio::test]
async fn http_retries_until_delivered_once_honouring_retry_after() {
    let backend = HttpBackend::start().await;
    backend.set_answer(Answer::FailNext(503, 3));
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(http(&[format!(
        "http://{}/",
        backend.addr
    )]))]))
    .await;
    assert_eq!(fwd.post(&list(1..4)).await.status, 200);
    let got = wait_ids("delivery", || backend.audit_ids(), 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(got, ids(1..4));
    assert_eq!(backend.audit_ids().len(), 3, "delivered exactly once");
    let m = fwd.metrics().await;
    assert_eq!(m.get(r#"audit_forwarder_retries_total{sink="http"}"#), 3.0);
    assert_eq!(
        m.get(r#"audit_forwarder_error_total{reason="http_5xx",sink="http"}"#),
        9.0
    );
    assert_eq!(sent(&m, "http"), 3.0);
    fwd.stop().await;
}

#[tokio::test]
async fn http_rejected_event_is_split_out_and_dead_lettered() {
    for encoding in [Encoding::Ndjson, Encoding::Passthrough] {
        rejected_event_is_split_out(encoding).await;
    }
}

async fn rejected_event_is_split_out(encoding: Encoding) {
    let backend = HttpBackend::start().await;
    backend.set_answer(Answer::RejectContaining("poison".into()));
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.ndjson");
    let mut sink = http(&[format!("http://{}/", backend.addr)]);
    sink.encoding = encoding;
    sink.dead_letter_file = Some(dead.clone());
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
    let body = String::from_utf8(list(1..6)).unwrap().replacen(
        r#""verb":"get"}"#,
        r#""verb":"get","note":"poison"}"#,
        3,
    );
    let body = body.replacen(r#""note":"poison""#, r#""note":"fine""#, 2);
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    eventually("dead letter written", || async {
        std::fs::read_to_string(&dead).is_ok_and(|t| t.lines().count() == 1)
    })
    .await;
    let got = wait_ids("4 good events", || backend.audit_ids(), 4).await;
    assert_eq!(got, [1, 2, 4, 5].map(case_id));
    let dead_line = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(json(dead_line.trim())["auditID"], case_id(3));
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_dead_lettered_total{sink="http"}"#),
        1.0
    );
    assert_eq!(sent(&m, "http"), 4.0);
    fwd.stop().await;
}

/// A batch of 5 whose third event the backend rejects (400) whatever it is
/// sent with.
fn batch_with_poison() -> String {
    String::from_utf8(list(1..6))
        .unwrap()
        .replacen(r#""verb":"get"}"#, r#""verb":"get","note":"poison"}"#, 3)
        .replacen(r#""note":"poison""#, r#""note":"fine""#, 2)
}

fn dead_letter_sink(backend: &HttpBackend, file: &std::path::Path) -> SinkConfig {
    let mut sink = http(&[format!("http://{}/", backend.addr)]);
    sink.encoding = Encoding::Ndjson;
    sink.batch.timeout_ms = 20;
    sink.dead_letter_file = Some(file.to_owned());
    SinkConfig::Http(sink)
}

#[tokio::test]
async fn dead_letter_file_in_a_folder_that_does_not_exist_fails_the_start_naming_it() {
    let backend = HttpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing/dead.ndjson");
    let cfg = with_sinks(vec![dead_letter_sink(&backend, &file)]);
    let err = kube_audit_forwarder::app::App::new(cfg)
        .start()
        .await
        .err()
        .expect("start fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("dead_letter_file") && msg.contains(&file.display().to_string()),
        "{msg}"
    );
}

async fn dead_lettered(fwd: &Forwarder) -> (f64, f64, f64) {
    let m = fwd.metrics().await;
    (
        m.get(r#"audit_forwarder_events_dead_lettered_total{sink="http"}"#),
        m.get(r#"audit_forwarder_error_total{reason="dead_letter_write",sink="http"}"#),
        m.get(r#"audit_forwarder_queue_events{sink="http"}"#),
    )
}

#[tokio::test]
async fn dead_letters_that_cannot_be_written_are_held_and_retried_not_counted() {
    // A folder removed while running, then put back: the held event is
    // written once it can be.
    let backend = HttpBackend::start().await;
    backend.set_answer(Answer::RejectContaining("poison".into()));
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dead");
    std::fs::create_dir(&folder).unwrap();
    let file = folder.join("dead.ndjson");
    let fwd = Forwarder::start(with_sinks(vec![dead_letter_sink(&backend, &file)])).await;
    std::fs::remove_dir_all(&folder).unwrap();
    assert_eq!(fwd.post(batch_with_poison().as_bytes()).await.status, 200);
    eventually("failed writes counted", || async {
        dead_lettered(&fwd).await.1 >= 2.0
    })
    .await;
    let (counted, _, held) = dead_lettered(&fwd).await;
    assert_eq!(counted, 0.0, "not counted as dead-lettered while unwritten");
    assert_eq!(held, 5.0, "the batch keeps its room in the queue");
    std::fs::create_dir(&folder).unwrap();
    eventually("dead letter written", || async {
        std::fs::read_to_string(&file).is_ok_and(|t| t.lines().count() == 1)
    })
    .await;
    let line = std::fs::read_to_string(&file).unwrap();
    assert_eq!(json(line.trim())["auditID"], case_id(3));
    let got = wait_ids("4 good events", || backend.audit_ids(), 4).await;
    assert_eq!(got, [1, 2, 4, 5].map(case_id));
    eventually("counted once written, room given back", || async {
        let (counted, _, held) = dead_lettered(&fwd).await;
        counted == 1.0 && held == 0.0
    })
    .await;
    fwd.stop().await;

    // A full disk.
    let backend = HttpBackend::start().await;
    backend.set_answer(Answer::RejectContaining("poison".into()));
    let full = std::path::Path::new("/dev/full");
    let fwd = Forwarder::start(with_sinks(vec![dead_letter_sink(&backend, full)])).await;
    assert_eq!(fwd.post(batch_with_poison().as_bytes()).await.status, 200);
    eventually("failed writes counted", || async {
        dead_lettered(&fwd).await.1 >= 2.0
    })
    .await;
    let (counted, _, held) = dead_lettered(&fwd).await;
    assert_eq!((counted, held), (0.0, 5.0));
    let report = fwd.stop().await;
    assert_eq!(
        report.undelivered_events, 5,
        "counted at shutdown, not lost silently"
    );
}

#[tokio::test]
async fn http_401_403_407_are_retried_like_an_outage_never_split_nor_dead_lettered() {
    for status in [401, 403, 407] {
        let backend = HttpBackend::start().await;
        backend.set_answer(Answer::FailNext(status, 3));
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join("dead.ndjson");
        let mut sink = http(&[format!("http://{}/", backend.addr)]);
        sink.dead_letter_file = Some(dead.clone());
        let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
        let before = fwd.metrics().await;
        assert_eq!(
            before.value(r#"audit_forwarder_error_total{reason="unauthorized",sink="http"}"#),
            Some(0.0),
            "unauthorized is exported at 0 before the first refusal"
        );
        assert_eq!(fwd.post(&list(1..101)).await.status, 200);
        let got = wait_ids("delivery", || backend.audit_ids(), 100).await;
        assert_eq!(got, ids(1..101), "{status}");
        assert_eq!(
            backend.recorded().len(),
            1,
            "{status}: one request, never split"
        );
        // The file is opened (created) at start; nothing is written to it.
        assert_eq!(
            std::fs::read(&dead).unwrap_or_default(),
            b"",
            "{status}: nothing dead-lettered"
        );
        let m = fwd.metrics().await;
        assert_eq!(
            m.get(r#"audit_forwarder_error_total{reason="unauthorized",sink="http"}"#),
            300.0,
            "{status}: 100 events refused three times"
        );
        assert_eq!(m.get(r#"audit_forwarder_retries_total{sink="http"}"#), 3.0);
        assert_eq!(
            m.get(r#"audit_forwarder_events_dead_lettered_total{sink="http"}"#),
            0.0
        );
        fwd.stop().await;
    }
}

#[tokio::test]
async fn reject_statuses_decide_which_answers_split_the_request() {
    // 409 is not about content by default: retried, the request stays whole.
    // Named in reject_statuses it splits the request like a 400.
    for (reject, requests) in [(None, 1), (Some("409"), 2)] {
        let backend = HttpBackend::start().await;
        backend.set_answer(Answer::FailNext(409, 1));
        let mut sink = http(&[format!("http://{}/", backend.addr)]);
        if let Some(code) = reject {
            sink.retry.reject_statuses = vec![code.to_owned()];
        }
        let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
        assert_eq!(fwd.post(&list(1..5)).await.status, 200);
        wait_ids("delivery", || backend.audit_ids(), 4).await;
        let mut got = backend.audit_ids();
        got.sort();
        assert_eq!(got, ids(1..5), "{reject:?}");
        assert_eq!(backend.recorded().len(), requests, "{reject:?}");
        fwd.stop().await;
    }
}

#[tokio::test]
async fn http_backend_down_fills_the_queue_then_503_then_everything_arrives() {
    let mut backend = HttpBackend::start().await;
    backend.stop();
    let mut sink = http(&[format!("http://{}/", backend.addr)]);
    sink.queue = queue(6);
    let mut cfg = with_sinks(vec![SinkConfig::Http(sink)]);
    cfg.pipeline.admission_wait_ms = 20;
    let fwd = Forwarder::start(cfg).await;
    assert_eq!(fwd.post(&list(1..4)).await.status, 200);
    assert_eq!(fwd.post(&list(4..7)).await.status, 200);
    let refused = fwd.post(&list(7..10)).await;
    assert_eq!(
        (refused.status, refused.reason().as_str()),
        (503, "queue_full")
    );
    backend.restart().await;
    // Batches go out several at a time: compare without their order.
    let mut got = wait_ids("6 events", || backend.audit_ids(), 6).await;
    got.sort();
    assert_eq!(got, ids(1..7));
    // The API server's retry of the refused batch.
    eventually("queue drained", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_queue_events{sink="http"}"#)
            == 0.0
    })
    .await;
    assert_eq!(fwd.post(&list(7..10)).await.status, 200);
    let mut got = wait_ids("9 events", || backend.audit_ids(), 9).await;
    got.sort();
    assert_eq!(got, ids(1..10));
    let m = fwd.metrics().await;
    assert!(m.get(r#"audit_forwarder_error_total{reason="connect",sink="http"}"#) >= 1.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh13_http_severed_keep_alive_connection_loses_nothing() {
    let backend = HttpBackend::start().await;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(http(&[format!(
        "http://{}/",
        backend.addr
    )]))]))
    .await;
    assert_eq!(fwd.post(&read("cases/BH-13/body-a.json")).await.status, 200);
    wait_ids("batch A", || backend.audit_ids(), 5).await;
    backend.kill_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fwd.post(&read("cases/BH-13/body-b.json")).await.status, 200);
    let got = wait_ids("batch B", || backend.audit_ids(), 10).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(got, ids(1..11));
    assert_eq!(backend.audit_ids().len(), 10, "each exactly once");
    fwd.stop().await;
}

async fn bh13_tcp(variant: &str) {
    let mut backend = TcpBackend::start(TcpMode::Read).await;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Tcp(tcp(backend.addr))])).await;
    assert_eq!(fwd.post(&read("cases/BH-13/body-a.json")).await.status, 200);
    wait_ids("batch A", || backend.audit_ids(), 5).await;
    match variant {
        "fin" => backend.close_quietly(),
        "rst" => backend.reset(),
        _ => backend.kill(),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fwd.post(&read("cases/BH-13/body-b.json")).await.status, 200);
    if variant == "kill" {
        tokio::time::sleep(Duration::from_millis(700)).await;
        backend.restart().await;
    }
    let got = wait_ids("batch B", || backend.audit_ids(), 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = backend.audit_ids();
    let m = fwd.metrics().await;
    if variant == "rst" {
        // At least once: every auditID, duplicates only as counted retries.
        for id in ids(1..11) {
            assert!(got_all.contains(&id), "{variant}: {id} missing");
        }
        assert_eq!(
            got_all.len() as f64 - 10.0,
            m.get(r#"audit_forwarder_retries_total{sink="tcp"}"#)
        );
    } else {
        assert_eq!(
            got_all,
            ids(1..11),
            "{variant}: each exactly once, in order"
        );
    }
    assert_eq!(got[..10].len(), 10);
    let lost = |reason: &str| {
        m.get(&format!(
            r#"audit_forwarder_connection_errors_total{{reason="{reason}",sink="tcp"}}"#
        ))
    };
    let expected = if variant == "rst" { "broken" } else { "closed" };
    assert!(
        lost(expected) >= 1.0,
        "{variant}: the lost connection is counted"
    );
    eventually("queue drained", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_queue_events{sink="tcp"}"#)
            == 0.0
    })
    .await;
    assert!(sent(&fwd.metrics().await, "tcp") >= 10.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh13_tcp_peer_fin_then_next_batch_on_a_new_connection() {
    bh13_tcp("fin").await;
}

#[tokio::test]
async fn bh13_tcp_peer_reset_resends_recent_writes() {
    bh13_tcp("rst").await;
}

#[tokio::test]
async fn bh13_tcp_peer_killed_and_restarted() {
    bh13_tcp("kill").await;
}

async fn bh14(
    sink: SinkConfig,
    http_backend: Option<&HttpBackend>,
    tcp_backend: Option<&TcpBackend>,
) {
    let name = sink.name().to_owned();
    let fwd = Forwarder::start(with_sinks(vec![sink])).await;
    let depth = format!(r#"audit_forwarder_queue_events{{sink="{name}"}}"#);
    let filler = read("cases/BH-14/body-filler.json");
    let body = read("cases/BH-14/body.json");
    assert_eq!(fwd.post(&filler).await.status, 200);
    assert_eq!(fwd.metrics().await.get(&depth), 200.0);
    for _ in 0..51 {
        let resp = fwd.post(&body).await;
        assert_eq!(resp.status, 503);
        assert!(resp.header("retry-after").is_some());
    }
    assert_eq!(fwd.metrics().await.get(&depth), 200.0);
    let audit_ids = || match (http_backend, tcp_backend) {
        (Some(h), _) => h.audit_ids(),
        (_, Some(t)) => t.audit_ids(),
        _ => unreachable!(),
    };
    if let Some(h) = http_backend {
        h.set_answer(Answer::Ok);
    }
    if let Some(t) = tcp_backend {
        t.set_mode(TcpMode::Read);
    }
    let got = wait_ids("filler delivered", audit_ids, 200).await;
    assert_eq!(got, (1001..1201).map(case_id).collect::<Vec<_>>());
    eventually("queue drained", || async {
        fwd.metrics().await.get(&depth) == 0.0
    })
    .await;
    assert_eq!(fwd.post(&body).await.status, 200);
    let got = wait_ids("retry delivered", audit_ids, 204).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got[200..], ids(1..5));
    assert_eq!(audit_ids().len(), 204, "exactly once");
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_requests_rejected_total{reason="queue_full"}"#),
        51.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 204.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh14_http_sink_backpressure_is_all_or_nothing() {
    let backend = HttpBackend::start().await;
    backend.set_answer(Answer::FailNext(503, usize::MAX));
    let mut sink = http(&[format!("http://{}/", backend.addr)]);
    sink.queue = queue(202);
    bh14(SinkConfig::Http(sink), Some(&backend), None).await;
}

#[tokio::test]
async fn bh14_tcp_sink_backpressure_is_all_or_nothing() {
    let backend = TcpBackend::start(TcpMode::Stall).await;
    let mut sink = tcp(backend.addr);
    sink.queue = queue(202);
    bh14(SinkConfig::Tcp(sink), None, Some(&backend)).await;
}

#[tokio::test]
async fn failover_moves_to_the_second_endpoint_and_health_check_brings_the_first_back() {
    let mut first = HttpBackend::start().await;
    let second = HttpBackend::start().await;
    let mut sink = http(&[
        format!("http://{}/", first.addr),
        format!("http://{}/", second.addr),
    ]);
    sink.balance = Balance::Failover;
    sink.health_check = Some(HealthCheckConfig {
        path: "/healthz".into(),
        interval_secs: 1,
        timeout_secs: 1,
    });
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
    let addrs = [first.addr, second.addr];
    let up = |n: usize| {
        format!(
            r#"audit_forwarder_endpoint_up{{endpoint="http://{}/",sink="http"}}"#,
            addrs[n]
        )
    };
    for i in 0..3u64 {
        assert_eq!(fwd.post(&list(i * 2 + 1..i * 2 + 3)).await.status, 200);
    }
    wait_ids("first gets traffic", || first.audit_ids(), 6).await;
    first.stop();
    for i in 3..6u64 {
        assert_eq!(fwd.post(&list(i * 2 + 1..i * 2 + 3)).await.status, 200);
    }
    wait_ids("second gets the rest", || second.audit_ids(), 6).await;
    let mut all = first.audit_ids();
    all.extend(second.audit_ids());
    all.sort();
    assert_eq!(all, ids(1..13), "nothing lost, nothing twice");
    eventually("first ejected", || async {
        fwd.metrics().await.get(&up(0)) == 0.0
    })
    .await;
    first.restart().await;
    eventually("first back after a health check", || async {
        fwd.metrics().await.get(&up(0)) == 1.0
    })
    .await;
    assert_eq!(fwd.post(&list(13..15)).await.status, 200);
    wait_ids("first gets traffic again", || first.audit_ids(), 8).await;
    assert!(first.health_checks() > 0 && second.health_checks() > 0);
    fwd.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_requests() {
    let a = HttpBackend::start().await;
    let b = HttpBackend::start().await;
    let mut sink = http(&[format!("http://{}/", a.addr), format!("http://{}/", b.addr)]);
    sink.balance = Balance::RoundRobin;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
    for i in 0..4u64 {
        assert_eq!(fwd.post(&list(i + 1..i + 2)).await.status, 200);
    }
    eventually("4 requests", || async {
        a.recorded().len() + b.recorded().len() == 4
    })
    .await;
    assert_eq!((a.recorded().len(), b.recorded().len()), (2, 2));
    fwd.stop().await;
}

#[tokio::test]
async fn fanout_a_dead_drop_newest_sink_never_holds_up_the_others() {
    let backend = HttpBackend::start().await;
    let dead = TcpBackend::start(TcpMode::Read).await;
    dead.kill();
    let mut tcp_sink = tcp(dead.addr);
    tcp_sink.queue = QueueConfig {
        capacity_events: 4,
        when_full: WhenFull::DropNewest,
        ..QueueConfig::default()
    };
    let cfg = with_sinks(vec![
        config().sinks.remove(0),
        SinkConfig::Http(http(&[format!("http://{}/", backend.addr)])),
        SinkConfig::Tcp(tcp_sink),
    ]);
    let fwd = Forwarder::start(cfg).await;
    for i in 0..5u64 {
        assert_eq!(fwd.post(&list(i * 3 + 1..i * 3 + 4)).await.status, 200);
    }
    assert_eq!(audit_ids(&fwd.out.wait_lines(15).await), ids(1..16));
    assert_eq!(
        wait_ids("http", || backend.audit_ids(), 15).await,
        ids(1..16)
    );
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_dropped_total{reason="queue_full",sink="tcp"}"#),
        12.0
    );
    assert_eq!(m.get(r#"audit_forwarder_queue_events{sink="tcp"}"#), 3.0);
    fwd.stop().await;
}

#[tokio::test]
async fn fanout_a_dead_block_sink_refuses_whole_batches_for_every_sink() {
    let backend = HttpBackend::start().await;
    let dead = TcpBackend::start(TcpMode::Read).await;
    dead.kill();
    let mut tcp_sink = tcp(dead.addr);
    tcp_sink.queue = queue(4);
    let mut cfg = with_sinks(vec![
        SinkConfig::Http(http(&[format!("http://{}/", backend.addr)])),
        SinkConfig::Tcp(tcp_sink),
    ]);
    cfg.pipeline.admission_wait_ms = 20;
    let fwd = Forwarder::start(cfg).await;
    assert_eq!(fwd.post(&list(1..4)).await.status, 200);
    assert_eq!(fwd.post(&list(4..7)).await.status, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        backend.audit_ids(),
        ids(1..4),
        "the refused batch reached no sink"
    );
    fwd.stop().await;
}

#[tokio::test]
async fn http_sink_mtls_and_a_missing_client_identity() {
    let pki = pki();
    let backend = HttpBackend::start_tls(pki.acceptor()).await;
    let url = format!("https://localhost:{}/audit", backend.addr.port());
    let tls = ClientTlsConfig {
        ca_file: Some(pki.ca.clone()),
        crt_file: Some(pki.client_crt.clone()),
        key_file: Some(pki.client_key.clone()),
        ..ClientTlsConfig::default()
    };
    // By IP with a server_name override, and by name.
    let by_ip = HttpSinkConfig {
        name: "by-ip".into(),
        tls: ClientTlsConfig {
            server_name: Some("localhost".into()),
            ..tls.clone()
        },
        ..http(&[format!("https://127.0.0.1:{}/audit", backend.addr.port())])
    };
    let no_identity = HttpSinkConfig {
        name: "anonymous".into(),
        tls: ClientTlsConfig {
            ca_file: Some(pki.ca.clone()),
            ..ClientTlsConfig::default()
        },
        queue: QueueConfig {
            when_full: WhenFull::DropNewest,
            ..QueueConfig::default()
        },
        ..http(std::slice::from_ref(&url))
    };
    let fwd = Forwarder::start(with_sinks(vec![
        SinkConfig::Http(HttpSinkConfig {
            tls,
            ..http(&[url])
        }),
        SinkConfig::Http(by_ip),
        SinkConfig::Http(no_identity),
    ]))
    .await;
    assert_eq!(fwd.post(&list(1..3)).await.status, 200);
    let got = wait_ids("two mTLS sinks deliver", || backend.audit_ids(), 4).await;
    assert_eq!(got.iter().filter(|id| **id == case_id(1)).count(), 2);
    eventually("the sink without a client certificate fails", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_retries_total{sink="anonymous"}"#)
            >= 1.0
    })
    .await;
    assert_eq!(sent(&fwd.metrics().await, "anonymous"), 0.0);
    assert_eq!(backend.audit_ids().len(), 4);
    fwd.stop().await;
}

#[tokio::test]
async fn tcp_sink_over_mtls() {
    use tokio::io::AsyncBufReadExt;
    let pki = pki();
    let acceptor = pki.acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(stream).await.unwrap();
        let mut lines = tokio::io::BufReader::new(tls).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    let mut sink = tcp(addr);
    sink.tls = ClientTlsConfig {
        enabled: true,
        ca_file: Some(pki.ca.clone()),
        crt_file: Some(pki.client_crt.clone()),
        key_file: Some(pki.client_key.clone()),
        server_name: Some("localhost".into()),
        ..ClientTlsConfig::default()
    };
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Tcp(sink)])).await;
    assert_eq!(fwd.post(&list(1..4)).await.status, 200);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(PATIENCE, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(audit_ids(&got), ids(1..4));
    fwd.stop().await;
}

#[tokio::test]
async fn sink_client_certificate_is_reloaded_without_restart_and_its_expiry_published() {
    use crate::pki::Ca;
    let pki = pki();
    let backend = HttpBackend::start_tls(pki.acceptor()).await;
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&pki.client_crt, &crt).unwrap();
    std::fs::copy(&pki.client_key, &key).unwrap();
    let sink = HttpSinkConfig {
        name: "mtls".into(),
        tls: ClientTlsConfig {
            ca_file: Some(pki.ca.clone()),
            crt_file: Some(crt.clone()),
            key_file: Some(key.clone()),
            ..ClientTlsConfig::default()
        },
        ..http(&[format!("https://localhost:{}/", backend.addr.port())])
    };
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Http(sink)])).await;
    assert_eq!(fwd.post(&list(1..2)).await.status, 200);
    wait_ids("first batch", || backend.audit_ids(), 1).await;
    let m = fwd.metrics().await;
    let expiry = |which: &str| {
        format!(
            r#"audit_forwarder_tls_certificate_expiry_timestamp_seconds{{certificate="{which}"}}"#
        )
    };
    assert!(
        m.get(&expiry("sink:mtls")) > 1.9e9,
        "client certificate expiry published"
    );
    assert!(
        m.get(&expiry("sink:mtls:ca")) > 1.9e9,
        "CA expiry published"
    );

    // A certificate from a CA the backend does not trust: new handshakes fail.
    let rogue = Ca::new("rogue-ca").client("kube-audit-forwarder", None);
    std::fs::write(&key, &rogue.key).unwrap();
    std::fs::write(&crt, &rogue.crt).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    backend.kill_connections();
    assert_eq!(fwd.post(&list(2..3)).await.status, 200);
    eventually("handshakes with the rogue certificate fail", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_retries_total{sink="mtls"}"#)
            >= 2.0
    })
    .await;
    assert_eq!(backend.audit_ids(), ids(1..2));
    // The right certificate again: delivery resumes, nothing lost.
    std::fs::copy(&pki.client_key, &key).unwrap();
    std::fs::copy(&pki.client_crt, &crt).unwrap();
    assert_eq!(
        wait_ids("second batch", || backend.audit_ids(), 2).await,
        ids(1..3)
    );
    fwd.stop().await;
}

#[tokio::test]
async fn tcp_reconnect_counts_one_connection_error_and_each_resent_event_once() {
    for kill in [false, true] {
        tcp_reconnect_counts(kill).await;
    }
}

/// A stalled peer's connection is reset (`kill`: the peer is down for half a
/// second first); what was not acknowledged is re-sent.
async fn tcp_reconnect_counts(kill: bool) {
    let mut backend = TcpBackend::start(TcpMode::Stall).await;
    let fwd = Forwarder::start(with_sinks(vec![SinkConfig::Tcp(tcp(backend.addr))])).await;
    let before = fwd.metrics().await;
    for reason in ["connect", "timeout", "closed", "broken"] {
        assert!(
            before.value(&format!(
                r#"audit_forwarder_connection_errors_total{{reason="{reason}",sink="tcp"}}"#
            )) == Some(0.0),
            "{reason} is exported at 0 from the start"
        );
    }
    // The stalled peer's 4 KiB buffer takes a few events; the rest wait
    // unacknowledged in the forwarder's socket.
    assert_eq!(fwd.post(&list(1..61)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The peer reads again only once the stalled connection is gone, so that
    // what arrives is what was re-sent.
    if kill {
        backend.kill();
        backend.set_mode(TcpMode::Read);
        tokio::time::sleep(Duration::from_millis(500)).await;
        backend.restart().await;
    } else {
        backend.reset();
        backend.set_mode(TcpMode::Read);
    }
    let resent = wait_ids("the unacknowledged events again", || backend.audit_ids(), 1).await;
    eventually("queue drained", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_queue_events{sink="tcp"}"#)
            == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resent_ids = backend.audit_ids();
    assert!(!resent.is_empty());
    let m = fwd.metrics().await;
    let conn = |reason: &str| {
        m.get(&format!(
            r#"audit_forwarder_connection_errors_total{{reason="{reason}",sink="tcp"}}"#
        ))
    };
    assert_eq!(
        conn("broken") + conn("closed"),
        1.0,
        "{kill}: one lost connection, one error"
    );
    // Each attempt while the peer is down is a failed connection too.
    assert_eq!(conn("connect") > 0.0, kill, "{kill}");
    assert_eq!(
        m.get(r#"audit_forwarder_retries_total{sink="tcp"}"#),
        resent_ids.len() as f64,
        "{kill}: each re-sent event counted once"
    );
    let errors: f64 = ["connection", "connect", "timeout"]
        .iter()
        .map(|r| {
            m.get(&format!(
                r#"audit_forwarder_error_total{{reason="{r}",sink="tcp"}}"#
            ))
        })
        .sum();
    assert_eq!(
        errors, 60.0,
        "{kill}: each event once in the outage's errors"
    );
    fwd.stop().await;
}
