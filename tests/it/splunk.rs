//! The `http` sink with `encoding: splunk_hec` against a test server that
//! follows Splunk's documented HTTP Event Collector protocol (Splunk cannot
//! be installed from this machine's package registries). Sources, all in
//! Splunk Enterprise's "Getting Data In" manual:
//!
//! - "HTTP Event Collector REST API endpoints": `POST
//!   /services/collector/event` with `Authorization: Splunk <token>`; a body
//!   of one or more stacked JSON envelopes; `POST /services/collector/ack`
//!   with `{"acks":[ids]}` answered `{"acks":{"id":true|false}}`.
//! - "Format events for HTTP Event Collector": the envelope keys `time`
//!   (epoch seconds, fraction allowed), `host`, `source`, `sourcetype`,
//!   `index`, `fields`, `event`.
//! - "Troubleshoot HTTP Event Collector", the status code table: 0 Success
//!   (200); 2 Token is required and 3 Invalid authorization (401); 4 Invalid
//!   token and 1 Token disabled (403); 6 Invalid data format (400, with
//!   `invalid-event-number`); 9 Server is busy (503); 10 Data channel is
//!   missing (400); 12 Event field is required and 13 Event field cannot be
//!   blank (400).
//! - "About HTTP Event Collector Indexer Acknowledgment": with
//!   acknowledgement on for the token, a request needs a channel
//!   (`X-Splunk-Request-Channel` header or `channel` query parameter), its
//!   answer carries an `ackId`, and the client polls the ack endpoint until
//!   the id is `true`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube_audit_forwarder::config::{
    Config, Encoding, HttpSinkConfig, RetryConfig, SinkConfig, SplunkHecConfig,
};
use serde_json::{Value, json};

use crate::corpus::corpus_values;
use crate::harness::*;
use crate::protocol_server::{ProtocolServer, Req};

const TOKEN: &str = "6f0a4c2e-7d1b-4a39-9c55-0b7e3f2d8a11";

/// What the test collector indexed and how it behaves.
#[derive(Default)]
struct Collector {
    /// Indexed envelopes, in arrival order.
    envelopes: Vec<Value>,
    /// The bodies of the event requests taken.
    bodies: Vec<String>,
    /// The next requests answered 503 "Server is busy" (code 9).
    busy: usize,
    /// Requests with an event containing this text are refused with code 6.
    refuse_containing: Option<String>,
    /// Indexer acknowledgement on for the token.
    ack: bool,
    next_ack: u64,
    /// Acks answered `false` while set.
    hold_acks: bool,
    /// The next ack ids that will never be confirmed (an indexer lost them).
    lose_acks: usize,
    lost: HashSet<u64>,
    channels: HashSet<String>,
    unauthorized: usize,
}

fn answer(code: u64, text: &str) -> Value {
    json!({"text": text, "code": code})
}

