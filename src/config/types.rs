//! The configuration types, as they appear in the YAML file. Keys are
//! snake_case nouns with their unit in the name.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use super::https::{ClientAuth, HttpsSourceConfig, is_set};
use super::{HttpSinkConfig, KafkaSinkConfig, ProcessConfig, TcpSinkConfig};

use crate::pipeline::WhenFull;

const MIB: u64 = 1 << 20;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where webhook requests are received.
    pub source: SourceConfig,
    /// How bodies are decoded.
    pub decode: DecodeConfig,
    /// Admission into the sink queues.
    pub pipeline: PipelineConfig,
    /// Where accepted batches are kept until every sink has them.
    pub buffer: BufferConfig,
    /// Where events go; at least one.
    pub sinks: Vec<SinkConfig>,
    /// The metrics and health listener.
    pub metrics: MetricsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Logging to stderr.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            source: SourceConfig::default(),
            decode: DecodeConfig::default(),
            pipeline: PipelineConfig::default(),
            buffer: BufferConfig::default(),
            sinks: vec![SinkConfig::Stdout(StdoutSinkConfig::default())],
            metrics: MetricsConfig::default(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// The sources.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// The plain HTTP listener; its request limits apply to both listeners.
    pub http: HttpSourceConfig,
    /// The HTTPS listener.
    pub https: HttpsSourceConfig,
}

/// The plain HTTP/1.1 listener for the API server's webhook.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port to listen on.
    pub address: SocketAddr,
    /// Paths that accept POSTs (`/post`, `/k8s-audit`); empty accepts any path.
    /// A trailing slash is ignored, and so is the query string.
    pub paths: Vec<String>,
    /// Largest request body in bytes as read from the wire; a larger
    /// `Content-Length` is refused with 413 before the body is read.
    pub max_body_bytes: u64,
    /// Largest body in bytes after `Content-Encoding: gzip` is undone.
    pub max_decoded_bytes: u64,
    /// Seconds a client has to complete a request head once its first byte
    /// has arrived, and to begin the first request on a new connection.
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send the whole body once the headers are in.
    pub body_read_timeout_secs: u64,
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// Most client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// File holding a bearer token (RFC 6750) that every request on the plain
    /// listener must carry in `Authorization`; 401 otherwise. Empty means unset.
    pub bearer_token_file: PathBuf,
    /// Seconds a connection may stay open with no request in flight, HTTP/1.1
    /// keep-alive and HTTP/2 alike.
    pub idle_timeout_secs: u64,
    /// Most HTTP/2 streams (requests) in flight on one connection.
    pub http2_max_concurrent_streams: u32,
    /// Seconds between HTTP/2 PINGs on a connection, to notice a dead peer;
    /// 0 sends none.
    pub http2_keep_alive_interval_secs: u64,
    /// Seconds to wait for a PING's answer before closing the connection.
    pub http2_keep_alive_timeout_secs: u64,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0, 0, 0, 0], 3000)),
            paths: Vec::new(),
            max_body_bytes: 64 * MIB,
            max_decoded_bytes: 64 * MIB,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_header_bytes: 64 << 10,
            max_connections: 1024,
            bearer_token_file: PathBuf::new(),
            idle_timeout_secs: 120,
            http2_max_concurrent_streams: 100,
            http2_keep_alive_interval_secs: 30,
            http2_keep_alive_timeout_secs: 20,
        }
    }
}

/// Decoding limits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Largest event in bytes; 0 means no limit. A larger event is truncated
    /// like the API server's truncating backend does (`requestObject` and
    /// `responseObject` removed, annotation `audit.k8s.io/truncated: "true"`),
    /// and dropped (counted) if still too large. Its request is still accepted.
    pub max_event_bytes: usize,
}

/// Admission of a request's events into the sink queues.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Milliseconds a request waits for room in full queues before it is
    /// answered 503.
    pub admission_wait_ms: u64,
    /// Seconds sent in `Retry-After` with a 503.
    pub retry_after_secs: u64,
    /// Events in the largest batch the API server is expected to send (its
    /// `--audit-webhook-batch-max-size`, 400 by default); a `block` queue
    /// smaller than this is warned about. 0 turns the warning off.
    pub expected_batch_events: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            admission_wait_ms: 200,
            retry_after_secs: 1,
            expected_batch_events: 400,
        }
    }
}

