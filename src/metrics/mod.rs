//! Prometheus metrics: one [`Metrics`] registered into an explicit
//! [`prometheus::Registry`], recorded per request and per batch, never per event.
//! Every labelled counter is created at 0 for the label values known when
//! its component is built, so that `increase()` sees the first event; the
//! standard `process_*` series (memory, CPU, open file descriptors, start
//! time) come from the prometheus crate's process collector on Linux.

pub mod buffer;
pub mod names;
pub mod tls;

pub use buffer::BufferMetrics;
pub use tls::TlsMetrics;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Request-duration buckets in seconds: the webhook answers in milliseconds, the
/// API server gives up at 30 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All of the forwarder's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    rejected: IntCounterVec,
    request_duration: HistogramVec,
    /// Events split out of accepted requests.
    pub events_received: IntCounter,
    /// Wire bytes of accepted requests.
    pub bytes_received: IntCounter,
    decode_errors: IntCounterVec,
    /// Events truncated for `decode.max_event_bytes`.
    pub events_truncated: IntCounter,
    dropped: IntCounterVec,
    repaired: IntCounterVec,
    sent_events: IntCounterVec,
    sent_bytes: IntCounterVec,
    errors: IntCounterVec,
    send_duration: HistogramVec,
    retries: IntCounterVec,
    connection_errors: IntCounterVec,
    dead_lettered: IntCounterVec,
    endpoint_up: IntGaugeVec,
    queue_events: IntGaugeVec,
    queue_bytes: IntGaugeVec,
    queue_capacity_events: IntGaugeVec,
    queue_capacity_bytes: IntGaugeVec,
    open_connections: IntGaugeVec,
    config_reloads: IntCounterVec,
}

/// The handles of one sink, with its label resolved once.
#[derive(Clone)]
pub struct SinkMetrics {
    /// Events delivered.
    pub events_sent: IntCounter,
    /// Bytes delivered.
    pub bytes_sent: IntCounter,
    /// Events in the queue.
    pub queue_events: IntGauge,
    /// Bytes in the queue.
    pub queue_bytes: IntGauge,
    /// Seconds per delivery.
    pub send_duration: prometheus::Histogram,
    /// Delivery attempts repeated.
    pub retries: IntCounter,
    /// Events rejected for good.
    pub dead_lettered: IntCounter,
    metrics: Metrics,
    sink: String,
}

impl SinkMetrics {
    /// Creates `audit_forwarder_error_total{sink, reason}` for each of
    /// `errors` and `audit_forwarder_connection_errors_total{sink, reason}`
    /// for each of `connection_errors`, at 0.
    pub fn known_reasons(&self, errors: &[&str], connection_errors: &[&str]) {
        for reason in errors {
            self.metrics
                .errors
                .with_label_values(&[self.sink.as_str(), reason]);
        }
        for reason in connection_errors {
            self.metrics
                .connection_errors
                .with_label_values(&[self.sink.as_str(), reason]);
        }
    }

    /// Counts `events` under `audit_forwarder_error_total{sink, reason}`.
    pub fn error(&self, reason: &str, events: u64) {
        self.metrics
            .errors
            .with_label_values(&[&self.sink, reason])
            .inc_by(events);
    }

    /// Counts one failed connection under
    /// `audit_forwarder_connection_errors_total{sink, reason}`.
    pub fn connection_error(&self, reason: &str) {
        self.metrics
            .connection_errors
            .with_label_values(&[&self.sink, reason])
            .inc();
    }

    /// The gauge `audit_forwarder_endpoint_up{sink, endpoint}`.
    pub fn endpoint_up(&self, endpoint: &str) -> IntGauge {
        self.metrics
            .endpoint_up
            .with_label_values(&[&self.sink, endpoint])
    }

    /// Counts `events` under `audit_forwarder_events_dropped_total{sink, reason}`.
    pub fn dropped(&self, reason: &str, events: u64) {
        self.metrics
            .dropped
            .with_label_values(&[&self.sink, reason])
            .inc_by(events);
    }
}

