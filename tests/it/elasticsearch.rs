//! The `http` sink with `encoding: elasticsearch` against a test server that
//! follows Elasticsearch's documented `_bulk` protocol (Elasticsearch cannot
//! be installed from this machine's package registries). Sources:
//!
//! - Bulk API (<https://www.elastic.co/docs/api/doc/elasticsearch/operation/operation-bulk>):
//!   NDJSON action/source line pairs, `Content-Type: application/x-ndjson`;
//!   the answer is 200 with `"errors": true` when any item failed, and
//!   `items` holds one `{"create": {"_index", "_id", "status", "error"}}` per
//!   action in request order.
//! - `create` fails with 409 `version_conflict_engine_exception` when a
//!   document with that `_id` already exists (same page, "create" action;
//!   Index API, `op_type=create`).
//! - Per-item 429 `es_rejected_execution_exception` when the write thread
//!   pool's queue is full (Elasticsearch reference, "Thread pools";
//!   "Fix common cluster issues", rejected requests).
//! - A mapping error is a per-item 400 `document_parsing_exception`
//!   (`mapper_parsing_exception` before 8.x).
//! - A request without valid credentials is 401 `security_exception`
//!   (Security, "User authentication"); `Authorization: ApiKey <encoded>`
//!   per the create API key API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube_audit_forwarder::config::{
    ClientTlsConfig, Compression, Config, ElasticsearchConfig, Encoding, HttpSinkConfig,
    RetryConfig, SinkConfig,
};
use serde_json::{Value, json};

use crate::corpus::corpus_values;
use crate::harness::*;
use crate::protocol_server::{ProtocolServer, Req};

/// What the test cluster holds and how it misbehaves.
#[derive(Default)]
struct Cluster {
    /// Documents by `(_index, _id)`: their source bytes.
    docs: HashMap<(String, String), String>,
    /// Every `create` answered 201, and every one answered 409.
    created: usize,
    conflicts: usize,
    /// The next items to answer 429, whatever they are.
    throttle_items: usize,
    /// The next items to answer 403 (the key lacks the index privilege).
    forbid_items: usize,
    /// Sources containing this text get a 400 mapping error.
    refuse_containing: Option<String>,
    /// The `Authorization` value required, when set.
    authorization: Option<String>,
    bulk_requests: usize,
}

fn protocol(cluster: Arc<Mutex<Cluster>>) -> crate::protocol_server::Protocol {
    Arc::new(move |req: Req| {
        let mut c = cluster.lock().unwrap();
        if let Some(want) = &c.authorization
            && req.header("authorization") != Some(want)
        {
            return (
                401,
                json!({"error": {"type": "security_exception",
                    "reason": "unable to authenticate user for REST request [/_bulk]"}, "status": 401}),
            );
        }
        if req.method != http::Method::POST || req.path != "/_bulk" {
            return (404, json!({"error": "no handler", "status": 404}));
        }
        assert_eq!(req.header("content-type"), Some("application/x-ndjson"));
        // What the forwarder reads of each item; the answer below is the full
        // one, which holds these and more.
        assert_eq!(
            req.query,
            "filter_path=items.*.status,items.*.error.type,items.*.error.reason"
        );
        c.bulk_requests += 1;
        let text = String::from_utf8(req.body).unwrap();
        assert!(
            text.ends_with('\n'),
            "the final line must end with a newline"
        );
        let lines: Vec<&str> = text.lines().collect();
        let mut items = Vec::new();
        let mut errors = false;
        for pair in lines.chunks(2) {
            let action: Value = serde_json::from_str(pair[0]).unwrap();
            let meta = &action["create"];
            let index = meta["_index"].as_str().expect("a create action").to_owned();
            let id = meta["_id"].as_str().expect("an _id").to_owned();
            let source = pair[1].to_owned();
            let stored_before = c.docs.contains_key(&(index.clone(), id.clone()));
            let (status, error) = if c.throttle_items > 0 {
                c.throttle_items -= 1;
                (
                    429,
                    Some((
                        "es_rejected_execution_exception",
                        "rejected execution of coordinating operation",
                    )),
                )
            } else if c.forbid_items > 0 {
                c.forbid_items -= 1;
                (
                    403,
                    Some((
                        "security_exception",
                        "action [indices:data/write/bulk[s]] is unauthorized for API key",
                    )),
                )
            } else if c
                .refuse_containing
                .as_ref()
                .is_some_and(|t| source.contains(t.as_str()))
            {
                (
                    400,
                    Some((
                        "document_parsing_exception",
                        "[1:2] failed to parse field [x-test-mapping] of type [long]",
                    )),
                )
            } else if stored_before {
                c.conflicts += 1;
                (
                    409,
                    Some((
                        "version_conflict_engine_exception",
                        "document already exists",
                    )),
                )
            } else {
                c.docs.insert((index.clone(), id.clone()), source);
                c.created += 1;
                (201, None)
            };
            errors |= status >= 300;
            let mut item = json!({"_index": index, "_id": id, "status": status});
            match error {
                Some((kind, reason)) => item["error"] = json!({"type": kind, "reason": reason}),
                None => {
                    item["result"] = json!("created");
                    item["_version"] = json!(1);
                }
            }
            items.push(json!({ "create": item }));
        }
        (200, json!({"took": 2, "errors": errors, "items": items}))
    })
}