/// Where accepted batches are kept until every sink has delivered them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// `memory` (a 200 means the batch is in every sink's queue in memory) or
    /// `disk` (a 200 means the batch is `fdatasync`ed to a write-ahead log).
    #[serde(rename = "type")]
    pub kind: BufferKind,
    /// Directory of the disk buffer's log; created if missing. One forwarder
    /// per directory.
    pub path: PathBuf,
    /// Most bytes the disk buffer's log files take; when a `block` sink's
    /// backlog would pass it, requests are answered 503, and a `drop_newest`
    /// sink that lags skips ahead instead.
    pub max_bytes: u64,
    /// Size in bytes at which a log file is closed and the next one begun;
    /// files are deleted whole once every sink has passed them.
    pub segment_bytes: u64,
    /// Milliseconds between saves of each sink's position in the log: after a
    /// crash a sink gets again at most what it delivered in that time (plus
    /// what was in flight).
    pub checkpoint_interval_ms: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            kind: BufferKind::Memory,
            path: PathBuf::from("/var/lib/kube-audit-forwarder/buffer"),
            max_bytes: 10 << 30,
            segment_bytes: 64 << 20,
            checkpoint_interval_ms: 500,
        }
    }
}

/// `buffer.type`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// Each sink's bounded queue in memory.
    #[default]
    Memory,
    /// A write-ahead log on disk shared by all sinks, one position per sink.
    Disk,
}

/// One sink, chosen by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkConfig {
    /// JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// HTTP(S) POSTs to one or more endpoints.
    Http(HttpSinkConfig),
    /// JSON lines over TCP, optionally TLS.
    Tcp(TcpSinkConfig),
    /// One Kafka message per event.
    Kafka(Box<KafkaSinkConfig>),
}

impl SinkConfig {
    /// The sink's name (unique; used in metrics and logs).
    pub fn name(&self) -> &str {
        match self {
            Self::Stdout(s) => &s.name,
            Self::Http(s) => &s.name,
            Self::Tcp(s) => &s.name,
            Self::Kafka(s) => &s.name,
        }
    }

    /// The sink's queue.
    pub fn queue(&self) -> &QueueConfig {
        match self {
            Self::Stdout(s) => &s.queue,
            Self::Http(s) => &s.queue,
            Self::Tcp(s) => &s.queue,
            Self::Kafka(s) => &s.queue,
        }
    }

    /// The processing of the sink's events.
    pub fn process(&self) -> &ProcessConfig {
        match self {
            Self::Stdout(s) => &s.process,
            Self::Http(s) => &s.process,
            Self::Tcp(s) => &s.process,
            Self::Kafka(s) => &s.process,
        }
    }
}

/// Sink types, for error messages.
const SINK_TYPES: &str = "`stdout`, `http`, `tcp`, `kafka`";

impl<'de> Deserialize<'de> for SinkConfig {
    /// Like `#[serde(tag = "type")]`, but an error inside the sink keeps its key
    /// path (serde's tagged enums buffer the content and lose it).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::deserialize(d)?;
        let kind = match map.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(D::Error::custom("`type` must be a string")),
            None => {
                return Err(D::Error::custom(format!(
                    "missing `type`, expected one of {SINK_TYPES}"
                )));
            }
        };
        let body = serde_json::Value::Object(map);
        match kind.as_str() {
            "stdout" => nested(body).map(Self::Stdout),
            "http" => nested(body).map(Self::Http),
            "tcp" => nested(body).map(Self::Tcp),
            "kafka" => nested(body).map(|k| Self::Kafka(Box::new(k))),
            other => Err(D::Error::custom(format!(
                "unknown sink type `{other}`, expected one of {SINK_TYPES}"
            ))),
        }
    }
}

/// Deserializes a sink's own keys; an error carries its path inside the sink as
/// `@path@ message`, which [`super::load`] joins to the outer key path.
fn nested<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    value: serde_json::Value,
) -> Result<T, E> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        E::custom(format!("@{path}@ {}", e.into_inner()))
    })
}

