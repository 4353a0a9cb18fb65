//! The `http` sink: POSTs events to one or more endpoints with retries,
//! failover and health checks. With `encoding: passthrough` each webhook batch
//! is relayed as its own request, body unchanged (what HAProxy does): a body
//! that came gzipped goes out in its received bytes with `Content-Encoding:
//! gzip` unless `compression: none` asks for it decompressed, and with
//! `forward_path` the request's path and query follow the endpoint URL. With
//! `ndjson`, `json_array`, `elasticsearch` or `splunk_hec` events are
//! re-batched; the bodies come from [`crate::sink::encode`]. Elasticsearch's
//! and Splunk's answers are read for what they say of each event
//! (`answers`).
//!
//! Delivery is at least once: a batch stays in the sink's queue (holding its
//! room) until an endpoint answers 2xx, or rejects its content with one of
//! `reject_statuses` (400, 413, 415, 422 by default). Connection errors,
//! timeouts and every other status are retried without end, with backoff and
//! jitter, honouring `Retry-After`; a full queue then pushes back to the API
//! server as 503. 401, 403 and 407 say the sink's credentials were refused:
//! they are retried like an outage, counted as `unauthorized`, and logged at
//! most once a minute. A request that fails on a pooled connection the peer
//! had closed is retried at once on a fresh one. A rejected request is split
//! in halves until the bad event is found; what stays rejected is counted,
//! logged with its auditID, and written to the dead-letter file.

mod answers;
mod auth;
mod body;
mod endpoints;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use body::Format;
use endpoints::Endpoints;

use super::deadletter::DeadLetter;
use super::encode::EventRef;
use super::retry::Backoff;
use crate::config::{
    BatchConfig, Compression, Encoding, HealthCheckConfig, HttpSinkConfig, HttpVersion,
    SplunkHecConfig, StatusPattern,
};
use crate::metrics::SinkMetrics;
use crate::pipeline::{Delivery, QueueReader};
use crate::tls::OutboundTls;

/// Most bytes of a response body read (and thrown away) so that the connection
/// can be reused.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Most bytes of an answer read by a format that reads answers: a bulk
/// answer holds some 200 bytes per event.
const MAX_ANSWER_BYTES: usize = 32 << 20;

/// A built HTTP sink.
pub struct HttpSink {
    name: String,
    clients: Vec<reqwest::Client>,
    endpoints: Arc<Endpoints>,
    format: Format,
    compression: Compression,
    forward_path: bool,
    headers: auth::Headers,
    /// Splunk HEC indexer acknowledgement, when on.
    hec_ack: Option<Box<SplunkHecConfig>>,
    batch: BatchConfig,
    retry_statuses: Vec<StatusPattern>,
    reject_statuses: Vec<StatusPattern>,
    /// When refused credentials may be logged again.
    auth_log: Mutex<Throttle>,
    backoff: Backoff,
    max_in_flight: usize,
    dead_letter: Option<DeadLetter>,
    health: Option<HealthCheckConfig>,
    metrics: SinkMetrics,
    tls: Option<OutboundTls>,
}

/// How one request ended, after its retries.
enum Outcome {
    /// Answered 2xx by endpoint `endpoint`; `body` is the answer's body
    /// when the format reads it, empty otherwise.
    Delivered {
        endpoint: usize,
        body: Bytes,
    },
    Rejected(u16),
}

/// What an answer's status means for the request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Taken (2xx; for Splunk HEC, code 0).
    Delivered,
    /// The events are refused: split, then dead-letter.
    Reject,
    /// The sink's credentials are refused (401, 403, 407): retry.
    Unauthorized,
    /// Anything else: retry.
    Retry,
}

/// Shortest time between two logs of refused credentials.
const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Lets a repeated event through at most once per interval, with the number
/// of times it happened since it was last let through.
struct Throttle {
    interval: Duration,
    next: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: None,
            count: 0,
        }
    }

    /// Records one occurrence at `now`; `Some(occurrences so far)` when it
    /// is to be logged.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + self.interval);
        Some(std::mem::take(&mut self.count))
    }
}