/// `n` corpus events (cycled) with unique auditIDs `es-<round>-<i>`.
fn events(round: usize, n: usize) -> Vec<String> {
    let corpus = corpus_values();
    (0..n)
        .map(|i| {
            let mut e = corpus[i % corpus.len()].clone();
            e["auditID"] = json!(format!("es-{round}-{i}"));
            e.to_string()
        })
        .collect()
}

/// The `_id` an event must be stored under, and the date parts
/// `[year, month, day]` of its `stageTimestamp` (none for the old events of
/// the corpus that have only `timestamp`: they go to today's index).
fn place(event: &str) -> (String, Option<[String; 3]>) {
    let v: Value = serde_json::from_str(event).unwrap();
    let id = format!(
        "{}-{}",
        v["auditID"].as_str().unwrap(),
        v["stage"].as_str().unwrap()
    );
    let date = v["stageTimestamp"].as_str().map(|ts| {
        [
            ts[0..4].to_owned(),
            ts[5..7].to_owned(),
            ts[8..10].to_owned(),
        ]
    });
    (id, date)
}

/// Where `event` is stored: its index and source, found by its `_id`;
/// checks that the index is `prefix` and the date `index_of` makes of it.
fn stored<'a>(
    c: &'a Cluster,
    event: &str,
    index_of: impl Fn(&[String; 3]) -> String,
) -> Option<&'a str> {
    let (id, date) = place(event);
    let mut found = c.docs.iter().filter(|((_, i), _)| *i == id);
    let ((index, _), source) = found.next()?;
    assert!(found.next().is_none(), "{id} stored twice");
    match date {
        Some(d) => assert_eq!(*index, index_of(&d), "{id}"),
        None => assert_eq!(
            index.len(),
            index_of(&["2000".into(), "01".into(), "01".into()]).len()
        ),
    }
    Some(source)
}

fn daily(d: &[String; 3]) -> String {
    format!("kube-audit-{}.{}.{}", d[0], d[1], d[2])
}

fn sink(url: &str) -> HttpSinkConfig {
    HttpSinkConfig {
        name: "es".into(),
        endpoints: vec![url.to_owned()],
        encoding: Encoding::Elasticsearch,
        retry: RetryConfig {
            initial_backoff_ms: 20,
            max_backoff_secs: 1,
            ..RetryConfig::default()
        },
        ..HttpSinkConfig::default()
    }
}

fn with_sink(sink: HttpSinkConfig) -> Config {
    let mut c = config();
    c.sinks = vec![SinkConfig::Http(sink)];
    c.shutdown.deadline_secs = 1;
    c
}