fn protocol(state: Arc<Mutex<Collector>>) -> crate::protocol_server::Protocol {
    Arc::new(move |req: Req| {
        let mut c = state.lock().unwrap();
        match req.header("authorization") {
            None => {
                c.unauthorized += 1;
                return (401, answer(2, "Token is required"));
            }
            Some(a) if !a.starts_with("Splunk ") => {
                c.unauthorized += 1;
                return (401, answer(3, "Invalid authorization"));
            }
            Some(a) if a != format!("Splunk {TOKEN}") => {
                c.unauthorized += 1;
                return (403, answer(4, "Invalid token"));
            }
            Some(_) => {}
        }
        let channel = req
            .header("x-splunk-request-channel")
            .map(str::to_owned)
            .or_else(|| req.query.strip_prefix("channel=").map(str::to_owned));
        if c.ack && channel.is_none() {
            return (400, answer(10, "Data channel is missing"));
        }
        match req.path.as_str() {
            "/services/collector/event" => {}
            "/services/collector/ack" => {
                let asked: Value = serde_json::from_slice(&req.body).unwrap();
                let acks: serde_json::Map<String, Value> = asked["acks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| {
                        let id = id.as_u64().unwrap();
                        let done = id < c.next_ack && !c.hold_acks && !c.lost.contains(&id);
                        (id.to_string(), json!(done))
                    })
                    .collect();
                return (200, json!({ "acks": acks }));
            }
            _ => {
                return (
                    404,
                    answer(404, "The requested URL was not found on this server."),
                );
            }
        }
        if c.busy > 0 {
            c.busy -= 1;
            return (503, answer(9, "Server is busy"));
        }
        let text = String::from_utf8(req.body).unwrap();
        let mut envelopes = Vec::new();
        for (i, e) in serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .enumerate()
        {
            let Ok(e) = e else {
                return (
                    400,
                    json!({"text": "Invalid data format", "code": 6, "invalid-event-number": i}),
                );
            };
            match e.get("event") {
                None => return (400, answer(12, "Event field is required")),
                Some(Value::String(s)) if s.is_empty() => {
                    return (400, answer(13, "Event field cannot be blank"));
                }
                Some(ev) => {
                    if c.refuse_containing
                        .as_ref()
                        .is_some_and(|t| ev.to_string().contains(t.as_str()))
                    {
                        return (
                            400,
                            json!({"text": "Invalid data format", "code": 6, "invalid-event-number": i}),
                        );
                    }
                }
            }
            envelopes.push(e);
        }
        c.envelopes.extend(envelopes);
        c.bodies.push(text);
        if !c.ack {
            return (200, answer(0, "Success"));
        }
        c.channels.extend(channel);
        let id = c.next_ack;
        c.next_ack += 1;
        if c.lose_acks > 0 {
            c.lose_acks -= 1;
            c.lost.insert(id);
        }
        (200, json!({"text": "Success", "code": 0, "ackId": id}))
    })
}

/// `n` corpus events (cycled) with unique auditIDs `hec-<i>`.
fn events(n: usize) -> Vec<String> {
    let corpus = corpus_values();
    (0..n)
        .map(|i| {
            let mut e = corpus[i % corpus.len()].clone();
            e["auditID"] = json!(format!("hec-{i}"));
            e.to_string()
        })
        .collect()
}

struct Setup {
    collector: Arc<Mutex<Collector>>,
    server: ProtocolServer,
    dir: tempfile::TempDir,
    token_file: std::path::PathBuf,
}