/// The verdict on a non-2xx `status`.
fn verdict(status: u16, retry: &[StatusPattern], reject: &[StatusPattern]) -> Verdict {
    if matches!(status, 401 | 403 | 407) {
        Verdict::Unauthorized
    } else if reject.iter().any(|p| p.matches(status)) && !retry.iter().any(|p| p.matches(status)) {
        Verdict::Reject
    } else {
        Verdict::Retry
    }
}

impl HttpSink {
    /// Builds the sink: loads TLS files, resolves header values, parses URLs.
    ///
    /// # Errors
    ///
    /// A message naming the key and file at fault.
    pub fn build(cfg: &HttpSinkConfig, metrics: SinkMetrics) -> anyhow::Result<Self> {
        use anyhow::Context;
        let tls = OutboundTls::load(&cfg.tls)?;
        let mut urls = Vec::new();
        let mut clients = Vec::new();
        for raw in &cfg.endpoints {
            let mut url = url::Url::parse(raw).with_context(|| format!("endpoint {raw}"))?;
            let mut builder = reqwest::Client::builder()
                .user_agent(concat!("kube-audit-forwarder/", env!("CARGO_PKG_VERSION")))
                .timeout(Duration::from_secs(cfg.timeout_secs))
                .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(30))
                .tcp_keepalive(Duration::from_secs(30))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(15))
                .http2_keep_alive_timeout(Duration::from_secs(10))
                .http2_keep_alive_while_idle(true);
            builder = match cfg.http_version {
                HttpVersion::Auto => builder,
                HttpVersion::Http1 => builder.http1_only(),
                HttpVersion::Http2 => builder.http2_prior_knowledge(),
            };
            let alpn: &[&[u8]] = match cfg.http_version {
                HttpVersion::Http1 => &[b"http/1.1"],
                HttpVersion::Http2 => &[b"h2"],
                HttpVersion::Auto => &[b"h2", b"http/1.1"],
            };
            // Given for http:// too: reqwest would otherwise look for a
            // process-wide crypto provider.
            builder = builder.tls_backend_preconfigured(tls.client_config(alpn)?);
            if url.scheme() == "https"
                && let (Some(name), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) =
                    (&cfg.tls.server_name, url.host())
            {
                let addr = url
                    .socket_addrs(|| None)
                    .with_context(|| format!("endpoint {raw}"))?[0];
                url.set_host(Some(name))
                    .with_context(|| format!("tls.server_name {name}"))?;
                builder = builder.resolve(name, addr);
            }
            clients.push(
                builder
                    .build()
                    .with_context(|| format!("failed to build the HTTP client for {raw}"))?,
            );
            urls.push(url);
        }
        let format = Format::new(cfg);
        let mut fixed = HeaderMap::new();
        fixed.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        let hec = &cfg.splunk_hec;
        if cfg.encoding == Encoding::SplunkHec && hec.ack {
            let channel = hec
                .channel
                .clone()
                .unwrap_or_else(super::encode::splunk_hec::new_channel);
            fixed.insert(
                "x-splunk-request-channel",
                HeaderValue::from_str(&channel).context("splunk_hec.channel")?,
            );
        }
        let headers = auth::Headers::build(cfg, fixed)?;
        let urls_use_tls = urls.iter().any(|u| u.scheme() == "https");
        let checked = cfg.health_check.is_some();
        let eject = Duration::from_secs(cfg.eject_secs);
        let endpoints = Endpoints::new(
            urls,
            cfg.balance,
            cfg.max_failures,
            eject,
            checked,
            |label| metrics.endpoint_up(label),
        );
        Ok(Self {
            name: cfg.name.clone(),
            clients,
            endpoints: Arc::new(endpoints),
            format,
            hec_ack: (cfg.encoding == Encoding::SplunkHec && hec.ack).then(|| hec.clone()),
            compression: cfg.compression,
            forward_path: cfg.forward_path,
            headers,
            batch: cfg.batch.clone(),
            retry_statuses: cfg
                .retry
                .retry_statuses
                .iter()
                .filter_map(|s| StatusPattern::parse(s))
                .collect(),
            reject_statuses: cfg
                .retry
                .reject_statuses
                .iter()
                .filter_map(|s| StatusPattern::parse(s))
                .collect(),
            auth_log: Mutex::new(Throttle::new(AUTH_LOG_INTERVAL)),
            backoff: Backoff::new(
                Duration::from_millis(cfg.retry.initial_backoff_ms),
                Duration::from_secs(cfg.retry.max_backoff_secs),
            ),
            max_in_flight: cfg.max_in_flight,
            dead_letter: DeadLetter::configured(cfg.dead_letter_file.as_ref())?,
            health: cfg.health_check.clone(),
            metrics,
            tls: urls_use_tls.then_some(tls),
        })
    }

    /// Watches the files its headers and credentials are read from; `None`
    /// when there are none.
    ///
    /// # Errors
    ///
    /// A directory that cannot be watched.
    pub fn watch_credentials(&self) -> anyhow::Result<Option<crate::tls::watch::FileWatcher>> {
        self.headers.watch(Duration::from_secs(60))
    }

    /// Its TLS client settings, when an endpoint is `https://`.
    pub fn tls(&self) -> Option<&OutboundTls> {
        self.tls.as_ref()
    }

    /// Delivers every batch of `input` until it is closed and drained.
    pub async fn run(self, mut input: QueueReader) {
        let stop_checks = CancellationToken::new();
        if let Some(h) = self.health.clone() {
            tokio::spawn(health_checks(
                self.endpoints.clone(),
                self.clients.clone(),
                h,
                stop_checks.clone(),
            ));
        }
        match self.format {
            Format::Passthrough => {
                // Several webhook batches in flight, as the API server sends
                // them; each keeps its room in the queue until delivered.
                let this = std::sync::Arc::new(self);
                let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(this.max_in_flight));
                let mut in_flight = tokio::task::JoinSet::new();
                while let Some(delivery) = input.recv().await {
                    let slot = slots.clone().acquire_owned().await.expect("never closed");
                    let sink = this.clone();
                    in_flight.spawn(async move {
                        sink.passthrough(delivery).await;
                        drop(slot);
                    });
                    while in_flight.try_join_next().is_some() {}
                }
                while in_flight.join_next().await.is_some() {}
                stop_checks.cancel();
                return;
            }
            Format::Hec(_) if self.hec_ack.is_some() => {
                Arc::new(self).rebatch_acked(&mut input).await;
                stop_checks.cancel();
                return;
            }
            _ => self.rebatch(&mut input).await,
        }
        stop_checks.cancel();
    }

    async fn passthrough(&self, delivery: Delivery) {
        let batch = delivery.batch.clone();
        let (body, gzip) = match (&batch.origin.gzip_wire, self.compression) {
            (Some(wire), Compression::AsReceived | Compression::Gzip) => (wire.clone(), true),
            (_, Compression::Gzip) => (body::compress(batch.body.clone(), Compression::Gzip), true),
            _ => (batch.body.clone(), false),
        };
        let events = batch.events.len();
        let path = self.forwarded_path(&batch);
        match self.send(body, gzip, path, events).await {
            Outcome::Delivered { .. } => self.delivered(events, batch.body.len()),
            Outcome::Rejected(status) => {
                let refs: Vec<EventRef> = (0..events)
                    .map(|index| EventRef {
                        batch: batch.clone(),
                        index,
                    })
                    .collect();
                self.split_rejected(refs, status).await;
            }
        }
        drop(delivery);
    }

    /// Gathers events from successive batches into requests of at most
    /// `batch.max_events` events and `batch.max_bytes` bytes, waiting at most
    /// `batch.timeout_ms` for a partial one to fill. A batch's room in the
    /// queue is given back once all its events are delivered.
    /// Adds the events of `batch` from index `*next` to `chunk` (whose
    /// encoded size so far is `*bytes`) until `batch.max_events` or
    /// `batch.max_bytes` would be passed; returns whether the batch is used up.
    fn fill(
        &self,
        batch: &Arc<crate::pipeline::Batch>,
        next: &mut usize,
        chunk: &mut Vec<EventRef>,
        bytes: &mut usize,
    ) -> bool {
        while *next < batch.events.len() && chunk.len() < self.batch.max_events {
            let size = batch.events[*next].raw.len() + 1;
            if !chunk.is_empty() && *bytes + size > self.batch.max_bytes {
                break;
            }
            chunk.push(EventRef {
                batch: batch.clone(),
                index: *next,
            });
            *bytes += size;
            *next += 1;
        }
        *next == batch.events.len()
    }

    async fn rebatch(&self, input: &mut QueueReader) {
        let mut held: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
        let mut done_in_front = 0usize;
        let mut cursor: Option<(Arc<crate::pipeline::Batch>, usize)> = None;
        let mut closed = false;
        while !closed || cursor.is_some() {
            let mut chunk: Vec<EventRef> = Vec::new();
            let mut bytes = 0usize;
            let mut deadline: Option<Instant> = None;
            loop {
                if let Some((batch, next)) = cursor.as_mut() {
                    if !self.fill(batch, next, &mut chunk, &mut bytes) {
                        break; // the chunk is full
                    }
                    cursor = None;
                }
                if chunk.len() >= self.batch.max_events || closed {
                    break;
                }
                let next = match deadline {
                    None if chunk.is_empty() => input.recv().await,
                    _ => {
                        let until = *deadline.get_or_insert_with(|| {
                            Instant::now() + Duration::from_millis(self.batch.timeout_ms)
                        });
                        match tokio::time::timeout_at(until, input.recv()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                };
                match next {
                    Some(d) => {
                        deadline.get_or_insert_with(|| {
                            Instant::now() + Duration::from_millis(self.batch.timeout_ms)
                        });
                        cursor = Some((d.batch.clone(), 0));
                        held.push_back(d);
                    }
                    None => closed = true,
                }
            }
            if chunk.is_empty() {
                continue;
            }
            self.deliver_split(chunk.clone()).await;
            done_in_front += chunk.len();
            while let Some(front) = held.front() {
                let n = front.batch.events.len();
                if done_in_front < n {
                    break;
                }
                done_in_front -= n;
                held.pop_front();
            }
        }
    }

    /// Re-batches like [`Self::rebatch`], with up to `max_in_flight`
    /// requests awaiting Splunk's indexer acknowledgement at once. Each
    /// request holds the queued batches its events come from; a batch's room
    /// in the queue is given back once every request holding it is done.
    async fn rebatch_acked(self: Arc<Self>, input: &mut QueueReader) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_in_flight));
        let mut requests = tokio::task::JoinSet::new();
        let mut cursor: Option<(Arc<Delivery>, usize)> = None;
        let mut closed = false;
        while !closed || cursor.is_some() {
            let mut chunk: Vec<EventRef> = Vec::new();
            let mut holds: Vec<Arc<Delivery>> = Vec::new();
            let mut bytes = 0usize;
            let mut deadline: Option<Instant> = None;
            loop {
                if let Some((delivery, next)) = cursor.as_mut() {
                    holds.push(delivery.clone());
                    if !self.fill(&delivery.batch, next, &mut chunk, &mut bytes) {
                        break; // the chunk is full
                    }
                    cursor = None;
                }
                if chunk.len() >= self.batch.max_events || closed {
                    break;
                }
                let wait = Duration::from_millis(self.batch.timeout_ms);
                let next = match deadline {
                    None if chunk.is_empty() => input.recv().await,
                    _ => {
                        let until = *deadline.get_or_insert_with(|| Instant::now() + wait);
                        match tokio::time::timeout_at(until, input.recv()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                };
                match next {
                    Some(d) => {
                        deadline.get_or_insert_with(|| Instant::now() + wait);
                        cursor = Some((Arc::new(d), 0));
                    }
                    None => closed = true,
                }
            }
            if chunk.is_empty() {
                continue;
            }
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let sink = self.clone();
            requests.spawn(async move {
                sink.deliver_split(chunk).await;
                drop((holds, slot));
            });
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
    }

    /// Sends `events`, splitting a rejected request in halves down to the
    /// events that are rejected on their own, which go to the dead-letter file.
    async fn deliver_split(&self, events: Vec<EventRef>) {
        self.deliver_parts(vec![events]).await;
    }

    /// Goes on with `events` that were rejected together with `status`: in
    /// halves, or to the dead-letter file if it is a single event.
    async fn split_rejected(&self, mut events: Vec<EventRef>, status: u16) {
        if events.len() < 2 {
            return self.dead_letter(&events, status).await;
        }
        tracing::debug!(sink = %self.name, status, events = events.len(), "request rejected; splitting it");
        let second = events.split_off(events.len() / 2);
        self.deliver_parts(vec![second, events]).await;
    }

    /// Sends each part (the last first), splitting rejected parts in halves.
    async fn deliver_parts(&self, mut stack: Vec<Vec<EventRef>>) {
        let mut backoff = self.backoff.clone();
        while let Some(part) = stack.pop() {
            let body = self.format.encode(&part, self.compression);
            let raw_bytes: usize = part.iter().map(|e| e.event().raw.len() + 1).sum();
            let gzip = self.compression == Compression::Gzip;
            let path = match self.format {
                Format::Passthrough => self.forwarded_path(&part[0].batch),
                _ => self.format.path(),
            };
            match self.send(body.clone(), gzip, path, part.len()).await {
                Outcome::Delivered {
                    endpoint,
                    body: answer,
                } => {
                    let again = self
                        .accepted(part, raw_bytes, endpoint, answer, &mut backoff)
                        .await;
                    stack.extend(again);
                }
                Outcome::Rejected(status) if part.len() > 1 => {
                    tracing::debug!(sink = %self.name, status, events = part.len(), "request rejected; splitting it");
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                }
                Outcome::Rejected(status) => self.dead_letter(&part, status).await,
            }
        }
    }

    fn delivered(&self, events: usize, bytes: usize) {
        self.metrics.events_sent.inc_by(events as u64);
        self.metrics.bytes_sent.inc_by(bytes as u64);
    }

    /// Events rejected for good: logged, counted, and appended to the
    /// dead-letter file when there is one. While the file cannot be written
    /// the events are held (with their room in the queue) and the write is
    /// tried again with backoff; they count as dead-lettered once written.
    async fn dead_letter(&self, events: &[EventRef], status: u16) {
        self.metrics
            .error(&format!("http_{}xx", status / 100), events.len() as u64);
        let ids: Vec<String> = events.iter().take(10).map(EventRef::audit_id).collect();
        tracing::error!(sink = %self.name, status, events = events.len(), audit_ids = ?ids, "endpoint rejected events for good");
        if let Some(dl) = &self.dead_letter {
            let mut backoff = self.backoff.clone();
            let mut failing = false;
            while let Err(e) = dl.append(events.iter().map(EventRef::event)).await {
                self.metrics.error("dead_letter_write", events.len() as u64);
                if !failing {
                    tracing::error!(sink = %self.name, file = %dl.path().display(), error = %e, events = events.len(), "failed to write the dead-letter file; holding the events and retrying");
                }
                failing = true;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            if failing {
                tracing::info!(sink = %self.name, file = %dl.path().display(), "dead-letter file written again");
            }
        }
        self.metrics.dead_lettered.inc_by(events.len() as u64);
    }

    /// What an answer means for the request: by its status, and for Splunk
    /// HEC by the code in its body.
    fn verdict(&self, status: u16, answer: &[u8]) -> Verdict {
        use super::encode::splunk_hec::{self, Verdict as Hec};
        if let Format::Hec(_) = self.format {
            return match splunk_hec::verdict(status, answer) {
                Hec::Taken(_) => Verdict::Delivered,
                Hec::Refused => Verdict::Reject,
                Hec::Unauthorized => Verdict::Unauthorized,
                Hec::Retry => Verdict::Retry,
            };
        }
        if (200..300).contains(&status) {
            return Verdict::Delivered;
        }
        verdict(status, &self.retry_statuses, &self.reject_statuses)
    }

    /// Logs a refused credential, at most once per [`AUTH_LOG_INTERVAL`]
    /// for the whole sink, with the number of refusals since the last log.
    fn log_unauthorized(&self, endpoint: &str, status: u16) {
        let due = self
            .auth_log
            .lock()
            .expect("not poisoned")
            .hit(Instant::now());
        if let Some(refusals) = due {
            tracing::error!(
                sink = %self.name,
                endpoint,
                status,
                refusals,
                "endpoint refused the sink's credentials (authentication failure); retrying until it accepts them"
            );
        }
    }

    /// The webhook request's path and query to append to the endpoint URL,
    /// with `forward_path`.
    fn forwarded_path<'a>(&self, batch: &'a crate::pipeline::Batch) -> Option<&'a str> {
        (self.forward_path && !batch.origin.path_and_query.is_empty())
            .then_some(batch.origin.path_and_query.as_str())
    }

    /// Sends one body (gzip-encoded when `gzip`), to each endpoint's URL with
    /// `path` appended when given, until an endpoint takes it or rejects it
    /// for good.
    async fn send(&self, body: Bytes, gzip: bool, path: Option<&str>, events: usize) -> Outcome {
        let mut last_failed: Option<usize> = None;
        let mut fresh_retry_used = false;
        let mut failing = false;
        let mut backoff = self.backoff.clone();
        loop {
            let i = self.endpoints.pick(last_failed);
            let endpoint = &self.endpoints.list[i];
            let started = Instant::now();
            let url = match path {
                Some(p) => append_path(&endpoint.url, p),
                None => endpoint.url.clone(),
            };
            let mut request = self.clients[i]
                .post(url)
                .headers(HeaderMap::clone(&self.headers.get()))
                .body(body.clone());
            if gzip {
                request = request.header(header::CONTENT_ENCODING, "gzip");
            }
            let result = request.send().await;
            self.metrics
                .send_duration
                .observe(started.elapsed().as_secs_f64());
            let (reason, wait) = match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    let answer = match self.format.reads_answers() {
                        true => read_body(&mut resp, MAX_ANSWER_BYTES).await,
                        false => {
                            drain(&mut resp).await;
                            Some(Bytes::new())
                        }
                    };
                    self.endpoints.success(i);
                    let answer = answer.unwrap_or_default();
                    let verdict = self.verdict(status, &answer);
                    if verdict != Verdict::Delivered
                        && verdict != Verdict::Reject
                        && !failing
                        && let Format::Hec(_) = self.format
                    {
                        let text = super::encode::splunk_hec::text(&answer);
                        tracing::warn!(sink = %self.name, endpoint = %endpoint.label, status, answer = %text, "collector refused the request; retrying");
                    }
                    // A retried status counts against the endpoint too.
                    match verdict {
                        Verdict::Delivered => {
                            if failing {
                                tracing::info!(sink = %self.name, endpoint = %endpoint.label, "delivering again");
                            }
                            return Outcome::Delivered {
                                endpoint: i,
                                body: answer,
                            };
                        }
                        Verdict::Reject => return Outcome::Rejected(status),
                        Verdict::Unauthorized => {
                            self.endpoints.failure(i);
                            self.log_unauthorized(&endpoint.label, status);
                            ("unauthorized".to_owned(), retry_after)
                        }
                        Verdict::Retry => {
                            self.endpoints.failure(i);
                            (format!("http_{}xx", status / 100), retry_after)
                        }
                    }
                }
                Err(e) => {
                    self.endpoints.failure(i);
                    let reason = if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "connection"
                    };
                    self.metrics.connection_error(reason);
                    if !failing {
                        tracing::warn!(sink = %self.name, endpoint = %endpoint.label, error = %error_chain(&e), "request failed; retrying");
                    }
                    // A pooled connection the peer had closed: once, at once.
                    let stale = reason == "connection" && !fresh_retry_used;
                    fresh_retry_used |= stale;
                    (reason.to_owned(), stale.then_some(Duration::ZERO))
                }
            };
            if !failing && reason.starts_with("http_") {
                tracing::warn!(sink = %self.name, endpoint = %self.endpoints.list[i].label, reason, "endpoint refused the request; retrying");
            }
            failing = true;
            self.metrics.error(&reason, events as u64);
            self.metrics.retries.inc();
            last_failed = (self.endpoints.list.len() > 1).then_some(i);
            let pause = wait.unwrap_or_else(|| backoff.next_delay());
            tokio::time::sleep(pause).await;
        }
    }
}