impl Metrics {
    /// Creates the metrics and registers them into a fresh registry.
    ///
    /// # Panics
    ///
    /// Never in practice: registration fails only for duplicate or malformed
    /// names, which are constants here.
    pub fn new() -> Self {
        use names::*;
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique gauge");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(REQUEST_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique histogram");
            h
        };
        let m = Self {
            requests: counter(
                REQUESTS_TOTAL,
                "Webhook requests answered, by HTTP status code.",
                &["code"],
            ),
            rejected: counter(
                REQUESTS_REJECTED_TOTAL,
                "Webhook requests refused, by reason.",
                &["reason"],
            ),
            request_duration: histogram(
                REQUEST_DURATION_SECONDS,
                "Seconds from request headers to answer.",
                &["code"],
            ),
            events_received: plain(
                EVENTS_RECEIVED_TOTAL,
                "Events split out of accepted requests.",
            ),
            bytes_received: plain(
                BYTES_RECEIVED_TOTAL,
                "Body bytes of accepted requests, as read from the wire.",
            ),
            decode_errors: counter(
                DECODE_ERRORS_TOTAL,
                "Request bodies the decoder refused, by reason.",
                &["reason"],
            ),
            events_truncated: plain(
                EVENTS_TRUNCATED_TOTAL,
                "Events truncated for decode.max_event_bytes.",
            ),
            dropped: counter(
                EVENTS_DROPPED_TOTAL,
                "Events discarded after acceptance, by sink and reason.",
                &["sink", "reason"],
            ),
            repaired: counter(
                EVENTS_REPAIRED_TOTAL,
                "Accepted events changed to be forwarded, by reason.",
                &["reason"],
            ),
            sent_events: counter(EVENTS_SENT_TOTAL, "Events delivered, by sink.", &["sink"]),
            sent_bytes: counter(BYTES_SENT_TOTAL, "Bytes delivered, by sink.", &["sink"]),
            errors: counter(
                ERROR_TOTAL,
                "Events affected by a failed delivery attempt, by sink and reason.",
                &["sink", "reason"],
            ),
            send_duration: histogram(
                SEND_DURATION_SECONDS,
                "Seconds one delivery took, by sink.",
                &["sink"],
            ),
            retries: counter(
                RETRIES_TOTAL,
                "Delivery attempts repeated, by sink.",
                &["sink"],
            ),
            connection_errors: counter(
                CONNECTION_ERRORS_TOTAL,
                "Failed connections to a sink's endpoint, by sink and reason.",
                &["sink", "reason"],
            ),
            dead_lettered: counter(
                EVENTS_DEAD_LETTERED_TOTAL,
                "Events rejected for good by an endpoint, by sink.",
                &["sink"],
            ),
            endpoint_up: gauge(
                ENDPOINT_UP,
                "1 while the endpoint is in rotation, 0 while ejected.",
                &["sink", "endpoint"],
            ),
            queue_events: gauge(QUEUE_EVENTS, "Events in the sink's queue.", &["sink"]),
            queue_bytes: gauge(QUEUE_BYTES, "Bytes held by the sink's queue.", &["sink"]),
            queue_capacity_events: gauge(
                QUEUE_CAPACITY_EVENTS,
                "capacity_events of the sink's queue.",
                &["sink"],
            ),
            queue_capacity_bytes: gauge(
                QUEUE_CAPACITY_BYTES,
                "capacity_bytes of the sink's queue.",
                &["sink"],
            ),
            open_connections: gauge(
                OPEN_CONNECTIONS,
                "Open client connections, by listener.",
                &["listener"],
            ),
            config_reloads: counter(
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads, by result.",
                &["result"],
            ),
            registry,
        };
        for result in ["success", "restart_required", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        let info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Build information; always 1."),
            &["version"],
        )
        .expect("valid gauge");
        m.registry
            .register(Box::new(info.clone()))
            .expect("unique gauge");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique process metrics");
        m
    }

    /// Creates, at 0, `requests_total{code}` for each of `codes`,
    /// `requests_rejected_total{reason}` for each of `rejections`,
    /// `decode_errors_total{reason}` for each of `decode_errors`,
    /// `events_dropped_total{sink="all", reason}` for each of `dropped`, and
    /// `events_repaired_total{reason}` for each of `repaired`.
    pub fn known_request_labels(
        &self,
        codes: &[u16],
        rejections: &[&str],
        decode_errors: &[&str],
        dropped: &[&str],
        repaired: &[&str],
    ) {
        for reason in repaired {
            self.repaired.with_label_values(&[reason]);
        }
        for code in codes {
            self.requests.with_label_values(&[&code.to_string()]);
        }
        for reason in rejections.iter().chain(decode_errors) {
            self.rejected.with_label_values(&[reason]);
        }
        for reason in decode_errors {
            self.decode_errors.with_label_values(&[reason]);
        }
        for reason in dropped {
            self.dropped.with_label_values(&["all", reason]);
        }
    }

    /// Records one answered request: its status code and duration in seconds, and
    /// for a refusal its reason.
    pub fn request(&self, code: u16, reason: Option<&str>, seconds: f64) {
        let code = code.to_string();
        self.requests.with_label_values(&[&code]).inc();
        self.request_duration
            .with_label_values(&[&code])
            .observe(seconds);
        if let Some(reason) = reason {
            self.rejected.with_label_values(&[reason]).inc();
        }
    }

    /// Counts one configuration reload under
    /// `audit_forwarder_config_reloads_total{result}`.
    pub fn config_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Counts one body refused by the decoder.
    pub fn decode_error(&self, reason: &str) {
        self.decode_errors.with_label_values(&[reason]).inc();
    }

    /// Counts accepted events that were changed to be forwarded.
    pub fn events_repaired(&self, reason: &str, events: u64) {
        self.repaired.with_label_values(&[reason]).inc_by(events);
    }

    /// Counts events dropped before the fan-out.
    pub fn dropped_before_fanout(&self, reason: &str, events: u64) {
        self.dropped
            .with_label_values(&["all", reason])
            .inc_by(events);
    }

    /// Counts `events` of sink `sink` dropped for `reason`.
    pub fn sink_dropped(&self, sink: &str, reason: &str, events: u64) {
        self.dropped
            .with_label_values(&[sink, reason])
            .inc_by(events);
    }

    /// The gauge of open connections on `listener`.
    pub fn open_connections(&self, listener: &str) -> IntGauge {
        self.open_connections.with_label_values(&[listener])
    }

    /// Resolves the handles of sink `name` and publishes its queue capacity.
    pub fn sink(&self, name: &str, capacity_events: usize, capacity_bytes: usize) -> SinkMetrics {
        self.queue_capacity_events
            .with_label_values(&[name])
            .set(capacity_events as i64);
        self.queue_capacity_bytes
            .with_label_values(&[name])
            .set(capacity_bytes as i64);
        for reason in ["queue_full", "shutdown"] {
            self.dropped.with_label_values(&[name, reason]);
        }
        SinkMetrics {
            events_sent: self.sent_events.with_label_values(&[name]),
            bytes_sent: self.sent_bytes.with_label_values(&[name]),
            queue_events: self.queue_events.with_label_values(&[name]),
            queue_bytes: self.queue_bytes.with_label_values(&[name]),
            send_duration: self.send_duration.with_label_values(&[name]),
            retries: self.retries.with_label_values(&[name]),
            dead_lettered: self.dead_lettered.with_label_values(&[name]),
            metrics: self.clone(),
            sink: name.to_owned(),
        }
    }

    /// The registry, for tests and embedders.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All metrics in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 << 10);
        // Encoding into a Vec fails only for metric families that are malformed,
        // which the registry does not hold.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
