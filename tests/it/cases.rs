//! tests/data/cases: reproducers from public bug reports, each test named after
//! its case and checked against its expect.md.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::harness::*;

const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

/// The items of a case body, as JSON values.
fn items(rel: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&read(rel)).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn rejected(m: &Metrics, reason: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_requests_rejected_total{{reason="{reason}"}}"#
    ))
}

/// BH-01 request B's body: 400 RequestResponse events of about 80 KB each.
fn oversize_body() -> Vec<u8> {
    let blob = "y".repeat(80_000);
    let items: Vec<String> = (1..=400)
        .map(|i| {
            format!(
                r#"{{"level":"RequestResponse","auditID":"{}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/demo/configmaps/cm-{i}","verb":"update","user":{{"username":"alice","groups":["system:authenticated"]}},"sourceIPs":["10.0.0.1"],"objectRef":{{"resource":"configmaps","namespace":"demo","name":"cm-{i}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"kind":"ConfigMap","apiVersion":"v1","data":{{"blob":"{blob}"}}}},"requestReceivedTimestamp":"2024-05-01T12:00:00.123456Z","stageTimestamp":"2024-05-01T12:00:00.125001Z"}}"#,
                case_id(i)
            )
        })
        .collect();
    event_list_of(&items).into_bytes()
}

#[tokio::test]
async fn bh01_oversized_bodies_get_413_without_being_read_and_real_batches_pass() {
    let mut cfg = config();
    cfg.source.http.max_body_bytes = 4 << 20;
    cfg.source.http.max_decoded_bytes = 4 << 20;
    let fwd = Forwarder::start(cfg).await;
    let a = read("cases/BH-01/body.json");

    // A: a full 400-event batch.
    assert_eq!(post(fwd.addr, "/audit", &JSON, &a).await.status, 200);
    let lines = fwd.out.wait_lines(400).await;
    assert_eq!(
        audit_ids(&lines),
        (1..=400).map(case_id).collect::<Vec<_>>()
    );

    // B: ~32 MB with Content-Length: refused from the header, connection closed.
    let b = oversize_body();
    assert!(b.len() > 30_000_000);
    let resp = post(fwd.addr, "/audit", &JSON, &b).await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        resp.json()["error"]
            .as_str()
            .unwrap()
            .contains(&b.len().to_string()),
        "{}",
        resp.text()
    );

    // C: a 10 GiB Content-Length with 1 KiB sent: answered without waiting for more.
    let mut c = b"POST /audit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n".to_vec();
    c.extend_from_slice(&a[..1024]);
    let resp = request(fwd.addr, c).await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (413, "body_too_large")
    );

    // D: the same 32 MB chunked: refused once more than the limit has arrived.
    let mut d = b"POST /audit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in b.chunks(64 << 10) {
        d.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        d.extend_from_slice(chunk);
        d.extend_from_slice(b"\r\n");
    }
    d.extend_from_slice(b"0\r\n\r\n");
    let resp = request(fwd.addr, d).await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(resp.header("connection"), Some("close"));

    // A again on a new connection.
    assert_eq!(post(fwd.addr, "/audit", &JSON, &a).await.status, 200);
    fwd.out.wait_lines(800).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        fwd.out.lines().len(),
        800,
        "no event of B, C or D was written"
    );
    let m = fwd.metrics().await;
    assert_eq!(rejected(&m, "body_too_large"), 3.0);
    assert_eq!(m.get("audit_forwarder_events_received_total"), 800.0);
    fwd.stop().await;
}

const BUNDLE_SHA256: &str = "0a487d1171078c50956badb365c556be85c521d100416dc3f4892a1058a700d8";

