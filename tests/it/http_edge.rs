//! The HTTP edge: framing, encodings, methods, paths, limits, back-pressure,
//! health, and shutdown, seen from a client and from the sink.

use std::io::Write;
use std::time::Duration;

use crate::harness::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_single_and_multi_member() {
    let fwd = Forwarder::start(config()).await;
    let body = list(1..4);
    let hdrs = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
    ];
    let resp = post(fwd.addr, "/", &hdrs, &gzip(body.as_bytes())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    let multi = [gzip(a), gzip(b)].concat();
    let resp = post(fwd.addr, "/", &hdrs, &multi).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let lines = fwd.out.wait_lines(6).await;
    assert_eq!(audit_ids(&lines), [1, 2, 3, 1, 2, 3].map(case_id));

    let resp = post(fwd.addr, "/", &hdrs, b"not gzip at all").await;
    assert_eq!((resp.status, resp.reason().as_str()), (400, "invalid_gzip"));
    let resp = post(
        fwd.addr,
        "/",
        &[("Content-Encoding", "br")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (415, "unsupported_encoding")
    );
    fwd.stop().await;
}

#[tokio::test]
async fn gzip_bomb_is_refused_at_the_decoded_limit() {
    let mut cfg = config();
    cfg.source.http.max_decoded_bytes = 1 << 20;
    let fwd = Forwarder::start(cfg).await;
    let bomb = gzip(&vec![b' '; 8 << 20]);
    let resp = post(fwd.addr, "/", &[("Content-Encoding", "gzip")], &bomb).await;
    assert_eq!(
        (resp.status, resp.reason().as_str()),
        (413, "body_too_large")
    );
    fwd.stop().await;
}

#[tokio::test]
async fn chunked_body_in_one_byte_chunks() {
    let fwd = Forwarder::start(config()).await;
    let body = list(1..3);
    let mut raw = b"POST /post HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for b in body.bytes() {
        raw.extend_from_slice(b"1\r\n");
        raw.push(b);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(request(fwd.addr, raw).await.status, 200);
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(2).await),
        [case_id(1), case_id(2)]
    );
    fwd.stop().await;
}

#[tokio::test]
async fn bom_and_pretty_printing_are_accepted() {
    let fwd = Forwarder::start(config()).await;
    let pretty = "{\n  \"kind\": \"EventList\",\n  \"items\": [\n    {\n      \"level\": \"Metadata\",\n      \"auditID\": \"ID1\",\n      \"stage\": \"ResponseComplete\",\n      \"verb\": \"get\"\n    },\r\n\t{ \"auditID\" : \"ID2\" }\n  ]\n}\n";
    let pretty = pretty
        .replace("ID1", &case_id(1))
        .replace("ID2", &case_id(2));
    let body = [b"\xEF\xBB\xBF".as_slice(), pretty.as_bytes()].concat();
    assert_eq!(fwd.post(&body).await.status, 200);
    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(
        lines[0],
        format!(
            r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","verb":"get"}}"#,
            case_id(1)
        )
    );
    fwd.stop().await;
}

