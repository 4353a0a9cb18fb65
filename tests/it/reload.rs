//! SIGHUP to the real binary: the configuration file is read again and
//! applied under load, with nothing acknowledged lost or duplicated; a bad
//! file keeps the running configuration; a hang-up of the terminal does not
//! end the process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::backends::HttpBackend;
use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-audit-forwarder");

/// The binary on a config file, stdout read as it comes.
struct Proc {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    stdout: Arc<Mutex<Vec<u8>>>,
    stdout_reader: std::thread::JoinHandle<()>,
    logs: mpsc::Receiver<String>,
}

impl Proc {
    fn start(file: &std::path::Path, own_group: bool) -> Self {
        Self::start_with(file, own_group, &[])
    }

    fn start_with(file: &std::path::Path, own_group: bool, args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(file)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if own_group {
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (out, mut pipe) = (stdout.clone(), child.stdout.take().unwrap());
        let stdout_reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || metrics_addr.is_none() {
            let line = logs
                .recv_timeout(PATIENCE)
                .expect("listener address logged");
            let found = line
                .split("address=")
                .nth(1)
                .map(|a| a.trim().parse().unwrap());
            if line.contains("metrics listener ready") {
                metrics_addr = found;
            } else if line.contains("webhook listener ready") {
                addr = found;
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            metrics_addr: metrics_addr.unwrap(),
            stdout,
            stdout_reader,
            logs,
        }
    }

    fn kill(&self, signal: &str, target: String) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), "--", &target])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn hup(&self) {
        self.kill("HUP", self.child.id().to_string());
    }

    async fn metric(&self, series: &str) -> f64 {
        let resp = request(
            self.metrics_addr,
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
        )
        .await;
        Metrics::parse(&resp.text()).get(series)
    }

    /// SIGTERM, then the exit code, what stdout got and the log lines.
    fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        self.kill("TERM", self.child.id().to_string());
        let status = self.child.wait().unwrap();
        self.stdout_reader.join().unwrap();
        let out = String::from_utf8(self.stdout.lock().unwrap().clone()).unwrap();
        (status.code(), out, self.logs.try_iter().collect())
    }
}

const RELOADS: &str = "audit_forwarder_config_reloads_total";

fn config_a() -> String {
    r#"
source:
  http:
    address: "127.0.0.1:0"
metrics:
  address: "127.0.0.1:0"
sinks:
  - type: stdout
    name: stdout
"#
    .to_owned()
}

/// A new HTTP sink, the stdout sink's queue changed (a changed sink), and the
/// webhook listener's settings changed (re-bound on the same address).
fn config_b(backend: SocketAddr) -> String {
    format!(
        r#"
source:
  http:
    address: "127.0.0.1:0"
    max_connections: 512
metrics:
  address: "127.0.0.1:0"
sinks:
  - type: stdout
    name: stdout
    queue:
      capacity_events: 50000
  - type: http
    name: backend
    endpoints: ["http://{backend}/ingest"]
    encoding: ndjson
    batch:
      timeout_ms: 20
"#
    )
}

