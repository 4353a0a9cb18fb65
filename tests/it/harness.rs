//! Starts the forwarder in process (or as the real binary) on 127.0.0.1:0, with
//! a stdout sink whose reader the test controls, and talks to it over real TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_audit_forwarder::app::{App, ShutdownReport};
use kube_audit_forwarder::config::{Config, QueueConfig, SinkConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any test waits for something it expects.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The built-in default, on loopback with ports chosen by the kernel.
pub fn config() -> Config {
    let mut c = Config::default();
    c.source.http.address = "127.0.0.1:0".parse().unwrap();
    c.metrics.address = "127.0.0.1:0".parse().unwrap();
    c
}

/// The queue of the (first, stdout) sink.
pub fn stdout_queue(c: &mut Config) -> &mut QueueConfig {
    match &mut c.sinks[0] {
        SinkConfig::Stdout(s) => &mut s.queue,
        _ => panic!("the first sink is not stdout"),
    }
}

/// A forwarder running in this process.
pub struct Forwarder {
    pub addr: SocketAddr,
    /// The HTTPS listener, when enabled.
    pub https_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub out: Output,
    token: CancellationToken,
    task: Option<JoinHandle<ShutdownReport>>,
}

/// What the stdout sink wrote, read by a task that the test can hold back.
#[derive(Clone)]
pub struct Output {
    bytes: Arc<Mutex<Vec<u8>>>,
    gate: watch::Sender<bool>,
}

impl Forwarder {
    /// Starts with the stdout sink's output read as it comes.
    pub async fn start(cfg: Config) -> Self {
        Self::start_with(cfg, true).await
    }

    /// Starts with the stdout sink's output not read until [`Output::resume`]:
    /// the sink blocks once a few KiB are written, like a stalled log pipe.
    pub async fn start_stalled(cfg: Config) -> Self {
        Self::start_with(cfg, false).await
    }

    async fn start_with(cfg: Config, reading: bool) -> Self {
        // A stalled pipe takes only a few bytes before the sink blocks.
        let (writer, mut reader) = tokio::io::duplex(if reading { 64 << 10 } else { 64 });
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (gate, mut open) = watch::channel(reading);
        let sink = bytes.clone();
        tokio::spawn(async move {
            let _ = open.wait_for(|&o| o).await;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        let running = App::new(cfg)
            .with_stdout(Box::new(writer))
            .start()
            .await
            .unwrap();
        let token = running.shutdown_token();
        let (addr, metrics_addr) = (running.http_addr, running.metrics_addr.unwrap());
        let https_addr = running.https_addr;
        let task = tokio::spawn(running.wait());
        Self {
            addr,
            https_addr,
            metrics_addr,
            out: Output { bytes, gate },
            token,
            task: Some(task),
        }
    }

    pub async fn post(&self, body: &[u8]) -> Response {
        post(
            self.addr,
            "/post?timeout=30s",
            &[("Content-Type", "application/json")],
            body,
        )
        .await
    }

    pub async fn metrics(&self) -> Metrics {
        let resp = request(
            self.metrics_addr,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        assert_eq!(resp.status, 200);
        Metrics::parse(&resp.text())
    }

    /// Shuts down as SIGTERM would and returns the report.
    pub async fn stop(mut self) -> ShutdownReport {
        self.token.cancel();
        tokio::time::timeout(PATIENCE, self.task.take().unwrap())
            .await
            .expect("shutdown finished")
            .unwrap()
    }
}

impl Output {
    pub fn resume(&self) {
        self.gate.send_replace(true);
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.bytes.lock().unwrap().clone()).expect("stdout is UTF-8")
    }

    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }

    /// Waits until at least `n` lines have been written, and returns them all.
    pub async fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text();
            if text.matches('\n').count() >= n {
                return self.lines();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} lines; have: {text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An HTTP response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The `reason` of an error body.
    pub fn reason(&self) -> String {
        self.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// POSTs `body` with `Content-Length` and the given headers.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: forwarder.test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    request(addr, raw).await
}

/// Sends raw bytes (a whole request) and reads the response until the server
/// closes the connection. Writing goes on in its own task, so a server that
/// answers before reading everything is seen as it would be by a real client.
pub async fn request(addr: SocketAddr, raw: Vec<u8>) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in raw.chunks(64 << 10) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        std::future::pending::<()>().await; // keep the write half open
    });
    let resp = tokio::time::timeout(PATIENCE, read_response(&mut rd))
        .await
        .expect("response in time");
    writer.abort();
    resp
}

/// Reads one response: the head, then `Content-Length` bytes of body.
pub async fn read_response(rd: &mut (impl AsyncReadExt + Unpin)) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = rd.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = rd.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Response {
        status,
        headers,
        body,
    }
}

/// One scrape of `/metrics`.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let map = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect();
        Self(map)
    }

    /// The value of one series, written as in the exposition format
    /// (`name{label="value"}`), or 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The value of one series, `None` when it is not exported.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Whether a series of this name exists.
    pub fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }
}

/// Parses a line as JSON (numbers kept as their decimal text).
pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The `auditID` of each line.
pub fn audit_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| json(l)["auditID"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The auditID the cases use for event number `n`.
pub fn case_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Waits until `check` holds, polling.
pub async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    mut check: F,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A compact EventList of Metadata events whose auditIDs are `case_id(i)` for
/// each `i` in `ids`.
pub fn list(ids: std::ops::Range<u64>) -> String {
    let items: Vec<String> = ids
        .map(|i| {
            format!(
                r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","verb":"get"}}"#,
                case_id(i)
            )
        })
        .collect();
    event_list_of(&items)
}

/// A compact `audit.k8s.io/v1` EventList of the given compact items.
pub fn event_list_of(items: &[String]) -> String {
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}
