//! The `kafka` sink: each event becomes one Kafka message whose value is the
//! event's own bytes, produced through librdkafka (the `rdkafka` crate).
//!
//! Delivery accounting follows the broker, not the producer's queue:
//! - every message's delivery report is awaited; a batch counts as sent, and
//!   gives its room in the queue back, only once the broker has
//!   acknowledged each of its events (`acks=all` by default, with the
//!   idempotent producer so that librdkafka's own retries make no duplicates
//!   and keep each partition's order);
//! - at most `max_in_flight_events` are handed to the producer and not yet
//!   acknowledged; past that the sink takes no batch from its queue, which
//!   then fills and answers the API server 503 (back-pressure);
//! - a message whose delivery failed (the brokers unreachable for
//!   `delivery_timeout_secs`, a producer error) is produced again, counted in
//!   `audit_forwarder_retries_total`: at least once, never at most once;
//! - a message librdkafka refuses before sending (larger than
//!   `message_max_bytes`) is dead-lettered; when the broker refuses a request
//!   for its content (message too large, invalid record) the messages of
//!   that request are produced again one per request, and only those the
//!   broker refuses alone are dead-lettered.
//!
//! librdkafka reads its TLS and SASL files when a producer is created: when
//! one of them changes, the sink lets what is in flight settle and creates
//! its producer again.

mod client;
mod route;

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Instant;

use self::client::{Files, Producer, Role};
use self::route::{Key, Topic};
use super::deadletter::DeadLetter;
use super::retry::Backoff;
use crate::config::KafkaSinkConfig;
use crate::metrics::SinkMetrics;
use crate::pipeline::{Delivery, QueueReader};
use crate::ratelimit::RateLimit;
use crate::tls::OutboundTls;

/// How often the TLS and SASL files are checked for changes.
const FILES_CHECK: Duration = Duration::from_secs(10);
/// Least time between two "producing again" log lines.
const RETRY_LOG_PERIOD: Duration = Duration::from_secs(10);
/// Pause before handing a message again to a producer whose queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// The `reason`s counted in `audit_forwarder_error_total`: `timeout` (no
/// acknowledgement within `delivery_timeout_secs`), `broker` (another
/// delivery failure), `refused` (dead-lettered), `dead_letter_write`.
const ERROR_REASONS: &[&str] = &["timeout", "broker", "refused", "dead_letter_write"];

/// A built Kafka sink.
pub struct KafkaSink {
    cfg: Box<KafkaSinkConfig>,
    producer: Producer,
    /// Created when first needed.
    solo: Option<Producer>,
    topic: Topic,
    key: Key,
    tls: Option<OutboundTls>,
    files: Files,
    dead_letter: Option<DeadLetter>,
    backoff: Backoff,
    metrics: SinkMetrics,
    /// One "producing again" line per period during an outage.
    retry_log: RateLimit,
}

/// A batch handed to the producer, waiting for its delivery reports.
struct InFlight {
    delivery: Delivery,
    /// Index of the event in the batch, and its report.
    pending: Vec<(usize, DeliveryFuture)>,
    /// Reports of `pending` received so far.
    settled: usize,
    /// Events to produce again, with the reason.
    failed: Vec<(usize, &'static str)>,
    /// Events the broker refused in a request with others.
    suspect: Vec<usize>,
    /// Events refused for good, to dead-letter.
    refused: Vec<usize>,
    /// Events dead-lettered.
    dead: Vec<usize>,
    started: Instant,
}

impl InFlight {
    fn new(delivery: Delivery) -> Self {
        Self {
            delivery,
            pending: Vec::new(),
            settled: 0,
            failed: Vec::new(),
            suspect: Vec::new(),
            refused: Vec::new(),
            dead: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Events not yet settled, for the in-flight bound.
    fn open_events(&self) -> usize {
        self.pending.len() - self.settled
    }

    /// Waits for every pending report, recording each as it comes, so that
    /// this can be cancelled and called again without losing one.
    async fn settle(&mut self) {
        while let Some((index, report)) = self.pending.get_mut(self.settled) {
            let index = *index;
            match report.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => match classify(&e) {
                    Failure::Refused => self.suspect.push(index),
                    Failure::Retry(reason) => self.failed.push((index, reason)),
                },
                Err(_canceled) => self.failed.push((index, "broker")),
            }
            self.settled += 1;
        }
    }
}

/// What a failed delivery means.
enum Failure {
    /// The broker refused the message (or its request) for its content.
    Refused,
    /// Anything else: try again.
    Retry(&'static str),
}

fn classify(e: &KafkaError) -> Failure {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge,
        ) => Failure::Refused,
        Some(RDKafkaErrorCode::MessageTimedOut) => Failure::Retry("timeout"),
        _ => Failure::Retry("broker"),
    }
}

impl KafkaSink {
    /// Builds the sink: checks the TLS files, reads the SASL password,
    /// opens the dead-letter file and creates the producer (which connects
    /// in the background).
    ///
    /// # Errors
    ///
    /// A message naming the key and file at fault.
    pub fn build(cfg: &KafkaSinkConfig, metrics: SinkMetrics) -> anyhow::Result<Self> {
        let tls = if cfg.tls.enabled {
            Some(OutboundTls::load(&cfg.tls)?)
        } else {
            None
        };
        let dead_letter = DeadLetter::configured(cfg.dead_letter_file.as_ref())?;
        Ok(Self {
            producer: client::producer(cfg, Role::Main, &metrics)?,
            solo: None,
            topic: Topic::new(&cfg.topic, &cfg.topic_field_missing),
            key: Key::new(cfg.key),
            tls,
            files: Files::of(cfg),
            dead_letter,
            backoff: Backoff::new(
                Duration::from_millis(cfg.retry.initial_backoff_ms),
                Duration::from_secs(cfg.retry.max_backoff_secs),
            ),
            metrics,
            retry_log: RateLimit::new(RETRY_LOG_PERIOD),
            cfg: Box::new(cfg.clone()),
        })
    }