#[tokio::test]
async fn bh02_one_huge_event_passes_whole_by_default() {
    let fwd = Forwarder::start(config()).await;
    assert_eq!(fwd.post(&read("cases/BH-02/body.json")).await.status, 200);
    let lines = fwd.out.wait_lines(3).await;
    assert_eq!(audit_ids(&lines), [1, 2, 3].map(case_id));
    let bundle = json(&lines[1])["requestObject"]["data"]["bundle.pem"]
        .as_str()
        .unwrap()
        .to_owned();
    let digest = Sha256::digest(bundle.as_bytes());
    assert_eq!(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        BUNDLE_SHA256
    );
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_received_total"), 3.0);
    assert_eq!(m.get("audit_forwarder_events_truncated_total"), 0.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh02_one_huge_event_is_truncated_under_a_per_event_limit() {
    let mut cfg = config();
    cfg.decode.max_event_bytes = 102_400;
    let fwd = Forwarder::start(cfg).await;
    let resp = fwd.post(&read("cases/BH-02/body.json")).await;
    assert_eq!(resp.status, 200);
    let lines = fwd.out.wait_lines(3).await;
    assert_eq!(audit_ids(&lines), [1, 2, 3].map(case_id));
    let input = items("cases/BH-02/body.json");
    assert_eq!(json(&lines[0]), input[0]);
    assert_eq!(json(&lines[2]), input[2]);
    let two = json(&lines[1]);
    assert!(two.get("requestObject").is_none() && two.get("responseObject").is_none());
    assert_eq!(two["annotations"]["audit.k8s.io/truncated"], "true");
    assert_eq!(two["verb"], input[1]["verb"]);
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_truncated_total"), 1.0);
    assert_eq!(m.get("audit_forwarder_events_received_total"), 3.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh04_content_type_parameters_and_body_shapes() {
    let fwd = Forwarder::start(config()).await;
    let body = read("cases/BH-04/body.json");
    for ct in [
        "application/json; charset=utf-8",
        "Application/JSON ;Charset=\"UTF-8\"",
    ] {
        assert_eq!(
            post(fwd.addr, "/audit", &[("Content-Type", ct)], &body)
                .await
                .status,
            200,
            "{ct}"
        );
    }
    // C: NDJSON with LF, CRLF and a trailing blank line: accepted, three events.
    let ndjson = read("cases/BH-04/body-ndjson.ndjson");
    let resp = post(
        fwd.addr,
        "/audit",
        &[("Content-Type", "application/x-ndjson")],
        &ndjson,
    )
    .await;
    assert_eq!(
        (resp.status, resp.json()["events"].as_u64()),
        (200, Some(3))
    );
    // D: a single Event: accepted, one event.
    let single = read("cases/BH-04/body-single-event.json");
    assert_eq!(post(fwd.addr, "/audit", &JSON, &single).await.status, 200);
    // E: no Content-Type.
    assert_eq!(post(fwd.addr, "/audit", &[], &body).await.status, 200);
    // Another charset is refused, not mis-decoded.
    let resp = post(
        fwd.addr,
        "/audit",
        &[("Content-Type", "application/json; charset=iso-8859-1")],
        &body,
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (415, "unsupported_media_type")
    );

    let lines = fwd.out.wait_lines(10).await;
    assert_eq!(
        audit_ids(&lines),
        [1, 2, 1, 2, 3, 4, 5, 6, 1, 2].map(case_id)
    );
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_received_total"), 10.0);
    assert_eq!(rejected(&m, "unsupported_media_type"), 1.0);
    fwd.stop().await;
}

#[tokio::test]
async fn bh05_chunked_body_split_inside_utf8_characters() {
    let fwd = Forwarder::start(config()).await;
    let head = b"POST /audit HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let wire = [head.as_slice(), &read("cases/BH-05/body.chunked")].concat();
    assert_eq!(request(fwd.addr, wire).await.status, 200);
    // The same body as 2,075 one-byte chunks.
    let body = read("cases/BH-05/body.json");
    let mut wire = head.to_vec();
    for b in &body {
        wire.extend_from_slice(b"1\r\n");
        wire.push(*b);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(request(fwd.addr, wire).await.status, 200);

    let lines = fwd.out.wait_lines(6).await;
    let expected = items("cases/BH-05/body.json");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(json(line), expected[i % 3], "line {i}");
    }
    assert!(
        lines[0].contains("café-readers")
            && lines[1].contains("日本語-cm")
            && lines[2].contains("ok 😀 ok")
    );
    fwd.stop().await;
}

#[tokio::test]
async fn bh11_untyped_v1beta1_items_patch_arrays_nulls_and_unknown_fields_survive() {
    let fwd = Forwarder::start(config()).await;
    assert_eq!(fwd.post(&read("cases/BH-11/body.json")).await.status, 200);
    let lines = fwd.out.wait_lines(5).await;
    let expected = items("cases/BH-11/body.json");
    assert_eq!(lines.len(), 5);
    for (line, item) in lines.iter().zip(&expected) {
        assert_eq!(&json(line), item);
    }
    assert!(json(&lines[2])["requestObject"].is_array());
    assert!(lines[4].contains("futureField"));
    let before = fwd.metrics().await;

    // B: `items: []` and C: `items` absent are both empty lists (Go's decoding).
    for body in [
        "cases/BH-11/body-empty-items.json",
        "cases/BH-11/body-null-items.json",
    ] {
        let resp = fwd.post(&read(body)).await;
        assert_eq!(
            (resp.status, resp.json()["events"].as_u64()),
            (200, Some(0)),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        fwd.out.text().matches('\n').count(),
        5,
        "nothing written for empty lists"
    );
    let after = fwd.metrics().await;
    assert_eq!(
        after.get("audit_forwarder_events_received_total"),
        before.get("audit_forwarder_events_received_total")
    );
    assert_eq!(
        after.get(r#"audit_forwarder_requests_total{code="200"}"#),
        3.0
    );
    fwd.stop().await;
}

#[tokio::test]
async fn bh14_stdout_backpressure_is_fast_all_or_nothing_and_retry_safe() {
    let mut cfg = config();
    stdout_queue(&mut cfg).capacity_events = 202;
    let fwd = Forwarder::start_stalled(cfg).await;
    let filler = read("cases/BH-14/body-filler.json");
    let body = read("cases/BH-14/body.json");
    let depth = r#"audit_forwarder_queue_events{sink="stdout"}"#;

    // 1: 200 events fit.
    assert_eq!(fwd.post(&filler).await.status, 200);
    assert_eq!(fwd.metrics().await.get(depth), 200.0);
    // 2: 4 events do not fit in the 2 free slots: 503, none queued.
    let resp = fwd.post(&body).await;
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    assert_eq!(fwd.metrics().await.get(depth), 200.0);
    // 3: 50 concurrent copies, all refused.
    let copies: Vec<_> = (0..50)
        .map(|_| {
            let (addr, body) = (fwd.addr, body.clone());
            async move { post(addr, "/audit", &JSON, &body).await }
        })
        .collect();
    for resp in futures_join(copies).await {
        assert_eq!(resp.status, 503);
    }
    assert_eq!(fwd.metrics().await.get(depth), 200.0);
    assert_eq!(
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_open_connections{listener="http"}"#),
        0.0
    );
    // 4: the sink recovers and drains.
    fwd.out.resume();
    let lines = fwd.out.wait_lines(200).await;
    assert_eq!(
        audit_ids(&lines),
        (1001..=1200).map(case_id).collect::<Vec<_>>()
    );
    eventually("queue drained", || async {
        fwd.metrics().await.get(depth) == 0.0
    })
    .await;
    // 5: the API server's retry goes through, exactly once.
    assert_eq!(fwd.post(&body).await.status, 200);
    let lines = fwd.out.wait_lines(204).await;
    assert_eq!(audit_ids(&lines[200..]), [1, 2, 3, 4].map(case_id));
    let m = fwd.metrics().await;
    assert_eq!(rejected(&m, "queue_full"), 51.0);
    assert_eq!(m.get("audit_forwarder_events_received_total"), 204.0);
    eventually("204 sent", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_sent_total{sink="stdout"}"#)
            == 204.0
    })
    .await;
    // 6: a third copy is forwarded again: there is no dedup window (documented).
    assert_eq!(fwd.post(&body).await.status, 200);
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(208).await[204..]),
        [1, 2, 3, 4].map(case_id)
    );
    assert_eq!(
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_dropped_total{reason="queue_full",sink="stdout"}"#),
        0.0
    );
    fwd.stop().await;
}

async fn futures_join<F: std::future::Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
