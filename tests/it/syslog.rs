//! The `tcp` sink with `encoding: syslog` against a real rsyslogd (Debian's
//! `rsyslog`, TLS through `rsyslog-openssl`), started in the foreground per
//! test with `imtcp` on 127.0.0.1 and an `omfile` action whose template
//! writes the fields rsyslog parsed from each message: PRI, APP-NAME, MSGID,
//! HOSTNAME, TIMESTAMP, STRUCTURED-DATA and MSG, one message per line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube_audit_forwarder::config::{
    ClientTlsConfig, Facility, RetryConfig, SinkConfig, SyslogConfig, SyslogFormat, SyslogFraming,
    TcpEncoding, TcpSinkConfig,
};

use crate::corpus::{FILES, events_of};
use crate::harness::*;
use crate::pki::{Pki, pki};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// A running rsyslogd with its own work directory, config and output file.
struct Rsyslog {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// One message as rsyslog parsed and wrote it.
#[derive(Debug, Clone)]
struct Msg {
    pri: String,
    app: String,
    msgid: String,
    host: String,
    time: String,
    sd: String,
    msg: String,
}

impl Rsyslog {
    /// Starts rsyslogd on a free port; with `tls`, requiring a client
    /// certificate signed by the test CA (`x509/certvalid`).
    fn start(tls: Option<&Pki>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (driver, module) = match tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_owned()),
            Some(p) => (
                format!(
                    r#"global(DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}")"#,
                    p.ca.display(),
                    p.server_crt.display(),
                    p.server_key.display()
                ),
                r#"module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid")"#.to_owned(),
            ),
        };
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="1m")
{driver}
{module}
template(name="fields" type="list") {{
  property(name="pri") constant(value="|")
  property(name="app-name") constant(value="|")
  property(name="msgid") constant(value="|")
  property(name="hostname") constant(value="|")
  property(name="timereported" dateFormat="rfc3339") constant(value="|")
  property(name="structured-data") constant(value="|")
  property(name="msg") constant(value="\n")
}}
ruleset(name="out") {{
  action(type="omfile" file="{d}/out.log" template="fields" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="out")
"#
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf).unwrap();
        let mut r = Self {
            dir,
            port,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let p = |n: &str| self.dir.path().join(n);
        let log = std::fs::File::create(p("rsyslogd.log")).unwrap();
        let child = Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(p("rsyslog.conf"))
            .arg("-i")
            .arg(p("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rsyslogd runs (apt-get install rsyslog rsyslog-openssl)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(p("rsyslogd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it with SIGTERM (rsyslogd writes what it has taken in, then
    /// exits) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            c.wait().unwrap();
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.log")
    }

    /// The messages written so far.
    fn messages(&self) -> Vec<Msg> {
        let text = std::fs::read_to_string(self.out()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(7, '|').collect();
                let [pri, app, msgid, host, time, sd, msg] = f[..] else {
                    return None;
                };
                Some(Msg {
                    pri: pri.into(),
                    app: app.into(),
                    msgid: msgid.into(),
                    host: host.into(),
                    time: time.into(),
                    sd: sd.into(),
                    msg: msg.into(),
                })
            })
            .collect()
    }

    async fn wait_messages(&self, n: usize) -> Vec<Msg> {
        eventually(&format!("{n} messages in rsyslog's file"), || {
            let have = self.messages().len();
            async move { have >= n }
        })
        .await;
        // Nothing more than expected arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.messages()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn syslog_sink(endpoint: String, syslog: SyslogConfig) -> TcpSinkConfig {
    TcpSinkConfig {
        name: "syslog".into(),
        endpoint,
        encoding: TcpEncoding::Syslog,
        syslog,
        retry: RetryConfig {
            initial_backoff_ms: 20,
            max_backoff_secs: 1,
            ..RetryConfig::default()
        },
        ..TcpSinkConfig::default()
    }
}

fn forwarder_config(sink: TcpSinkConfig) -> kube_audit_forwarder::config::Config {
    let mut c = config();
    c.sinks = vec![SinkConfig::Tcp(sink)];
    c.shutdown.deadline_secs = 2;
    c
}

/// Every corpus event, compact (as the forwarder sends it).
fn corpus_items() -> Vec<String> {
    FILES
        .iter()
        .flat_map(|f| events_of(f))
        .map(|e| serde_json::to_string(&json(&e)).unwrap())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Posts the corpus and checks that rsyslog wrote each event's JSON exactly
/// once as MSG, with the header `check` expects.
async fn corpus_through(rsyslog: &Rsyslog, sink: TcpSinkConfig, check: impl Fn(&Msg, &str)) {
    let items = corpus_items();
    let fwd = Forwarder::start(forwarder_config(sink)).await;
    assert_eq!(fwd.post(event_list_of(&items).as_bytes()).await.status, 200);
    let got = rsyslog.wait_messages(items.len()).await;
    let msgs: Vec<String> = got.iter().map(|m| m.msg.clone()).collect();
    assert_eq!(
        sorted(msgs),
        sorted(items.clone()),
        "each event's JSON exactly once"
    );
    for m in &got {
        check(m, &m.msg);
    }
    let n = items.len() as f64;
    eventually("all counted as sent", || {
        let fwd = &fwd;
        async move {
            fwd.metrics()
                .await
                .get(r#"audit_forwarder_events_sent_total{sink="syslog"}"#)
                == n
        }
    })
    .await;
    fwd.stop().await;
}

/// The severity an event maps to with the defaults (informational 6, or
/// warning 4 for a failed request).
fn severity(event: &str) -> u64 {
    let v = json(event);
    let failed = v["responseStatus"]["code"]
        .as_u64()
        .is_some_and(|c| c >= 400)
        || v["stage"] == "Panic";
    if failed { 4 } else { 6 }
}

#[tokio::test]
async fn rsyslog_over_tcp_gets_every_corpus_event_with_the_configured_header() {
    let rsyslog = Rsyslog::start(None);
    let sd = BTreeMap::from([(
        "k8s@32473".to_owned(),
        BTreeMap::from([("cluster".to_owned(), r#"prod "eu" [1]"#.to_owned())]),
    )]);
    let sink = syslog_sink(
        rsyslog.endpoint(),
        SyslogConfig {
            facility: Facility(13),
            app_name: "kube-audit".into(),
            hostname: "node-a.example".into(),
            structured_data: sd,
            ..SyslogConfig::default()
        },
    );
    corpus_through(&rsyslog, sink, |m, event| {
        let v = json(event);
        assert_eq!(m.pri, (13 * 8 + severity(event)).to_string(), "{m:?}");
        assert_eq!(m.app, "kube-audit");
        assert_eq!(m.host, "node-a.example");
        assert_eq!(m.msgid, v["stage"].as_str().unwrap_or("-"), "{m:?}");
        assert_eq!(m.sd, r#"[k8s@32473 cluster="prod \"eu\" [1\]"]"#);
        // rsyslog writes the time it parsed, in its own RFC 3339 form.
        if let Some(t) = v["stageTimestamp"].as_str() {
            assert_eq!(m.time[..19], t[..19], "{m:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn rsyslog_over_tls_with_a_client_certificate_gets_every_corpus_event() {
    let pki = pki();
    let rsyslog = Rsyslog::start(Some(&pki));
    let mut sink = syslog_sink(
        rsyslog.endpoint(),
        SyslogConfig {
            msgid: "audit".into(),
            ..SyslogConfig::default()
        },
    );
    sink.tls = ClientTlsConfig {
        enabled: true,
        ca_file: Some(pki.ca.clone()),
        crt_file: Some(pki.client_crt.clone()),
        key_file: Some(pki.client_key.clone()),
        ..ClientTlsConfig::default()
    };
    corpus_through(&rsyslog, sink, |m, event| {
        assert_eq!(m.pri, (16 * 8 + severity(event)).to_string(), "{m:?}");
        assert_eq!(
            (m.app.as_str(), m.msgid.as_str()),
            ("kube-apiserver-audit", "audit")
        );
        assert_eq!(m.sd, "-");
    })
    .await;
}

#[tokio::test]
async fn rsyslog_gets_cef_with_lf_framing() {
    let rsyslog = Rsyslog::start(None);
    let sink = syslog_sink(
        rsyslog.endpoint(),
        SyslogConfig {
            format: SyslogFormat::Cef,
            framing: SyslogFraming::NonTransparent,
            ..SyslogConfig::default()
        },
    );
    let fwd = Forwarder::start(forwarder_config(sink)).await;
    let items = corpus_items();
    assert_eq!(fwd.post(event_list_of(&items).as_bytes()).await.status, 200);
    let got = rsyslog.wait_messages(items.len()).await;
    assert_eq!(got.len(), items.len());
    let mut ids: Vec<String> = Vec::new();
    for m in &got {
        assert!(
            m.msg
                .starts_with("CEF:0|Kubernetes|kube-apiserver|audit.k8s.io/v1|"),
            "{m:?}"
        );
        if let Some(id) = m.msg.split("externalId=").nth(1) {
            ids.push(id.split(' ').next().unwrap().to_owned());
        }
    }
    let want: Vec<String> = items
        .iter()
        .filter_map(|e| json(e)["auditID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sorted(ids), sorted(want), "each event's auditID once");
    fwd.stop().await;
}

#[tokio::test]
async fn rsyslog_stopped_and_restarted_mid_load_loses_nothing() {
    let mut rsyslog = Rsyslog::start(None);
    let sink = syslog_sink(rsyslog.endpoint(), SyslogConfig::default());
    let fwd = Forwarder::start(forwarder_config(sink)).await;
    const BATCHES: u64 = 30;
    const PER: u64 = 20;
    for b in 0..BATCHES {
        if b == 10 {
            rsyslog.stop();
        }
        if b == 20 {
            rsyslog.spawn();
        }
        let body = list(b * PER + 1..(b + 1) * PER + 1);
        assert_eq!(fwd.post(body.as_bytes()).await.status, 200, "batch {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = (BATCHES * PER) as usize;
    eventually("every auditID in rsyslog's file", || {
        let have: std::collections::HashSet<String> = rsyslog
            .messages()
            .iter()
            .map(|m| json(&m.msg)["auditID"].as_str().unwrap().to_owned())
            .collect();
        async move { have.len() >= total }
    })
    .await;
    let got = rsyslog.messages();
    let m = fwd.metrics().await;
    // At least once: duplicates only as re-sent events.
    assert!(
        (got.len() - total) as f64 <= m.get(r#"audit_forwarder_retries_total{sink="syslog"}"#),
        "{} messages for {total} events",
        got.len()
    );
    assert!(
        m.get(r#"audit_forwarder_connection_errors_total{reason="connect",sink="syslog"}"#) >= 1.0
    );
    fwd.stop().await;
}

#[tokio::test]
async fn messages_over_max_message_bytes_are_dead_lettered_exactly() {
    let rsyslog = Rsyslog::start(None);
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let mut sink = syslog_sink(
        rsyslog.endpoint(),
        SyslogConfig {
            max_message_bytes: 1200,
            ..SyslogConfig::default()
        },
    );
    sink.dead_letter_file = Some(dead.clone());
    let items = corpus_items();
    // A header is under 100 bytes: no event is near the limit.
    assert!(items.iter().all(|i| !(1000..1300).contains(&i.len())));
    let (big, small): (Vec<String>, Vec<String>) =
        items.iter().cloned().partition(|i| i.len() > 1200);
    assert!(!big.is_empty() && !small.is_empty());
    let fwd = Forwarder::start(forwarder_config(sink)).await;
    assert_eq!(fwd.post(event_list_of(&items).as_bytes()).await.status, 200);
    let got = rsyslog.wait_messages(small.len()).await;
    let msgs: Vec<String> = got.into_iter().map(|m| m.msg).collect();
    assert_eq!(sorted(msgs), sorted(small.clone()));
    let dead_lines: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(dead_lines, big, "exactly the refused events, in order");
    let m = fwd.metrics().await;
    let series = |name: &str| m.get(&format!("audit_forwarder_{name}"));
    assert_eq!(
        series(r#"events_dead_lettered_total{sink="syslog"}"#),
        big.len() as f64
    );
    assert_eq!(
        series(r#"error_total{reason="message_too_long",sink="syslog"}"#),
        big.len() as f64
    );
    eventually("the rest counted as sent", || {
        let fwd = &fwd;
        let n = small.len() as f64;
        async move {
            fwd.metrics()
                .await
                .get(r#"audit_forwarder_events_sent_total{sink="syslog"}"#)
                == n
        }
    })
    .await;
    fwd.stop().await;
}