    /// Its TLS client settings, when `tls.enabled` (for certificate expiry
    /// metrics; librdkafka reads the files itself).
    pub fn tls(&self) -> Option<&OutboundTls> {
        self.tls.as_ref()
    }

    /// The `reason`s this sink counts in `audit_forwarder_error_total` and
    /// `audit_forwarder_connection_errors_total`.
    pub fn reasons() -> (&'static [&'static str], &'static [&'static str]) {
        (ERROR_REASONS, client::CONNECTION_REASONS)
    }

    /// Delivers every batch of `input` until it is closed and drained.
    pub async fn run(mut self, mut input: QueueReader) {
        let mut flying: VecDeque<InFlight> = VecDeque::new();
        let mut closed = false;
        let mut files_due = Instant::now() + FILES_CHECK;
        let mut remake = false;
        loop {
            if flying.is_empty() {
                if closed {
                    return;
                }
                if remake {
                    self.remake().await;
                    remake = false;
                }
            }
            let open: usize = flying.iter().map(InFlight::open_events).sum();
            let room =
                !closed && !remake && (flying.is_empty() || open < self.cfg.max_in_flight_events);
            let watching = !self.files.is_empty() && !remake;
            tokio::select! {
                biased;
                () = async { flying.front_mut().expect("not empty").settle().await },
                    if !flying.is_empty() =>
                {
                    let done = flying.pop_front().expect("not empty");
                    if let Some(again) = self.finish(done).await {
                        flying.push_back(again);
                    }
                }
                next = input.recv(), if room => match next {
                    None => closed = true,
                    Some(delivery) => {
                        let mut f = InFlight::new(delivery);
                        let all = 0..f.delivery.batch.events.len();
                        self.produce(&mut f, all).await;
                        flying.push_back(f);
                    }
                },
                () = tokio::time::sleep_until(files_due), if watching => {
                    files_due = Instant::now() + FILES_CHECK;
                    remake = Files::of(&self.cfg) != self.files;
                }
            }
        }
    }

    /// Hands the events `indices` of `f`'s batch to the producer.
    async fn produce(&self, f: &mut InFlight, indices: impl IntoIterator<Item = usize>) {
        let batch = f.delivery.batch.clone();
        let mut topic = String::new();
        let fixed = self.topic.fixed();
        for i in indices {
            let event = &batch.events[i];
            if fixed.is_none() {
                self.topic.render(event, &batch.body, &mut topic);
            }
            let key = self.key.of(event, &batch.body);
            loop {
                let mut record =
                    FutureRecord::to(fixed.unwrap_or(&topic)).payload(event.raw.as_ref());
                if let Some(k) = key {
                    record = record.key(k);
                }
                match self.producer.send_result(record) {
                    Ok(report) => f.pending.push((i, report)),
                    Err((e, _)) => match e.rdkafka_error_code() {
                        Some(RDKafkaErrorCode::QueueFull) => {
                            tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                            continue;
                        }
                        Some(
                            RDKafkaErrorCode::MessageSizeTooLarge
                            | RDKafkaErrorCode::InvalidMessageSize,
                        ) => f.refused.push(i),
                        _ => {
                            tracing::debug!(sink = %self.cfg.name, error = %e, "producer refused a message; it will be produced again");
                            f.failed.push((i, "broker"));
                        }
                    },
                }
                break;
            }
        }
    }

    /// Settles a batch whose reports are all in: checks the events the broker
    /// refused with others one by one, dead-letters what is refused for good,
    /// and returns the batch produced again when some events failed;
    /// otherwise counts it sent and releases it.
    async fn finish(&mut self, mut f: InFlight) -> Option<InFlight> {
        if !f.suspect.is_empty() {
            self.check_alone(&mut f).await;
        }
        if !f.refused.is_empty() {
            self.dead_letter(&f).await;
            let refused = std::mem::take(&mut f.refused);
            f.dead.extend(refused);
        }
        let batch = f.delivery.batch.clone();
        if !f.failed.is_empty() {
            let again = std::mem::take(&mut f.failed);
            let timeouts = again.iter().filter(|(_, r)| *r == "timeout").count();
            let n = again.len() as u64;
            if timeouts > 0 {
                self.metrics.error("timeout", timeouts as u64);
            }
            if again.len() > timeouts {
                self.metrics
                    .error("broker", (again.len() - timeouts) as u64);
            }
            self.metrics.retries.inc_by(n);
            if let Some(held_back) = self.retry_log.allow() {
                tracing::warn!(sink = %self.cfg.name, events = n, timeouts, held_back, "delivery failed; producing the events again");
            }
            if self.producer.client().fatal_error().is_some() {
                self.remake().await;
            }
            if timeouts < again.len() {
                // A quick failure: do not spin.
                tokio::time::sleep(self.backoff.next_delay()).await;
            }
            f.pending.clear();
            f.settled = 0;
            let indices: Vec<usize> = again.iter().map(|&(i, _)| i).collect();
            self.produce(&mut f, indices).await;
            return Some(f);
        }
        self.backoff.reset();
        let sent = batch.events.len() - f.dead.len();
        let mut bytes = batch.event_bytes();
        for &i in &f.dead {
            bytes -= batch.events[i].raw.len();
        }
        self.metrics.events_sent.inc_by(sent as u64);
        self.metrics.bytes_sent.inc_by(bytes as u64);
        self.metrics
            .send_duration
            .observe(f.started.elapsed().as_secs_f64());
        None
    }

    /// Produces each suspect event alone and awaits its report: refused
    /// again, it is refused for good; a failure of another kind is retried.
    async fn check_alone(&mut self, f: &mut InFlight) {
        if self.solo.is_none() {
            match client::producer(&self.cfg, Role::Solo, &self.metrics) {
                Ok(p) => self.solo = Some(p),
                Err(e) => {
                    tracing::error!(sink = %self.cfg.name, error = %e, "cannot create a producer to check refused messages; producing them again");
                    f.failed.extend(f.suspect.drain(..).map(|i| (i, "broker")));
                    return;
                }
            }
        }
        let solo = self.solo.as_ref().expect("created above");
        let batch = f.delivery.batch.clone();
        let mut topic = String::new();
        for i in std::mem::take(&mut f.suspect) {
            let event = &batch.events[i];
            self.topic.render(event, &batch.body, &mut topic);
            let mut record = FutureRecord::to(&topic).payload(event.raw.as_ref());
            let key = self.key.of(event, &batch.body);
            if let Some(k) = key {
                record = record.key(k);
            }
            let outcome = match solo.send_result(record) {
                Ok(report) => match report.await {
                    Ok(Ok(_)) => None,
                    Ok(Err((e, _))) => Some(e),
                    Err(_) => Some(KafkaError::Canceled),
                },
                Err((e, _)) => Some(e),
            };
            match outcome.as_ref().map(classify) {
                None => {}
                Some(Failure::Refused) => f.refused.push(i),
                Some(Failure::Retry(reason)) => f.failed.push((i, reason)),
            }
        }
    }

    /// Events refused for good: logged, counted, and appended to the
    /// dead-letter file when there is one. While the file cannot be written
    /// the events are held (with their batch's room in the queue) and the
    /// write is tried again with backoff.
    async fn dead_letter(&self, f: &InFlight) {
        let batch = &f.delivery.batch;
        let n = f.refused.len() as u64;
        self.metrics.error("refused", n);
        let ids: Vec<String> = f
            .refused
            .iter()
            .take(10)
            .map(|&i| {
                let e = &batch.events[i];
                let id = e
                    .meta
                    .audit_id
                    .map(|s| s.get(&batch.body))
                    .unwrap_or_default();
                String::from_utf8_lossy(id).into_owned()
            })
            .collect();
        tracing::error!(sink = %self.cfg.name, events = n, audit_ids = ?ids, "broker refused events for good (too large or invalid)");
        if let Some(dl) = &self.dead_letter {
            let mut backoff = self.backoff.clone();
            let mut failing = false;
            while let Err(e) = dl.append(f.refused.iter().map(|&i| &batch.events[i])).await {
                self.metrics.error("dead_letter_write", n);
                if !failing {
                    tracing::error!(sink = %self.cfg.name, file = %dl.path().display(), error = %e, events = n, "failed to write the dead-letter file; holding the events and retrying");
                }
                failing = true;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if failing {
                tracing::info!(sink = %self.cfg.name, file = %dl.path().display(), "dead-letter file written again");
            }
        }
        self.metrics.dead_lettered.inc_by(n);
    }

    /// Creates the producers again (changed TLS or SASL files, or a fatal
    /// producer error); on failure the old ones stay.
    async fn remake(&mut self) {
        self.files = Files::of(&self.cfg);
        match client::producer(&self.cfg, Role::Main, &self.metrics) {
            Ok(p) => {
                let old = std::mem::replace(&mut self.producer, p);
                let solo = self.solo.take();
                // Dropping a producer flushes for up to half a second.
                let _ = tokio::task::spawn_blocking(move || drop((old, solo))).await;
                tracing::info!(sink = %self.cfg.name, "producer created again");
            }
            Err(e) => {
                tracing::error!(sink = %self.cfg.name, error = %format!("{e:#}"), "cannot create the producer again; keeping the old one");
            }
        }
    }
}