async fn setup(c: Collector) -> Setup {
    let collector = Arc::new(Mutex::new(c));
    let server = ProtocolServer::start(protocol(collector.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = crate::pki::write(dir.path(), "hec-token", &format!("{TOKEN}\n"));
    Setup {
        collector,
        server,
        dir,
        token_file,
    }
}

impl Setup {
    fn sink(&self) -> HttpSinkConfig {
        HttpSinkConfig {
            name: "splunk".into(),
            endpoints: vec![self.server.url()],
            encoding: Encoding::SplunkHec,
            splunk_hec: Box::new(SplunkHecConfig {
                token_file: Some(self.token_file.clone()),
                ack_interval_ms: 50,
                ..SplunkHecConfig::default()
            }),
            retry: RetryConfig {
                initial_backoff_ms: 20,
                max_backoff_secs: 1,
                ..RetryConfig::default()
            },
            ..HttpSinkConfig::default()
        }
    }

    fn ids(&self) -> Vec<String> {
        self.collector
            .lock()
            .unwrap()
            .envelopes
            .iter()
            .map(|e| e["event"]["auditID"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn with_sink(sink: HttpSinkConfig) -> Config {
    let mut c = config();
    c.sinks = vec![SinkConfig::Http(sink)];
    c.shutdown.deadline_secs = 1;
    c
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.get(&format!(r#"audit_forwarder_{name}{{sink="splunk"}}"#))
}

fn error(m: &Metrics, reason: &str) -> f64 {
    m.get(&format!(
        r#"audit_forwarder_error_total{{reason="{reason}",sink="splunk"}}"#
    ))
}

async fn wait_envelopes(s: &Setup, n: usize) {
    eventually(&format!("{n} events indexed"), || {
        let have = s.collector.lock().unwrap().envelopes.len();
        async move { have >= n }
    })
    .await;
}

#[tokio::test]
async fn envelopes_carry_the_event_bytes_its_time_and_the_configured_fields() {
    let s = setup(Collector::default()).await;
    let mut cfg = s.sink();
    cfg.splunk_hec.host = Some("cluster-a-apiserver".into());
    cfg.splunk_hec.source = Some("kube-audit-forwarder".into());
    cfg.splunk_hec.index = Some("k8s_audit".into());
    cfg.splunk_hec.fields = [("cluster".to_owned(), "prod-eu".to_owned())].into();
    let fwd = Forwarder::start(with_sink(cfg)).await;
    // The corpus's own events; the first gets a known stageTimestamp.
    let mut evs = events(52);
    let mut first: Value = serde_json::from_str(&evs[0]).unwrap();
    first["stageTimestamp"] = json!("2024-05-01T10:00:00.123456Z");
    evs[0] = first.to_string();
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    wait_envelopes(&s, evs.len()).await;
    {
        let c = s.collector.lock().unwrap();
        let body = c.bodies.concat();
        for (e, env) in evs.iter().zip(&c.envelopes) {
            // The event's own bytes are the envelope's `event`.
            assert!(
                body.contains(&format!(r#""event":{e}}}"#)),
                "event bytes kept"
            );
            assert_eq!(env["event"], json(e));
            assert_eq!(env["host"], "cluster-a-apiserver");
            assert_eq!(env["source"], "kube-audit-forwarder");
            assert_eq!(env["sourcetype"], "kube:apiserver:audit");
            assert_eq!(env["index"], "k8s_audit");
            assert_eq!(env["fields"], json!({"cluster": "prod-eu"}));
            // Without a stageTimestamp (the corpus's v1beta1 events) Splunk
            // stamps the time it receives the event.
            assert_eq!(
                env.get("time").is_some(),
                json(e).get("stageTimestamp").is_some()
            );
        }
        assert!(
            body.starts_with(r#"{"time":1714557600.123456,"host":"#),
            "{}",
            &body[..80]
        );
    }
    let m = fwd.metrics().await;
    assert_eq!(metric(&m, "events_sent_total"), evs.len() as f64);
    fwd.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_retried_not_dead_lettered_and_a_rewritten_token_file_is_read_again() {
    let s = setup(Collector::default()).await;
    std::fs::write(&s.token_file, "an-old-token\n").unwrap();
    let mut cfg = s.sink();
    cfg.dead_letter_file = Some(s.dir.path().join("dead.ndjson"));
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let evs = events(10);
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    eventually("the token refused a few times", || {
        let n = s.collector.lock().unwrap().unauthorized;
        async move { n >= 3 }
    })
    .await;
    let m = fwd.metrics().await;
    assert_eq!(metric(&m, "events_sent_total"), 0.0);
    assert!(error(&m, "unauthorized") >= 10.0);
    assert_eq!(metric(&m, "events_dead_lettered_total"), 0.0);
    // The secret is updated in place: the next requests carry the new token.
    std::fs::write(&s.token_file, format!("{TOKEN}\n")).unwrap();
    wait_envelopes(&s, 10).await;
    assert_eq!(
        s.ids(),
        (0..10).map(|i| format!("hec-{i}")).collect::<Vec<_>>()
    );
    let m = fwd.metrics().await;
    assert_eq!(metric(&m, "events_sent_total"), 10.0);
    assert!(
        !s.dir.path().join("dead.ndjson").exists()
            || std::fs::read_to_string(s.dir.path().join("dead.ndjson"))
                .unwrap()
                .is_empty()
    );
    fwd.stop().await;
}

#[tokio::test]
async fn a_busy_then_down_collector_mid_load_loses_nothing() {
    let mut s = setup(Collector {
        busy: 3,
        ..Collector::default()
    })
    .await;
    let mut cfg = s.sink();
    cfg.batch.max_events = 40;
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let all = events(600);
    for (i, chunk) in all.chunks(50).enumerate() {
        if i == 3 {
            s.server.stop();
        }
        if i == 8 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            s.server.restart().await;
        }
        assert_eq!(fwd.post(event_list_of(chunk).as_bytes()).await.status, 200);
    }
    wait_envelopes(&s, all.len()).await;
    eventually("all counted", || {
        let fwd = &fwd;
        async move { metric(&fwd.metrics().await, "events_sent_total") == 600.0 }
    })
    .await;
    let got: HashSet<String> = s.ids().into_iter().collect();
    let want: HashSet<String> = (0..600).map(|i| format!("hec-{i}")).collect();
    assert_eq!(got, want, "every event arrived");
    let m = fwd.metrics().await;
    assert!(
        error(&m, "http_5xx") >= 3.0,
        "server busy (503, code 9) retried"
    );
    assert_eq!(metric(&m, "events_dead_lettered_total"), 0.0);
    fwd.stop().await;
}

#[tokio::test]
async fn invalid_data_dead_letters_exactly_the_refused_events() {
    let s = setup(Collector {
        refuse_containing: Some("x-test-invalid".into()),
        ..Collector::default()
    })
    .await;
    let dead = s.dir.path().join("dead.ndjson");
    let mut cfg = s.sink();
    cfg.dead_letter_file = Some(dead.clone());
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let mut evs = events(10);
    for i in [3, 8] {
        let mut v: Value = serde_json::from_str(&evs[i]).unwrap();
        v["x-test-invalid"] = json!(true);
        evs[i] = v.to_string();
    }
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    eventually("2 dead-lettered", || {
        let n = std::fs::read_to_string(&dead)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        async move { n == 2 }
    })
    .await;
    wait_envelopes(&s, 8).await;
    let mut got = s.ids();
    got.sort();
    let mut want: Vec<String> = [0, 1, 2, 4, 5, 6, 7, 9]
        .map(|i| format!("hec-{i}"))
        .to_vec();
    want.sort();
    assert_eq!(got, want);
    let dead_lines: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        dead_lines,
        [evs[3].clone(), evs[8].clone()],
        "the refused events' own bytes"
    );
    let m = fwd.metrics().await;
    assert_eq!(metric(&m, "events_sent_total"), 8.0);
    assert_eq!(metric(&m, "events_dead_lettered_total"), 2.0);
    fwd.stop().await;
}

#[tokio::test]
async fn with_acknowledgement_an_event_counts_as_sent_only_once_acknowledged() {
    let s = setup(Collector {
        ack: true,
        hold_acks: true,
        ..Collector::default()
    })
    .await;
    let mut cfg = s.sink();
    cfg.splunk_hec.ack = true;
    cfg.splunk_hec.channel = Some("2f1c9d52-4b0e-4d7a-9a63-1e5b8c0f7d24".into());
    // Three requests of two events, all awaiting their acknowledgement at once.
    cfg.batch.max_events = 2;
    cfg.max_in_flight = 3;
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let evs = events(6);
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    wait_envelopes(&s, 6).await;
    // Received, not yet acknowledged: not sent.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(metric(&fwd.metrics().await, "events_sent_total"), 0.0);
    s.collector.lock().unwrap().hold_acks = false;
    eventually("sent once acknowledged", || {
        let fwd = &fwd;
        async move { metric(&fwd.metrics().await, "events_sent_total") == 6.0 }
    })
    .await;
    {
        let c = s.collector.lock().unwrap();
        assert_eq!(c.envelopes.len(), 6, "sent once");
        assert_eq!(
            c.channels,
            HashSet::from(["2f1c9d52-4b0e-4d7a-9a63-1e5b8c0f7d24".to_owned()])
        );
    }
    fwd.stop().await;
}

#[tokio::test]
async fn an_acknowledgement_that_never_comes_sends_the_events_again() {
    let s = setup(Collector {
        ack: true,
        lose_acks: 1,
        ..Collector::default()
    })
    .await;
    let mut cfg = s.sink();
    cfg.splunk_hec.ack = true;
    cfg.splunk_hec.ack_timeout_secs = 1;
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let evs = events(5);
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    eventually("sent after the second try", || {
        let fwd = &fwd;
        async move { metric(&fwd.metrics().await, "events_sent_total") == 5.0 }
    })
    .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for id in s.ids() {
        *per_id.entry(id).or_default() += 1;
    }
    // HEC has no idempotency key: the unconfirmed copy stays (at least once).
    assert_eq!(per_id.len(), 5);
    assert!(per_id.values().all(|&n| n == 2), "{per_id:?}");
    let m = fwd.metrics().await;
    assert_eq!(error(&m, "ack_timeout"), 5.0);
    assert_eq!(
        s.collector.lock().unwrap().channels.len(),
        1,
        "one generated channel"
    );
    fwd.stop().await;
}
