//! The real binary, as an operator runs it: the README's commands, signals,
//! `check-config`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_kube-audit-forwarder");

/// The binary on its built-in default, moved to loopback and kernel-chosen
/// ports through environment overrides.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub stderr: mpsc::Receiver<String>,
    /// stderr up to the listeners' addresses.
    pub early_logs: Vec<String>,
}

impl Process {
    fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[], Stdio::piped())
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS", "127.0.0.1:0")
            .env("AUDIT_FORWARDER__METRICS__ADDRESS", "127.0.0.1:0")
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addrs = Vec::new();
        let mut early_logs = Vec::new();
        while addrs.len() < 2 {
            let line = rx.recv_timeout(PATIENCE).expect("listener address logged");
            early_logs.push(line.clone());
            if let Some(addr) = line
                .split("address=")
                .nth(1)
                .filter(|_| line.contains("listener ready"))
            {
                addrs.push(addr.trim().parse().unwrap());
            }
        }
        Self {
            child,
            addr: addrs[0],
            metrics_addr: addrs[1],
            stderr: rx,
            early_logs,
        }
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for exit; returns the status code, stdout, and the stderr lines.
    pub fn finish(mut self) -> (Option<i32>, String, Vec<String>) {
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        let logs = self.stderr.try_iter().collect();
        (status.code(), out, logs)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_batch_is_queued_writes_it_and_exits_0() {
    let p = Process::start(&[]);
    // stdout is not read yet: a 260 KB batch fills the pipe and stays queued.
    let body = read("cases/BH-01/body.json");
    assert_eq!(
        post(
            p.addr,
            "/post?timeout=30s",
            &[("Content-Type", "application/json")],
            &body
        )
        .await
        .status,
        200
    );
    p.signal("TERM");
    let (code, out, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{logs:#?}");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(
        audit_ids(&lines),
        (1..=400).map(case_id).collect::<Vec<_>>()
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("every queued event was delivered")),
        "{logs:#?}"
    );
    assert!(
        logs.iter().all(|l| !l.contains(&case_id(1))),
        "logs never carry events"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_curl_example_prints_the_events_as_json_lines() {
    let p = Process::start(&[]);
    let file = data("corpus/liggitt-audit2rbac/demo.log");
    let url = format!("http://{}/post", p.addr);
    let curl = Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(&url)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(curl.status.success(), "{curl:?}");
    assert_eq!(json(&String::from_utf8_lossy(&curl.stdout))["events"], 37);
    let metrics = request(
        p.metrics_addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(
        metrics
            .text()
            .contains("audit_forwarder_events_received_total 37"),
        "{}",
        metrics.text()
    );
    p.signal("INT");
    let (code, out, _) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let expected = String::from_utf8(read("corpus/liggitt-audit2rbac/demo.log")).unwrap();
    assert_eq!(out, expected, "compact JSON lines come out byte for byte");
}

#[test]
fn check_config_accepts_the_shipped_configs_and_names_a_bad_key() {
    let ok = Command::new(BIN)
        .args(["check-config"])
        .arg(data("../../config/default.yaml"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "source:\n  http:\n    max_body_byte: 10\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(bad.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("source.http")
            && msg.contains("max_body_byte")
            && msg.contains(&bad.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn bad_listen_address_fails_at_start_naming_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .env("AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS", &addr)
        .env("AUDIT_FORWARDER__METRICS__ADDRESS", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains(&addr), "{msg}");
}

pub async fn metrics_of(p: &Process) -> Metrics {
    let resp = request(
        p.metrics_addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    )
    .await;
    Metrics::parse(&resp.text())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_stdout_keeps_events_queued_and_counts_them_at_shutdown() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let p = Process::start_with(
        &[],
        &[("AUDIT_FORWARDER__SHUTDOWN__DEADLINE_SECS", "1")],
        Stdio::from(full),
    );
    let body = read("cases/BH-04/body.json");
    assert_eq!(post(p.addr, "/post", &[], &body).await.status, 200);
    eventually("the write error is counted", || async {
        metrics_of(&p)
            .await
            .get(r#"audit_forwarder_error_total{reason="write",sink="stdout"}"#)
            >= 2.0
    })
    .await;
    let m = metrics_of(&p).await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_sent_total{sink="stdout"}"#),
        0.0,
        "nothing was written"
    );
    assert_eq!(
        m.get(r#"audit_forwarder_queue_events{sink="stdout"}"#),
        2.0,
        "the events stay queued"
    );
    p.signal("TERM");
    let (code, _, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        logs.iter().any(|l| l.contains("undelivered_events=2")),
        "{logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stdout_nobody_reads_does_not_keep_the_process_alive_past_the_deadline() {
    let p = Process::start_with(
        &[],
        &[("AUDIT_FORWARDER__SHUTDOWN__DEADLINE_SECS", "1")],
        Stdio::piped(),
    );
    // 260 KB with stdout unread: more than the pipe holds.
    let body = read("cases/BH-01/body.json");
    assert_eq!(post(p.addr, "/post", &[], &body).await.status, 200);
    p.signal("TERM");
    let Process {
        mut child, stderr, ..
    } = p;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exited on its own, stdout still unread"
    );
    let logs: Vec<String> = stderr.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("undelivered_events=")),
        "{logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_and_drops_are_logged_once_per_period_naming_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        "source:\n  http:\n    paths: [\"/post\"]\nsinks:\n  - type: stdout\n    name: stdout\n    queue:\n      capacity_events: 2\n      when_full: drop_newest\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let p = Process::start(&["--config", &path]);
    let stray = [("User-Agent", "stray-sender/1.0")];
    for _ in 0..20 {
        assert_eq!(post(p.addr, "/wrong", &stray, b"{}").await.status, 404);
    }
    for i in 0..5 {
        let body = list(i * 3..i * 3 + 3);
        assert_eq!(
            post(p.addr, "/post", &[], body.as_bytes()).await.status,
            200
        );
    }
    p.signal("TERM");
    let (code, _, logs) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let started: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("kube-audit-forwarder started"))
        .collect();
    assert_eq!(started.len(), 1, "{logs:#?}");
    for field in [
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        &format!("config={path}"),
        "listeners=http 127.0.0.1:",
        "sinks=stdout (stdout)",
    ] {
        assert!(started[0].contains(field), "{field} in {}", started[0]);
    }
    let refused: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("refusing webhook request"))
        .collect();
    assert_eq!(refused.len(), 1, "20 refusals, one line: {logs:#?}");
    for field in [
        "path=/wrong",
        "user_agent=stray-sender/1.0",
        "client=127.0.0.1:",
        "status=404",
    ] {
        assert!(refused[0].contains(field), "{field} in {}", refused[0]);
    }
    let dropped: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("dropping a batch"))
        .collect();
    assert_eq!(dropped.len(), 1, "5 drops, one line: {logs:#?}");
    assert!(dropped[0].contains("sink=\"stdout\""), "{}", dropped[0]);
}

#[test]
fn a_start_error_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tls.crt");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "source:\n  https:\n    enabled: true\n    address: 127.0.0.1:0\n    crt_file: {}\n    key_file: {}\n    client_auth: none\n",
            missing.display(),
            dir.path().join("tls.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .env("AUDIT_FORWARDER__SOURCE__HTTP__ADDRESS", "127.0.0.1:0")
        .env("AUDIT_FORWARDER__METRICS__ADDRESS", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
}

/// A config whose stdout queue holds 300 events, below the API server's
/// default batch of 400.
fn queue_of_300() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "sinks:\n  - type: stdout\n    queue:\n      capacity_events: 300\n",
    )
    .unwrap();
    file
}

#[test]
fn a_block_queue_smaller_than_a_batch_is_warned_about_by_check_config() {
    let cfg = queue_of_300();
    let out = Command::new(BIN)
        .args(["check-config"])
        .arg(cfg.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("warning: sinks[0].queue.capacity_events: 300")
            && msg.contains("expected_batch_events (400)")
            && msg.contains("413"),
        "{msg}"
    );
    let quiet = Command::new(BIN)
        .args(["check-config"])
        .arg(cfg.path())
        .env("AUDIT_FORWARDER__PIPELINE__EXPECTED_BATCH_EVENTS", "300")
        .output()
        .unwrap();
    assert!(quiet.status.success(), "{quiet:?}");
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
}

#[test]
fn a_block_queue_smaller_than_a_batch_is_warned_about_at_start() {
    let cfg = queue_of_300();
    let p = Process::start(&["--config", cfg.path().to_str().unwrap()]);
    let warned = p
        .early_logs
        .iter()
        .any(|l| l.contains("WARN") && l.contains("sinks[0].queue.capacity_events: 300"));
    assert!(warned, "{:#?}", p.early_logs);
    p.signal("KILL");
    p.finish();
}

#[test]
fn check_config_takes_its_file_from_config_as_well() {
    let cfg = queue_of_300();
    let path = cfg.path().to_str().unwrap();
    for args in [
        ["--config", path, "check-config"],
        ["check-config", "--config", path],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(": ok"),
            "{out:?}"
        );
    }
    let none = Command::new(BIN)
        .args(["check-config"])
        .env_remove("AUDIT_FORWARDER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("--config FILE"),
        "{none:?}"
    );
}