/// Posts batches of 20 events from two clients until `stop`, each batch
/// again until it gets a 200, as the API server does. Returns the first
/// event number of every batch, with the number of acknowledged batches
/// (all clients) seen when its first attempt began.
async fn load(
    addr: SocketAddr,
    next: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<(u64, u64)> {
    let mut sent = Vec::new();
    for _ in 0..2000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let first = next.fetch_add(20, Ordering::Relaxed);
        let began = acked.load(Ordering::SeqCst);
        let body = list(first..first + 20);
        let mut ok = false;
        for _ in 0..200 {
            match try_post(addr, body.as_bytes()).await {
                Some(200) => {
                    ok = true;
                    break;
                }
                // 503, or a connection closed as a listener is replaced: the
                // API server sends the batch again.
                Some(503) | None => {}
                Some(other) => panic!("batch {first} answered {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "batch {first} never accepted");
        acked.fetch_add(1, Ordering::SeqCst);
        sent.push((first, began));
    }
    sent
}

/// POSTs `body` on a new connection; the status, or `None` when the
/// connection ends without an answer.
async fn try_post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /post?timeout=30s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.ok()?;
    conn.write_all(body).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut answer))
        .await
        .expect("an answer or a close in time")
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn wait_metric(p: &Proc, series: &str, at_least: f64) {
    eventually(series, || async { p.metric(series).await >= at_least }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_applies_the_new_file_and_loses_or_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config_a()).unwrap();
    let backend = HttpBackend::start().await;
    let p = Proc::start(&file, false);

    let (next, acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let clients: Vec<_> = (0..2)
        .map(|_| tokio::spawn(load(p.addr, next.clone(), acked.clone(), stop.clone())))
        .collect();
    let until_acked = |n: u64| {
        let acked = acked.clone();
        async move {
            eventually("batches acknowledged", || {
                let done = acked.load(Ordering::SeqCst) >= n;
                async move { done }
            })
            .await
        }
    };

    until_acked(20).await;
    std::fs::write(&file, config_b(backend.addr)).unwrap();
    p.hup();
    wait_metric(&p, &format!(r#"{RELOADS}{{result="success"}}"#), 1.0).await;
    let after_reload = acked.load(Ordering::SeqCst);

    until_acked(after_reload + 20).await;
    std::fs::write(&file, "sinks:\n  - type: stdout\n    nmae: typo\n").unwrap();
    p.hup();
    wait_metric(&p, &format!(r#"{RELOADS}{{result="failure"}}"#), 1.0).await;
    let after_failure = acked.load(Ordering::SeqCst);
    until_acked(after_failure + 20).await;

    stop.store(true, Ordering::Relaxed);
    let mut batches = Vec::new();
    for c in clients {
        batches.extend(c.await.unwrap());
    }
    // Everything the backend should have, before the forwarder is stopped.
    let for_backend: Vec<u64> = batches
        .iter()
        .filter(|(_, began)| *began > after_reload)
        .flat_map(|(first, _)| *first..*first + 20)
        .collect();
    let want = for_backend.len();
    assert!(want >= 20 * 20, "{want}");
    eventually(
        "the new sink got the events admitted after the reload",
        || {
            let have = backend.audit_ids().len();
            async move { have >= want }
        },
    )
    .await;

    let (code, out, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{logs:#?}");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in audit_ids(&lines) {
        *counts.entry(id).or_default() += 1;
    }
    let acknowledged: Vec<u64> = batches
        .iter()
        .flat_map(|(first, _)| *first..*first + 20)
        .collect();
    for n in &acknowledged {
        assert_eq!(
            counts.get(&case_id(*n)).copied(),
            Some(1),
            "event {n} on stdout; logs: {logs:#?}"
        );
    }
    assert_eq!(lines.len(), acknowledged.len(), "nothing else on stdout");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in backend.audit_ids() {
        *seen.entry(id).or_default() += 1;
    }
    assert!(
        seen.values().all(|&c| c == 1),
        "no duplicate at the new sink"
    );
    for n in for_backend {
        assert!(seen.contains_key(&case_id(n)), "event {n} at the new sink");
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("configuration reload failed") && l.contains("nmae")),
        "the log says why the file was refused: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_hang_up_to_the_process_group_does_not_end_the_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config_a()).unwrap();
    let p = Proc::start(&file, true);
    assert_eq!(p.post_ok(0..5).await, 200);
    // What a terminal's hang-up sends: SIGHUP to the whole process group.
    p.kill("HUP", format!("-{}", p.child.id()));
    wait_metric(&p, &format!(r#"{RELOADS}{{result="success"}}"#), 1.0).await;
    assert_eq!(p.post_ok(5..10).await, 200);
    let (code, out, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{logs:#?}");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(audit_ids(&lines), (0..10).map(case_id).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn with_watch_config_a_changed_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config_a()).unwrap();
    let p = Proc::start_with(&file, false, &["--watch-config"]);
    assert_eq!(p.post_ok(0..2).await, 200);
    // A second stdout sink: every later event comes out twice.
    let two = format!("{}  - type: stdout\n    name: copy\n", config_a());
    // Written elsewhere and renamed into place, as a ConfigMap update does.
    let staged = dir.path().join("staged.yaml");
    std::fs::write(&staged, &two).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    wait_metric(&p, &format!(r#"{RELOADS}{{result="success"}}"#), 1.0).await;
    assert_eq!(p.post_ok(2..3).await, 200);
    std::fs::write(&file, "sinks: 3\n").unwrap();
    wait_metric(&p, &format!(r#"{RELOADS}{{result="failure"}}"#), 1.0).await;
    assert_eq!(
        p.post_ok(3..4).await,
        200,
        "the running configuration stays"
    );
    let (code, out, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{logs:#?}");
    let mut ids = audit_ids(&out.lines().map(str::to_owned).collect::<Vec<_>>());
    ids.sort();
    let mut want: Vec<String> = [0, 1, 2, 2, 3, 3].map(case_id).to_vec();
    want.sort();
    assert_eq!(ids, want);
}

impl Proc {
    async fn post_ok(&self, ids: std::ops::Range<u64>) -> u16 {
        post(self.addr, "/post", &[], list(ids).as_bytes())
            .await
            .status
    }
}

#[tokio::test]
async fn a_reload_whose_new_sink_cannot_be_built_changes_nothing() {
    use kube_audit_forwarder::app::App;
    use kube_audit_forwarder::config::{HttpSinkConfig, SinkConfig};
    let backend = HttpBackend::start().await;
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    let running = App::new(config())
        .with_stdout(Box::new(writer))
        .start()
        .await
        .unwrap();
    let (addr, metrics) = (running.http_addr, running.metrics.clone());
    let reloader = running.reloader();
    let token = running.shutdown_token();
    let task = tokio::spawn(running.wait());

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing/dead.ndjson");
    let mut bad = config();
    bad.sinks.push(SinkConfig::Http(HttpSinkConfig {
        name: "backend".into(),
        endpoints: vec![format!("http://{}/", backend.addr)],
        dead_letter_file: Some(missing.clone()),
        ..HttpSinkConfig::default()
    }));
    let err = reloader.reload(bad.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains("dead_letter_file") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    let count = |result: &str| {
        Metrics::parse(&String::from_utf8(metrics.render()).unwrap())
            .get(&format!(r#"{RELOADS}{{result="{result}"}}"#))
    };
    assert_eq!(count("failure"), 1.0);
    assert_eq!(
        post(addr, "/post", &[], list(0..1).as_bytes()).await.status,
        200
    );
    assert!(backend.recorded().is_empty(), "the old configuration stays");

    std::fs::create_dir(dir.path().join("missing")).unwrap();
    let report = reloader.reload(bad).await.unwrap();
    assert_eq!(report.added, ["backend"]);
    assert!(report.removed.is_empty() && report.changed.is_empty());
    assert_eq!(count("success"), 1.0);
    assert_eq!(
        post(addr, "/post", &[], list(1..2).as_bytes()).await.status,
        200
    );
    eventually("the new sink delivers", || {
        let n = backend.audit_ids().len();
        async move { n == 1 }
    })
    .await;
    assert_eq!(backend.audit_ids(), [case_id(1)]);

    token.cancel();
    let report = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    assert_eq!(report.undelivered_events, 0);
    let mut out = String::new();
    use tokio::io::AsyncReadExt;
    reader.read_to_string(&mut out).await.unwrap();
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(audit_ids(&lines), [case_id(0), case_id(1)]);
}

#[tokio::test]
async fn with_a_disk_buffer_a_reload_keeps_the_sinks_and_says_a_restart_is_needed() {
    use kube_audit_forwarder::app::App;
    use kube_audit_forwarder::config::{BufferKind, HttpSinkConfig, SinkConfig};
    let backend = HttpBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.buffer.kind = BufferKind::Disk;
    cfg.buffer.path = dir.path().join("buffer");
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    let running = App::new(cfg.clone())
        .with_stdout(Box::new(writer))
        .start()
        .await
        .unwrap();
    let (addr, metrics) = (running.http_addr, running.metrics.clone());
    let reloader = running.reloader();
    let token = running.shutdown_token();
    let task = tokio::spawn(running.wait());

    let mut more = cfg.clone();
    more.sinks.push(SinkConfig::Http(HttpSinkConfig {
        name: "backend".into(),
        endpoints: vec![format!("http://{}/", backend.addr)],
        ..HttpSinkConfig::default()
    }));
    more.pipeline.admission_wait_ms = 50;
    let report = reloader.reload(more).await.unwrap();
    assert_eq!(report.restart_needed, ["sinks"]);
    let count = Metrics::parse(&String::from_utf8(metrics.render()).unwrap())
        .get(&format!(r#"{RELOADS}{{result="restart_required"}}"#));
    assert_eq!(count, 1.0);
    assert_eq!(
        post(addr, "/post", &[], list(0..3).as_bytes()).await.status,
        200
    );
    let mut out = Vec::new();
    while out.iter().filter(|&&b| b == b'\n').count() < 3 {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(
            PATIENCE,
            tokio::io::AsyncReadExt::read(&mut reader, &mut buf),
        )
        .await
        .expect("the running stdout sink still writes")
        .unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    assert!(backend.recorded().is_empty(), "no sink was added");
    token.cancel();
    task.await.unwrap();
}
