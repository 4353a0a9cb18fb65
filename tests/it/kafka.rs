//! The `kafka` sink against librdkafka's mock cluster (`rdkafka::mocking`):
//! brokers in this process that speak the Kafka protocol on loopback ports,
//! with topics, partitions, idempotent producing, and brokers that can be
//! taken down and brought back. The messages are read back with a real
//! consumer.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube_audit_forwarder::config::{Config, KafkaSinkConfig, QueueConfig, SinkConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::harness::*;

const TOPIC: &str = "audit";
const PARTITIONS: i32 = 3;

/// A mock cluster of `brokers` brokers with the topic [`TOPIC`].
fn cluster(brokers: i32) -> MockCluster<'static, DefaultProducerContext> {
    let c = MockCluster::new(brokers).expect("mock cluster");
    c.create_topic(TOPIC, PARTITIONS, brokers).expect("topic");
    c
}

/// A forwarder whose only sink is a `kafka` sink to `bootstrap`, set up by `f`.
fn kafka_config(bootstrap: &str, f: impl FnOnce(&mut KafkaSinkConfig)) -> Config {
    let mut c = config();
    let mut k = KafkaSinkConfig {
        endpoints: bootstrap.split(',').map(str::to_owned).collect(),
        topic: TOPIC.to_owned(),
        linger_ms: 2,
        ..KafkaSinkConfig::default()
    };
    f(&mut k);
    c.sinks = vec![SinkConfig::Kafka(Box::new(k))];
    c
}

/// One message as a consumer reads it.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// Reads [`TOPIC`] from the start until `n` messages arrived (or the
/// patience ran out), then a little longer for any extra ones.
async fn consume(bootstrap: &str, n: usize) -> Vec<Received> {
    consume_topic(bootstrap, TOPIC, PARTITIONS, n).await
}

/// [`consume`] for any topic.
async fn consume_topic(bootstrap: &str, topic: &str, partitions: i32, n: usize) -> Vec<Received> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE * 2;
        let mut extra_until = None;
        loop {
            let now = std::time::Instant::now();
            if now > deadline || extra_until.is_some_and(|t| now > t) {
                break;
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => got.push(Received {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
            if got.len() >= n && extra_until.is_none() {
                extra_until = Some(std::time::Instant::now() + Duration::from_millis(500));
            }
        }
        got
    })
    .await
    .unwrap()
}