/// `type: stdout`: one event per line on the process's standard output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutSinkConfig {
    /// The sink's name.
    pub name: String,
    /// Its queue.
    pub queue: QueueConfig,
    /// Processing of its events.
    pub process: ProcessConfig,
}

impl Default for StdoutSinkConfig {
    fn default() -> Self {
        Self {
            name: "stdout".to_owned(),
            queue: QueueConfig::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// A sink's bounded queue.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most events held.
    pub capacity_events: usize,
    /// Most bytes held (request bodies, plus events re-encoded outside them).
    pub capacity_bytes: usize,
    /// `block` (refuse the request with 503) or `drop_newest` (accept it and drop
    /// this sink's copy, counted) when a batch does not fit.
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity_events: 100_000,
            capacity_bytes: 256 << 20,
            when_full: WhenFull::Block,
        }
    }
}

/// The metrics and health listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port for `/metrics`, `/healthz` and `/readyz`.
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([0, 0, 0, 0], 9090)),
        }
    }
}

/// Graceful shutdown on SIGTERM or SIGINT.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds to finish in-flight requests and drain the queues; keep it below
    /// the pod's `terminationGracePeriodSeconds`.
    pub deadline_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { deadline_secs: 25 }
    }
}

/// Logs, always on stderr.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `kube_audit_forwarder=debug,hyper=info`.
    /// `RUST_LOG` takes precedence when set.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Checks what types alone cannot, naming the key at fault.
    ///
    /// # Errors
    ///
    /// `(key path, message)` for the first problem found.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: &str| Err((key.to_owned(), msg.to_owned()));
        let http = &self.source.http;
        let listeners = [
            ("source.http.address", http.enabled, http.address),
            (
                "source.https.address",
                self.source.https.enabled,
                self.source.https.address,
            ),
            (
                "metrics.address",
                self.metrics.enabled,
                self.metrics.address,
            ),
        ];
        for (i, (key, on, addr)) in listeners.iter().enumerate() {
            let clash = listeners[..i]
                .iter()
                .find(|(_, o, a)| *o && *on && a.port() != 0 && a == addr);
            if let Some((other, _, _)) = clash {
                return err(key, &format!("{addr} is also {other}"));
            }
        }
        if !http.enabled && !self.source.https.enabled {
            return err(
                "source.http.enabled",
                "no source is enabled; enable source.http or source.https",
            );
        }
        self.source.https.validate()?;
        if http.max_body_bytes == 0 || http.max_body_bytes > u64::from(u32::MAX) {
            return err("source.http.max_body_bytes", "must be from 1 to 4294967295");
        }
        if http.max_decoded_bytes == 0 || http.max_decoded_bytes > u64::from(u32::MAX) {
            return err(
                "source.http.max_decoded_bytes",
                "must be from 1 to 4294967295",
            );
        }
        if let Some((i, _)) = http
            .paths
            .iter()
            .enumerate()
            .find(|(_, p)| !p.starts_with('/'))
        {
            return err(&format!("source.http.paths[{i}]"), "must start with '/'");
        }
        for (key, value) in [
            (
                "source.http.header_read_timeout_secs",
                http.header_read_timeout_secs as usize,
            ),
            (
                "source.http.body_read_timeout_secs",
                http.body_read_timeout_secs as usize,
            ),
            ("source.http.max_header_bytes", http.max_header_bytes),
            ("source.http.max_connections", http.max_connections),
            (
                "source.http.idle_timeout_secs",
                http.idle_timeout_secs as usize,
            ),
            (
                "source.http.http2_max_concurrent_streams",
                http.http2_max_concurrent_streams as usize,
            ),
            (
                "source.http.http2_keep_alive_timeout_secs",
                http.http2_keep_alive_timeout_secs as usize,
            ),
            (
                "shutdown.deadline_secs",
                self.shutdown.deadline_secs as usize,
            ),
        ] {
            if value == 0 {
                return err(key, "must be greater than 0");
            }
        }
        if http.max_header_bytes < 8192 {
            return err("source.http.max_header_bytes", "must be at least 8192");
        }
        if self.sinks.is_empty() {
            return err("sinks", "at least one sink is needed");
        }
        self.validate_buffer()?;
        for (i, sink) in self.sinks.iter().enumerate() {
            if sink.name().is_empty() {
                return err(&format!("sinks[{i}].name"), "must not be empty");
            }
            if self.sinks[..i].iter().any(|s| s.name() == sink.name()) {
                return err(
                    &format!("sinks[{i}].name"),
                    &format!("sink name {:?} is used twice", sink.name()),
                );
            }
            if sink.queue().capacity_events == 0 {
                return err(
                    &format!("sinks[{i}].queue.capacity_events"),
                    "must be greater than 0",
                );
            }
            let prefix = format!("sinks[{i}]");
            sink.process().validate(&prefix)?;
            match sink {
                SinkConfig::Stdout(_) => {}
                SinkConfig::Http(h) => h.validate(&prefix)?,
                SinkConfig::Tcp(t) => t.validate(&prefix)?,
                SinkConfig::Kafka(k) => k.validate(&prefix)?,
            }
            if (sink.queue().capacity_bytes as u64)
                < http.max_decoded_bytes.min(http.max_body_bytes)
            {
                return err(
                    &format!("sinks[{i}].queue.capacity_bytes"),
                    "must be at least source.http.max_decoded_bytes, or a full-size request could never be queued",
                );
            }
        }
        // A bare word that is not a level parses as a target name and would
        // silence every log line: `inf` for `info`.
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let bare_word_not_a_level = self.log.level.split(',').map(str::trim).any(|d| {
            !d.is_empty()
                && !d.contains(['=', '[', ':'])
                && !LEVELS.contains(&d.to_ascii_lowercase().as_str())
        });
        if bare_word_not_a_level
            || self
                .log
                .level
                .parse::<tracing_subscriber::EnvFilter>()
                .is_err()
        {
            return err(
                "log.level",
                "not a valid tracing filter (a level: trace, debug, info, warn, error, off; or target=level pairs)",
            );
        }
        Ok(())
    }

    /// What is valid but likely to lose events, one message per problem,
    /// naming the key: a `block` queue that holds fewer events than
    /// `pipeline.expected_batch_events` answers every full-size batch 413,
    /// and the API server drops a batch after its retries.
    pub fn warnings(&self) -> Vec<String> {
        let batch = self.pipeline.expected_batch_events;
        self.sinks
            .iter()
            .enumerate()
            .filter(|(_, s)| s.queue().when_full == WhenFull::Block)
            .filter(|(_, s)| s.queue().capacity_events < batch)
            .map(|(i, s)| {
                format!(
                    "sinks[{i}].queue.capacity_events: {} (sink {:?}) is below pipeline.expected_batch_events ({batch}): a batch of {batch} events would be refused with 413 too_many_events and dropped by the API server after its retries; raise capacity_events or lower the API server's --audit-webhook-batch-max-size",
                    s.queue().capacity_events,
                    s.name(),
                )
            })
            .collect()
    }

    fn validate_buffer(&self) -> Result<(), (String, String)> {
        let b = &self.buffer;
        if b.kind != BufferKind::Disk {
            return Ok(());
        }
        let err = |key: &str, msg: String| Err((format!("buffer.{key}"), msg));
        if b.path.as_os_str().is_empty() {
            return err("path", "must be set when buffer.type is disk".into());
        }
        if b.segment_bytes < MIB {
            return err("segment_bytes", "must be at least 1048576 (1 MiB)".into());
        }
        let body = self.source.http.max_decoded_bytes;
        let least = (2 * b.segment_bytes).max(2 * body);
        if b.max_bytes < least {
            return err(
                "max_bytes",
                format!(
                    "must be at least {least}: twice segment_bytes and twice source.http.max_decoded_bytes, so that a full-size request always fits beside a file being emptied"
                ),
            );
        }
        if b.checkpoint_interval_ms == 0 {
            return err("checkpoint_interval_ms", "must be greater than 0".into());
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            if !sink
                .name()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || sink.name().starts_with('.')
            {
                return Err((
                    format!("sinks[{i}].name"),
                    "with buffer.type disk a sink name names its position file: use letters, digits, '-', '_' and '.' (not first)".into(),
                ));
            }
        }
        Ok(())
    }
}
