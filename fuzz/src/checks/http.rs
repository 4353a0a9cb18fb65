//! Any bytes on a connection to the HTTP source, served in process exactly as
//! a listener serves a TCP connection (`server::serve_connection` over an
//! in-memory pipe), on a paused clock so that timeouts pass at once.
//!
//! The connection must end by itself, without a panic, and what comes back
//! must be a sequence of well-formed HTTP/1.x responses (or nothing): each
//! refusal a 4xx or 503 with the forwarder's JSON error body, each acceptance
//! a 200 whose event count adds up to exactly what reached the queue.

use std::sync::Arc;
use std::time::Duration;

use kube_audit_forwarder::config::HttpSourceConfig;
use kube_audit_forwarder::metrics::Metrics;
use kube_audit_forwarder::pipeline::{Pipeline, QueueSpec, WhenFull};
use kube_audit_forwarder::server::{self, ServeOptions};
use kube_audit_forwarder::source::Handler;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The HTTP/2 connection preface; a connection that starts with it speaks h2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest (virtual) time a connection may stay open.
const PATIENCE: Duration = Duration::from_secs(300);

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
}

/// Serves `data` as everything a client sends on one connection, then checks
/// the answer.
pub fn check(data: &[u8]) {
    let (out, queued) = RUNTIME.with(|rt| rt.block_on(serve(data)));
    if data.starts_with(H2_PREFACE) {
        return;
    }
    let mut accepted = 0;
    for resp in responses(&out) {
        accepted += resp.check();
    }
    assert_eq!(accepted, queued, "events answered 200 vs events queued");
}

async fn serve(data: &[u8]) -> (Vec<u8>, usize) {
    let metrics = Metrics::new();
    let (pipeline, readers) = Pipeline::new(
        &[QueueSpec {
            name: "fuzz".into(),
            capacity_events: 1000,
            capacity_bytes: 1 << 20,
            when_full: WhenFull::Block,
        }],
        Duration::from_millis(10),
        &metrics,
    );
    let cfg = HttpSourceConfig {
        paths: vec!["/post".into(), "/k8s-audit/".into()],
        max_body_bytes: 64 << 10,
        max_decoded_bytes: 256 << 10,
        ..HttpSourceConfig::default()
    };
    let handler = Arc::new(Handler::new(
        &cfg,
        0,
        1,
        Arc::new(pipeline),
        metrics,
        CancellationToken::new(),
    ));
    let opts = ServeOptions {
        max_connections: 1,
        ..ServeOptions::from_http(&cfg)
    };
    let builder = server::builder(&opts);
    let (client, server_io) = tokio::io::duplex(64 << 10);
    let shutdown = CancellationToken::new();
    let conn = tokio::spawn(async move {
        server::serve_connection(&builder, server_io, handler, &opts, &shutdown).await
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    let input = data.to_vec();
    let writer = tokio::spawn(async move {
        // The server may close first; what it answered is still read below.
        if wr.write_all(&input).await.is_ok() {
            let _ = wr.shutdown().await;
        }
        wr
    });
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, rd.read_to_end(&mut out))
        .await
        .expect("the connection did not end")
        .expect("read the answer");
    let _ = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the connection task did not end")
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    drop(writer.await);
    (out, readers[0].depth_events())
}

/// One response as read off the connection.
struct Resp<'a> {
    status: u16,
    headers: Vec<(String, &'a str)>,
    body: &'a [u8],
}

/// Splits what the server wrote into responses, asserting each is well formed.
fn responses(mut out: &[u8]) -> Vec<Resp<'_>> {
    let mut all = Vec::new();
    while !out.is_empty() {
        assert!(
            out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x response: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head that ends");
        let head = std::str::from_utf8(&out[..end]).expect("a response head in ASCII");
        out = &out[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a bad status line: {status_line:?}"));
        let headers: Vec<(String, &str)> = lines
            .map(|l| {
                let (k, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("a bad header: {l:?}"));
                assert!(
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()),
                    "a bad header name: {k:?}"
                );
                (k.to_ascii_lowercase(), v.trim())
            })
            .collect();
        if (100..200).contains(&status) {
            continue;
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| {
                v.parse::<usize>().expect("a numeric content-length")
            });
        // An answer to HEAD (always 405 here) has the length but not the body.
        let bodiless = status == 405 && (out.is_empty() || out.starts_with(b"HTTP/1."));
        let body = if bodiless {
            &out[..0]
        } else {
            assert!(
                out.len() >= len,
                "a body cut short: {len} bytes announced, {} sent",
                out.len()
            );
            let (body, rest) = out.split_at(len);
            out = rest;
            body
        };
        all.push(Resp {
            status,
            headers,
            body,
        });
    }
    all
}

impl Resp<'_> {
    /// Checks one response and returns the events it says it accepted.
    fn check(&self) -> usize {
        let ours = self
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && *v == "application/json");
        if !ours {
            // hyper's own answers to what it could not parse.
            assert!(
                matches!(self.status, 400 | 408 | 414 | 431 | 501 | 505),
                "status {} not from the forwarder",
                self.status
            );
            return 0;
        }
        if self.body.is_empty() && self.status == 405 {
            return 0;
        }
        let json: serde_json::Value = serde_json::from_slice(self.body).expect("a JSON body");
        if self.status == 200 {
            assert_eq!(json["status"], "accepted");
            return json["events"].as_u64().expect("an event count") as usize;
        }
        assert!(
            matches!(self.status, 400 | 404 | 405 | 408 | 413 | 415 | 503),
            "unexpected status {}: {json}",
            self.status
        );
        assert!(
            json["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{json}"
        );
        assert!(
            json["error"].as_str().is_some_and(|r| !r.is_empty()),
            "{json}"
        );
        if self.status == 503 {
            assert!(self.headers.iter().any(|(k, _)| k == "retry-after"));
        }
        0
    }
}