/// The events of the audit2rbac demo log, one compact JSON text each.
fn demo_events() -> Vec<String> {
    String::from_utf8(read("corpus/liggitt-audit2rbac/demo.log"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn audit_id_of(event: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(event).unwrap()["auditID"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_their_own_bytes_keyed_by_audit_id_in_order_per_partition() {
    let cluster = cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let fwd = Forwarder::start(kafka_config(&bootstrap, |_| {})).await;
    let events = demo_events();
    // Two webhook batches, as the API server would post them.
    let (a, b) = events.split_at(events.len() / 2);
    for half in [a, b] {
        assert_eq!(fwd.post(event_list_of(half).as_bytes()).await.status, 200);
    }
    let got = consume(&bootstrap, events.len()).await;
    assert_eq!(got.len(), events.len(), "one message per event");
    // Each message is one posted event, byte for byte, keyed by its auditID.
    let mut position: HashMap<&[u8], usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        position.insert(e.as_bytes(), i);
    }
    let mut per_partition: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for m in &got {
        let i = *position
            .get(m.value.as_slice())
            .unwrap_or_else(|| panic!("not a posted event: {}", String::from_utf8_lossy(&m.value)));
        assert_eq!(
            m.key.as_deref(),
            Some(audit_id_of(&m.value).as_bytes()),
            "key"
        );
        per_partition.entry(m.partition).or_default().push(i);
    }
    // Within a partition, the order the events were posted in.
    for (p, order) in &per_partition {
        assert!(order.is_sorted(), "partition {p} out of order: {order:?}");
    }
    let mut all: Vec<usize> = per_partition.into_values().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..events.len()).collect::<Vec<_>>());
    eventually("sent counted", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_sent_total{sink="kafka"}"#)
            == events.len() as f64
    })
    .await;
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_load_back_pressures_and_loses_nothing() {
    let cluster = cluster(1);
    let bootstrap = cluster.bootstrap_servers();
    let mut cfg = kafka_config(&bootstrap, |k| {
        k.max_in_flight_events = 200;
        k.delivery_timeout_secs = 2;
        k.queue = QueueConfig {
            capacity_events: 1000,
            ..QueueConfig::default()
        };
    });
    cfg.pipeline.expected_batch_events = 100;
    let fwd = Forwarder::start(cfg).await;
    const BATCHES: u64 = 40;
    const PER_BATCH: u64 = 100;
    let mut refused = 0;
    let started = tokio::time::Instant::now();
    let mut down_at = None;
    for n in 0..BATCHES {
        if n == 10 {
            cluster.broker_down(1).unwrap();
            down_at = Some(tokio::time::Instant::now());
        }
        let body = list(n * PER_BATCH..(n + 1) * PER_BATCH);
        // Like the API server: a refused batch is posted again.
        loop {
            let status = fwd.post(body.as_bytes()).await.status;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            refused += 1;
            // Down long enough for messages to time out and be produced again.
            if down_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
                cluster.broker_up(1).unwrap();
                down_at = None;
            }
            assert!(started.elapsed() < PATIENCE * 2, "still refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(refused > 0, "the outage back-pressured the webhook");
    let total = (BATCHES * PER_BATCH) as usize;
    let got = consume(&bootstrap, total).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &got {
        *seen.entry(audit_id_of(&m.value)).or_default() += 1;
    }
    for i in 0..BATCHES * PER_BATCH {
        assert!(seen.contains_key(&case_id(i)), "event {i} lost");
    }
    let duplicates = got.len() - seen.len();
    let m = fwd.metrics().await;
    assert_eq!(
        m.get(r#"audit_forwarder_events_sent_total{sink="kafka"}"#),
        total as f64
    );
    assert!(m.get(r#"audit_forwarder_retries_total{sink="kafka"}"#) > 0.0);
    assert!(m.get(r#"audit_forwarder_error_total{reason="timeout",sink="kafka"}"#) > 0.0);
    assert_eq!(duplicates, 0, "the idempotent producer made duplicates");
    fwd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_dead_lettered_alone() {
    let cluster = cluster(1);
    // One partition: a webhook batch goes to the broker in one produce request.
    cluster.create_topic("audit-one", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let fwd = Forwarder::start(kafka_config(&bootstrap, |k| {
        k.topic = "audit-one".to_owned();
        k.message_max_bytes = 2000;
        k.dead_letter_file = Some(dead.clone());
    }))
    .await;
    let sent = || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_events_sent_total{sink="kafka"}"#)
    };
    // Larger than message_max_bytes: refused before it is sent.
    let big = "x".repeat(3000);
    let items: Vec<String> = (0..20)
        .map(|i| {
            let pad = if i == 3 || i == 11 { big.as_str() } else { "" };
            format!(
                r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","verb":"get","pad":"{pad}"}}"#,
                case_id(i)
            )
        })
        .collect();
    assert_eq!(fwd.post(event_list_of(&items).as_bytes()).await.status, 200);
    eventually("the first batch sent", || async { sent().await == 18.0 }).await;
    // Refused by the broker: its next produce request (the whole second
    // batch) and the one after it (the first of that batch's events, tried
    // alone) are answered MESSAGE_TOO_LARGE. Only that event is refused alone.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let more: Vec<String> = (100..110)
        .map(|i| {
            format!(
                r#"{{"level":"Metadata","auditID":"{}","stage":"ResponseComplete","verb":"list"}}"#,
                case_id(i)
            )
        })
        .collect();
    assert_eq!(fwd.post(event_list_of(&more).as_bytes()).await.status, 200);
    eventually("the second batch sent", || async { sent().await == 27.0 }).await;
    let got = consume_topic(&bootstrap, "audit-one", 1, 27).await;
    let mut ids: Vec<String> = got.iter().map(|m| audit_id_of(&m.value)).collect();
    ids.sort();
    let mut want: Vec<String> = (0..20)
        .filter(|&i| i != 3 && i != 11)
        .chain(101..110)
        .map(case_id)
        .collect();
    want.sort();
    assert_eq!(ids, want);
    let written = std::fs::read_to_string(&dead).unwrap();
    assert_eq!(
        written,
        format!("{}\n{}\n{}\n", items[3], items[11], more[0])
    );
    let m = fwd.metrics().await;
    for (series, want) in [
        (
            r#"audit_forwarder_events_dead_lettered_total{sink="kafka"}"#,
            3.0,
        ),
        (
            r#"audit_forwarder_error_total{reason="refused",sink="kafka"}"#,
            3.0,
        ),
        (r#"audit_forwarder_events_sent_total{sink="kafka"}"#, 27.0),
    ] {
        assert_eq!(m.get(series), want, "{series}");
    }
    fwd.stop().await;
}

#[tokio::test]
async fn tls_and_sasl_files_are_loaded_at_start_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::Ca::new("kafka test CA");
    let client = ca.client("audit-forwarder", None);
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (ca_file, crt, key) = (
        path("ca.crt", &ca.pem),
        path("tls.crt", &client.crt),
        path("tls.key", &client.key),
    );
    let password = path("password", "s3cret\n");
    let cfg = |password_file: std::path::PathBuf| {
        kafka_config("127.0.0.1:1", |k| {
            k.tls.enabled = true;
            k.tls.ca_file = Some(ca_file.clone());
            k.tls.crt_file = Some(crt.clone());
            k.tls.key_file = Some(key.clone());
            k.sasl = Some(kube_audit_forwarder::config::SaslConfig {
                mechanism: kube_audit_forwarder::config::SaslMechanism::ScramSha512,
                username: "audit-forwarder".to_owned(),
                password_file,
            });
        })
    };
    // librdkafka takes the files (it loads them when the producer is made);
    // the brokers are tried in the background, and what they never
    // acknowledged is reported undelivered at shutdown.
    let mut started = cfg(password.clone());
    started.shutdown.deadline_secs = 1;
    let fwd = Forwarder::start(started).await;
    assert_eq!(fwd.post(list(0..3).as_bytes()).await.status, 200);
    let report = fwd.stop().await;
    assert_eq!(report.unfinished_sinks, vec!["kafka".to_owned()]);
    assert_eq!(report.undelivered_events, 3);
    let missing = dir.path().join("no-password");
    let err = kube_audit_forwarder::app::App::new(cfg(missing.clone()))
        .start()
        .await
        .err()
        .expect("start fails");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("sasl.password_file") && msg.contains(&missing.display().to_string()),
        "{msg}"
    );
}