#[tokio::test]
async fn not_json_is_400_and_counted() {
    let fwd = Forwarder::start(config()).await;
    let resp = fwd.post(b"{\"items\":[{\"auditID\":\"a\"},").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.reason(), "invalid_json");
    assert!(
        resp.json()["error"].as_str().unwrap().contains("byte"),
        "{}",
        resp.text()
    );
    let resp = fwd.post(b"").await;
    assert_eq!((resp.status, resp.reason().as_str()), (400, "empty_body"));
    let m = fwd.metrics().await;
    assert_eq!(m.get(r#"audit_forwarder_requests_total{code="400"}"#), 2.0);
    assert_eq!(
        m.get(r#"audit_forwarder_decode_errors_total{reason="invalid_json"}"#),
        1.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 0.0);
    let out = fwd.out.clone();
    fwd.stop().await;
    assert_eq!(out.text(), "");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let fwd = Forwarder::start(config()).await;
    let resp = request(
        fwd.addr,
        b"GET /post HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    assert_eq!(resp.reason(), "method_not_allowed");
    assert!(
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_requests_rejected_total{reason="method_not_allowed"}"#)
            == 1.0
    );
    fwd.stop().await;
}

#[tokio::test]
async fn configured_paths_ignore_query_and_trailing_slash() {
    let mut cfg = config();
    cfg.source.http.paths = vec!["/k8s-audit".into()];
    let fwd = Forwarder::start(cfg).await;
    let body = list(1..2);
    let json = [("Content-Type", "application/json")];
    assert_eq!(
        post(fwd.addr, "/k8s-audit?timeout=30s", &json, body.as_bytes())
            .await
            .status,
        200
    );
    assert_eq!(
        post(fwd.addr, "/k8s-audit/", &json, body.as_bytes())
            .await
            .status,
        200
    );
    let resp = post(fwd.addr, "/other", &json, body.as_bytes()).await;
    assert_eq!((resp.status, resp.reason().as_str()), (404, "not_found"));
    assert_eq!(fwd.out.wait_lines(2).await.len(), 2);
    fwd.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let fwd = Forwarder::start(config()).await;
    let mut stream = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
    for i in 1..4u64 {
        let body = list(i..i + 1);
        let req = format!(
            "POST /post HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, req.as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut stream).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(3).await),
        [1, 2, 3].map(case_id)
    );
    assert_eq!(
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_open_connections{listener="http"}"#),
        1.0
    );
    fwd.stop().await;
}

/// A forwarder whose stdout sink is stalled, with a queue of 3 events that
/// holds 2 (auditIDs 1 and 2) and a 50 ms admission wait.
async fn stalled_with_two_queued() -> Forwarder {
    let mut cfg = config();
    stdout_queue(&mut cfg).capacity_events = 3;
    cfg.pipeline.admission_wait_ms = 50;
    let fwd = Forwarder::start_stalled(cfg).await;
    assert_eq!(fwd.post(list(1..3).as_bytes()).await.status, 200);
    fwd
}

async fn queue_drained(fwd: &Forwarder) {
    eventually("queue drained", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_queue_events{sink="stdout"}"#)
            == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_stalled_sink_is_refused_at_once_on_a_connection_that_stays_open() {
    use tokio::io::AsyncWriteExt;
    let fwd = stalled_with_two_queued().await;
    // Nothing drains for longer than the admission wait.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stream = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let body = list(10..12);
    let req = format!(
        "POST /audit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for round in 0..3 {
        wr.write_all(req.as_bytes()).await.unwrap();
        let resp = tokio::time::timeout(PATIENCE, read_response(&mut rd))
            .await
            .expect("an answer on the same connection");
        assert_eq!(
            (resp.status, resp.reason().as_str()),
            (503, "queue_full"),
            "round {round}"
        );
        assert!(resp.text().contains("have not drained"), "{}", resp.text());
        assert_eq!(resp.header("connection"), None, "round {round}");
        assert!(resp.header("retry-after").is_some());
    }
    let m = fwd.metrics().await;
    assert_eq!(m.get(r#"audit_forwarder_queue_events{sink="stdout"}"#), 2.0);
    assert_eq!(
        m.get(r#"audit_forwarder_requests_rejected_total{reason="queue_full"}"#),
        3.0
    );
    // Once the sink drains, the same connection gets the batch in.
    fwd.out.resume();
    fwd.out.wait_lines(2).await;
    queue_drained(&fwd).await;
    wr.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut rd).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(4).await)[2..],
        [case_id(10), case_id(11)]
    );
    fwd.stop().await;
}

#[tokio::test]
async fn blocked_sink_gets_503_fast_and_the_batch_only_once_resent() {
    let fwd = stalled_with_two_queued().await;
    let started = tokio::time::Instant::now();
    let resp = fwd.post(list(10..12).as_bytes()).await;
    assert_eq!(resp.status, 503);
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.reason(), "queue_full");
    let m = fwd.metrics().await;
    assert_eq!(m.get(r#"audit_forwarder_queue_events{sink="stdout"}"#), 2.0);
    assert_eq!(
        m.get(r#"audit_forwarder_requests_rejected_total{reason="queue_full"}"#),
        1.0
    );

    fwd.out.resume();
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(2).await),
        [case_id(1), case_id(2)]
    );
    queue_drained(&fwd).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fwd.out.lines().len(),
        2,
        "nothing of the refused batch was written"
    );

    assert_eq!(fwd.post(list(10..12).as_bytes()).await.status, 200);
    let ids = audit_ids(&fwd.out.wait_lines(4).await);
    assert_eq!(ids, [1, 2, 10, 11].map(case_id));
    fwd.stop().await;
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let fwd = Forwarder::start(config()).await;
    assert_eq!(fwd.post(list(1..3).as_bytes()).await.status, 200);
    fwd.out.wait_lines(2).await;
    let get = |path: &str| {
        request(
            fwd.metrics_addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes(),
        )
    };
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/readyz").await.status, 200);
    let m = fwd.metrics().await;
    for name in [
        "audit_forwarder_requests_total",
        "audit_forwarder_request_duration_seconds_bucket",
        "audit_forwarder_bytes_received_total",
        "audit_forwarder_events_sent_total",
        "audit_forwarder_queue_capacity_events",
        "audit_forwarder_queue_capacity_bytes",
        "audit_forwarder_build_info",
    ] {
        assert!(m.has(name), "{name} missing");
    }
    assert_eq!(m.get(r#"audit_forwarder_requests_total{code="200"}"#), 1.0);
    assert_eq!(m.get("audit_forwarder_events_received_total"), 2.0);
    eventually("events counted as sent", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_sent_total{sink="stdout"}"#)
            == 2.0
    })
    .await;
    fwd.stop().await;
}

#[tokio::test]
async fn shutdown_writes_what_was_queued_and_refuses_new_requests() {
    let fwd = Forwarder::start_stalled(config()).await;
    let body = list(1..201);
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    let out = fwd.out.clone();
    let addr = fwd.addr;
    let metrics_addr = fwd.metrics_addr;
    let stopping = tokio::spawn(fwd.stop());
    // While draining: not ready, and a new request is refused with 503.
    eventually("not ready while draining", || async {
        request(
            metrics_addr,
            b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await
        .status
            == 503
    })
    .await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed while draining"
    );
    out.resume();
    let report = stopping.await.unwrap();
    assert_eq!(report.undelivered_events, 0);
    assert_eq!(
        audit_ids(&out.lines()),
        (1..201).map(case_id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn shutdown_deadline_counts_what_could_not_be_written() {
    let mut cfg = config();
    cfg.shutdown.deadline_secs = 1;
    let fwd = Forwarder::start_stalled(cfg).await;
    assert_eq!(fwd.post(list(1..201).as_bytes()).await.status, 200);
    let report = fwd.stop().await;
    assert_eq!(report.undelivered_events, 200);
    assert_eq!(report.unfinished_sinks, ["stdout"]);
}

#[tokio::test]
async fn sockets_that_never_send_are_closed_and_free_the_connection_limit() {
    use tokio::io::AsyncReadExt;
    let mut cfg = config();
    cfg.source.http.header_read_timeout_secs = 1;
    cfg.source.http.max_connections = 2;
    let fwd = Forwarder::start(cfg).await;
    let mut idle = Vec::new();
    for addr in [fwd.addr, fwd.addr, fwd.metrics_addr] {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for mut s in idle {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("closed by the server");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "the server closed the silent socket"
        );
    }
    assert_eq!(fwd.post(list(1..2).as_bytes()).await.status, 200);
    fwd.stop().await;
}

#[tokio::test]
async fn refused_requests_move_no_event_counter() {
    let mut cfg = config();
    stdout_queue(&mut cfg).capacity_events = 3;
    cfg.pipeline.admission_wait_ms = 20;
    cfg.decode.max_event_bytes = 150;
    let fwd = Forwarder::start_stalled(cfg).await;
    assert_eq!(fwd.post(list(1..3).as_bytes()).await.status, 200);
    let pad = "p".repeat(300);
    let body = format!(
        r#"{{"items":[{{"auditID":"t","requestObject":{{"x":"{pad}"}}}},{{"auditID":"d","user":{{"username":"{pad}"}}}},{{"auditID":"ok"}}]}}"#
    );
    for _ in 0..3 {
        assert_eq!(fwd.post(body.as_bytes()).await.status, 503);
    }
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_truncated_total"), 0.0);
    assert_eq!(
        m.get(r#"audit_forwarder_events_dropped_total{reason="event_too_large",sink="all"}"#),
        0.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 2.0);
    fwd.out.resume();
    fwd.out.wait_lines(2).await;
    eventually("room", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_queue_events{sink="stdout"}"#)
            == 0.0
    })
    .await;
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    let m = fwd.metrics().await;
    assert_eq!(m.get("audit_forwarder_events_truncated_total"), 1.0);
    assert_eq!(
        m.get(r#"audit_forwarder_events_dropped_total{reason="event_too_large",sink="all"}"#),
        1.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 5.0);
    fwd.stop().await;
}

/// One keep-alive POST of `body` on `conn`, as Go's HTTP client sends it.
async fn keep_alive_post(conn: &mut tokio::net::TcpStream, body: &str) -> Response {
    use tokio::io::AsyncWriteExt;
    let raw = format!(
        "POST /post HTTP/1.1\r\nHost: forwarder.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(raw.as_bytes()).await.unwrap();
    tokio::time::timeout(PATIENCE, read_response(conn))
        .await
        .expect("response in time")
}

#[tokio::test]
async fn idle_keep_alive_outlasts_the_header_timeout_while_a_dawdling_head_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config();
    cfg.source.http.header_read_timeout_secs = 1;
    cfg.source.http.idle_timeout_secs = 60;
    let fwd = Forwarder::start(cfg).await;

    // Idle three times the header timeout between two requests: kept.
    let mut conn = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
    assert_eq!(keep_alive_post(&mut conn, &list(1..2)).await.status, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keep_alive_post(&mut conn, &list(2..3)).await.status, 200);
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(2).await),
        [case_id(1), case_id(2)]
    );

    // The next head begins and stalls: cut long before the idle timeout.
    conn.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    fwd.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_lasts_past_go_clients_90_s_at_the_defaults() {
    use tokio::io::AsyncReadExt;
    let fwd = Forwarder::start(config()).await;
    let mut conn = tokio::net::TcpStream::connect(fwd.addr).await.unwrap();
    assert_eq!(keep_alive_post(&mut conn, &list(1..2)).await.status, 200);
    // Paused time: the clock jumps over the wait, the timers see 95 s.
    tokio::time::sleep(Duration::from_secs(95)).await;
    assert_eq!(keep_alive_post(&mut conn, &list(2..3)).await.status, 200);
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(2).await),
        [case_id(1), case_id(2)]
    );
    // Past idle_timeout_secs (120) it is closed, without an answer.
    tokio::time::sleep(Duration::from_secs(121)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut got)).await;
    assert!(read.is_ok() && got.is_empty(), "{read:?} {got:?}");
    fwd.stop().await;
}

#[tokio::test]
async fn a_lone_surrogate_escape_costs_no_event_and_is_kept_as_received() {
    let fwd = Forwarder::start(config()).await;
    let odd = format!(r#"{{"auditID":"{}","s":"\ud800 and \udc00"}}"#, case_id(2));
    let body = event_list_of(&[
        format!(r#"{{"auditID":"{}"}}"#, case_id(1)),
        odd.clone(),
        format!(r#"{{"auditID":"{}"}}"#, case_id(3)),
    ]);
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    let lines = fwd.out.wait_lines(3).await;
    assert_eq!(lines[1], odd, "the escapes as received");
    assert_eq!(
        [&lines[0], &lines[2]].map(|l| json(l)["auditID"].clone()),
        [case_id(1), case_id(3)].map(serde_json::Value::from)
    );
    fwd.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_one_event_costs_no_neighbour_and_is_counted() {
    let fwd = Forwarder::start(config()).await;
    let body = [
        format!(r#"{{"items":[{{"auditID":"{}","s":"a"#, case_id(1)).into_bytes(),
        b"\xff\xc3".to_vec(),
        format!(r#"b"}},{{"auditID":"{}"}}]}}"#, case_id(2)).into_bytes(),
    ]
    .concat();
    assert_eq!(fwd.post(&body).await.status, 200);
    let lines = fwd.out.wait_lines(2).await;
    assert_eq!(
        json(&lines[0])["s"],
        "a\u{FFFD}\u{FFFD}b",
        "as Go decodes it"
    );
    assert_eq!(audit_ids(&lines), [case_id(1), case_id(2)]);
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_repaired_total{reason="invalid_utf8"}"#),
        1.0
    );
    assert_eq!(m.get("audit_forwarder_events_received_total"), 2.0);
    fwd.stop().await;
}

#[tokio::test]
async fn items_that_are_not_objects_are_not_written_as_lines_but_dropped_and_counted() {
    let fwd = Forwarder::start(config()).await;
    let body = format!(
        r#"{{"kind":"EventList","items":[1,"x",null,{{"auditID":"{}"}},[2]]}}"#,
        case_id(1)
    );
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    assert_eq!(fwd.post(b"[1,2,3]").await.status, 200);
    let body = format!(r#"[{{"auditID":"{}"}}]"#, case_id(2));
    assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    assert_eq!(
        audit_ids(&fwd.out.wait_lines(2).await),
        [case_id(1), case_id(2)]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fwd.out.lines().len(), 2, "{:?}", fwd.out.lines());
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_dropped_total{reason="not_an_object",sink="all"}"#),
        7.0
    );
    fwd.stop().await;
}