/// `url` with `path_and_query` (`/post?timeout=30s`) appended: the path to
/// the URL's path (without doubling the slash between them), the query to
/// the URL's query.
fn append_path(url: &url::Url, path_and_query: &str) -> url::Url {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let mut out = url.clone();
    let base = url.path().trim_end_matches('/');
    out.set_path(&format!("{base}{path}"));
    match (url.query(), query) {
        (Some(a), Some(b)) => out.set_query(Some(&format!("{a}&{b}"))),
        (None, Some(b)) => out.set_query(Some(b)),
        _ => {}
    }
    out
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3; the HTTP-date form is ignored),
/// capped at five minutes.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

/// Reads the response body, or `None` (the rest discarded) when it is
/// longer than `limit` bytes or breaks off.
async fn read_body(resp: &mut reqwest::Response, limit: usize) -> Option<Bytes> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) if out.len() + chunk.len() <= limit => out.extend_from_slice(&chunk),
            Ok(Some(_)) => {
                drain(resp).await;
                return None;
            }
            Ok(None) => return Some(Bytes::from(out)),
            Err(_) => return None,
        }
    }
}

/// Reads and discards up to [`MAX_RESPONSE_BYTES`] of the response body.
async fn drain(resp: &mut reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = resp.chunk().await {
        read += chunk.len();
        if read > MAX_RESPONSE_BYTES {
            break;
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// GETs `path` on every endpoint every `interval_secs`: a 2xx or 3xx answer puts
/// it (back) in rotation, anything else counts as a failure.
async fn health_checks(
    endpoints: Arc<Endpoints>,
    clients: Vec<reqwest::Client>,
    cfg: HealthCheckConfig,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for (i, e) in endpoints.list.iter().enumerate() {
            let mut url = e.url.clone();
            url.set_path(&cfg.path);
            url.set_query(None);
            let answer = clients[i]
                .get(url)
                .timeout(Duration::from_secs(cfg.timeout_secs))
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => {
                    endpoints.success(i)
                }
                _ => endpoints.failure(i),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_about_content_reject_and_credentials_are_always_retried() {
        let parse = |l: &[&str]| -> Vec<StatusPattern> {
            l.iter().filter_map(|s| StatusPattern::parse(s)).collect()
        };
        let (retry, reject) = (
            parse(&["408", "429", "5xx"]),
            parse(&["400", "413", "415", "422"]),
        );
        for (status, want) in [
            (400, Verdict::Reject),
            (422, Verdict::Reject),
            (401, Verdict::Unauthorized),
            (403, Verdict::Unauthorized),
            (407, Verdict::Unauthorized),
            (404, Verdict::Retry),
            (409, Verdict::Retry),
            (429, Verdict::Retry),
            (503, Verdict::Retry),
        ] {
            assert_eq!(verdict(status, &retry, &reject), want, "{status}");
        }
        // A class in reject_statuses, with retry_statuses carving out of it;
        // credentials stay retried whatever the lists say.
        let reject = parse(&["4xx"]);
        assert_eq!(verdict(404, &retry, &reject), Verdict::Reject);
        assert_eq!(verdict(429, &retry, &reject), Verdict::Retry);
        assert_eq!(verdict(401, &retry, &reject), Verdict::Unauthorized);
    }

    #[test]
    fn refused_credentials_are_logged_once_per_interval_with_a_count() {
        let mut t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(t.hit(at(0)), Some(1));
        for s in 1..60 {
            assert_eq!(t.hit(at(s)), None, "{s}");
        }
        assert_eq!(t.hit(at(60)), Some(60));
        assert_eq!(t.hit(at(61)), None);
        assert_eq!(t.hit(at(500)), Some(2));
    }

    fn joined(url: &str, path: &str) -> String {
        append_path(&url::Url::parse(url).unwrap(), path).to_string()
    }

    #[test]
    fn the_received_path_and_query_follow_the_endpoint_url() {
        assert_eq!(
            joined("http://10.0.0.10:8080/", "/post?timeout=30s"),
            "http://10.0.0.10:8080/post?timeout=30s"
        );
        assert_eq!(
            joined("http://h/ingest/", "/post?timeout=30s"),
            "http://h/ingest/post?timeout=30s"
        );
        assert_eq!(
            joined("http://h/ingest?token=a", "/post?timeout=30s"),
            "http://h/ingest/post?token=a&timeout=30s"
        );
        assert_eq!(joined("http://h", "/post"), "http://h/post");
    }
}