fn metric(m: &Metrics, name: &str) -> f64 {
    m.get(&format!(r#"audit_forwarder_{name}{{sink="es"}}"#))
}

#[tokio::test]
async fn every_bulk_item_is_read_429_retried_mapping_errors_dead_lettered_over_mtls() {
    let pki = crate::pki::pki();
    let cluster = Arc::new(Mutex::new(Cluster {
        throttle_items: 4,
        refuse_containing: Some("x-test-mapping".into()),
        authorization: Some(
            "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==".into(),
        ),
        ..Cluster::default()
    }));
    let server = ProtocolServer::start_tls(protocol(cluster.clone()), pki.acceptor()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = crate::pki::write(
        dir.path(),
        "api-key",
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==\n",
    );
    let dead = dir.path().join("dead.ndjson");
    let mut cfg = sink(&format!("https://localhost:{}", server.addr.port()));
    cfg.elasticsearch = Box::new(ElasticsearchConfig {
        api_key_file: Some(key),
        ..ElasticsearchConfig::default()
    });
    cfg.tls = ClientTlsConfig {
        ca_file: Some(pki.ca.clone()),
        crt_file: Some(pki.client_crt.clone()),
        key_file: Some(pki.client_key.clone()),
        ..ClientTlsConfig::default()
    };
    cfg.dead_letter_file = Some(dead.clone());
    let fwd = Forwarder::start(with_sink(cfg)).await;
    // 12 events; the 3rd, 7th and 11th have a field the index mapping refuses.
    let mut evs = events(0, 12);
    for i in [2, 6, 10] {
        let mut v: Value = serde_json::from_str(&evs[i]).unwrap();
        v["x-test-mapping"] = json!("not a number");
        evs[i] = v.to_string();
    }
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    eventually("9 stored, 3 dead-lettered", || {
        let stored = cluster.lock().unwrap().docs.len();
        let dead = std::fs::read_to_string(&dead)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        async move { stored == 9 && dead == 3 }
    })
    .await;
    // Each stored document is the event's own bytes, under the index of its
    // stageTimestamp's date and the _id of its (auditID, stage).
    {
        let c = cluster.lock().unwrap();
        for (i, e) in evs.iter().enumerate() {
            let stored = stored(&c, e, daily);
            if [2, 6, 10].contains(&i) {
                assert!(stored.is_none(), "refused event {i} stored");
            } else {
                assert_eq!(stored, Some(e.as_str()), "event {i}");
            }
        }
        assert!(c.bulk_requests >= 2, "the throttled items went again");
    }
    let mut dead_ids: Vec<String> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| json(l)["auditID"].as_str().unwrap().to_owned())
        .collect();
    // The 3rd was throttled first: dead-lettered on its second round.
    dead_ids.sort();
    assert_eq!(dead_ids, ["es-0-10", "es-0-2", "es-0-6"]);
    let m = fwd.metrics().await;
    assert_eq!(metric(&m, "events_sent_total"), 9.0);
    assert_eq!(metric(&m, "events_dead_lettered_total"), 3.0);
    assert!(m.get(r#"audit_forwarder_error_total{reason="http_4xx",sink="es"}"#) >= 7.0);
    fwd.stop().await;
}

#[tokio::test]
async fn a_re_sent_batch_makes_no_duplicate() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let server = ProtocolServer::start(protocol(cluster.clone())).await;
    let fwd = Forwarder::start(with_sink(sink(&server.url()))).await;
    let evs = events(0, 73);
    let body = event_list_of(&evs);
    // The API server re-sends a whole batch when it saw no answer.
    for _ in 0..2 {
        assert_eq!(fwd.post(body.as_bytes()).await.status, 200);
    }
    eventually("both copies answered", || {
        let c = cluster.lock().unwrap();
        let done = c.created + c.conflicts == 146;
        async move { done }
    })
    .await;
    {
        let c = cluster.lock().unwrap();
        assert_eq!((c.docs.len(), c.created, c.conflicts), (73, 73, 73));
        for e in &evs {
            assert_eq!(stored(&c, e, daily), Some(e.as_str()));
        }
    }
    let m = fwd.metrics().await;
    // A 409 on create means already stored: delivered, not dead-lettered.
    assert_eq!(metric(&m, "events_sent_total"), 146.0);
    assert_eq!(metric(&m, "events_dead_lettered_total"), 0.0);
    fwd.stop().await;
}

#[tokio::test]
async fn an_outage_mid_load_loses_nothing_gzip_and_basic_auth() {
    let cluster = Arc::new(Mutex::new(Cluster {
        // elastic:changeme
        authorization: Some("Basic ZWxhc3RpYzpjaGFuZ2VtZQ==".into()),
        ..Cluster::default()
    }));
    let mut server = ProtocolServer::start(protocol(cluster.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let password = crate::pki::write(dir.path(), "password", "changeme\n");
    let mut cfg = sink(&server.url());
    cfg.compression = Compression::Gzip;
    cfg.batch.max_events = 50;
    cfg.elasticsearch = Box::new(ElasticsearchConfig {
        index: "audit-%Y".into(),
        username: Some("elastic".into()),
        password_file: Some(password),
        ..ElasticsearchConfig::default()
    });
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let rounds = 20;
    let mut all = Vec::new();
    for round in 0..rounds {
        if round == 5 {
            server.stop();
        }
        if round == 12 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.restart().await;
        }
        let evs = events(round, 73);
        assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
        all.extend(evs);
    }
    let total = all.len();
    eventually("every event stored", || {
        let n = cluster.lock().unwrap().docs.len();
        async move { n == total }
    })
    .await;
    {
        let c = cluster.lock().unwrap();
        assert_eq!(c.created, all.len(), "one document per (auditID, stage)");
        for e in &all {
            let yearly = |d: &[String; 3]| format!("audit-{}", d[0]);
            assert_eq!(stored(&c, e, yearly), Some(e.as_str()));
        }
    }
    let m = fwd.metrics().await;
    assert!(metric(&m, "events_sent_total") >= all.len() as f64);
    assert!(metric(&m, "retries_total") >= 1.0);
    assert_eq!(metric(&m, "events_dead_lettered_total"), 0.0);
    fwd.stop().await;
}

#[tokio::test]
async fn items_refused_for_the_credentials_are_retried_as_unauthorized_not_dead_lettered() {
    let cluster = Arc::new(Mutex::new(Cluster {
        forbid_items: 3,
        ..Cluster::default()
    }));
    let server = ProtocolServer::start(protocol(cluster.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = sink(&server.url());
    cfg.dead_letter_file = Some(dir.path().join("dead.ndjson"));
    let fwd = Forwarder::start(with_sink(cfg)).await;
    let evs = events(0, 5);
    assert_eq!(fwd.post(event_list_of(&evs).as_bytes()).await.status, 200);
    eventually("all stored once the privilege is granted", || {
        let n = cluster.lock().unwrap().docs.len();
        async move { n == 5 }
    })
    .await;
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_error_total{reason="unauthorized",sink="es"}"#),
        3.0
    );
    assert_eq!(metric(&m, "events_dead_lettered_total"), 0.0);
    fwd.stop().await;
}
