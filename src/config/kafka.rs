//! The configuration of the `kafka` sink: a producer to Apache Kafka (or any
//! broker that speaks its protocol), with its topic, key, batching,
//! compression, TLS and SASL settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ClientTlsConfig, ProcessConfig, QueueConfig, RetryConfig};

/// `type: kafka`: each event is one Kafka message whose value is the event's
/// own JSON bytes, produced with `acks=all` and idempotence by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// The sink's name.
    pub name: String,
    /// Bootstrap brokers, `host:port`; at least one.
    pub endpoints: Vec<String>,
    /// The topic, or a template for a topic per event: `{level}`, `{stage}`,
    /// `{verb}`, `{namespace}`, `{resource}` and `{user}` are replaced with
    /// that field of the event (`audit-{level}` → `audit-Metadata`). A
    /// character a topic name cannot hold becomes `_`; an event without the
    /// field gets `topic_field_missing`.
    pub topic: String,
    /// What a template field becomes when the event lacks it (a
    /// cluster-scoped request has no namespace).
    pub topic_field_missing: String,
    /// The message key: `audit_id` (the default; an event's stages stay in
    /// one partition, in order), `none` (spread by the partitioner), or one of
    /// `level`, `stage`, `verb`, `namespace`, `resource`, `user`.
    pub key: KafkaKey,
    /// `all` (every in-sync replica has the message; the default and what
    /// idempotence needs) or `leader`.
    pub acks: KafkaAcks,
    /// Idempotent producing: the broker drops a message the producer sent
    /// twice after a lost answer (`enable.idempotence`).
    pub idempotence: bool,
    /// Milliseconds the producer waits to fill a batch (`linger.ms`).
    pub linger_ms: u64,
    /// Most bytes of messages in one batch to one partition (`batch.size`).
    pub batch_max_bytes: usize,
    /// Most messages in one batch (`batch.num.messages`).
    pub batch_max_events: usize,
    /// Largest message in bytes the producer sends (`message.max.bytes`); a
    /// larger event is dead-lettered without being sent. Keep it at or below
    /// the topic's `max.message.bytes`.
    pub message_max_bytes: usize,
    /// Batch compression: `none`, `gzip`, `lz4` (the default) or `zstd`.
    pub compression: KafkaCompression,
    /// Events handed to the producer and not yet acknowledged, at most: past
    /// it the sink takes no more batches from its queue (back-pressure).
    pub max_in_flight_events: usize,
    /// Seconds the producer keeps retrying one message before reporting it
    /// failed (`message.timeout.ms`); the sink then produces it again.
    pub delivery_timeout_secs: u64,
    /// Seconds to establish a connection to a broker (`socket.connection.setup.timeout.ms`).
    pub connect_timeout_secs: u64,
    /// Backoff of the producer's retries and reconnects (`retry.backoff.ms`,
    /// `reconnect.backoff.ms` and their maxima).
    pub retry: RetryConfig,
    /// JSON-lines file for events a broker refused for good (too large,
    /// invalid); none when absent.
    pub dead_letter_file: Option<PathBuf>,
    /// TLS, when `enabled` (`security.protocol` `ssl` or `sasl_ssl`);
    /// without `ca_file`, OpenSSL's system CA store. `server_name` is not
    /// supported.
    pub tls: ClientTlsConfig,
    /// SASL authentication; none when absent.
    pub sasl: Option<SaslConfig>,
    /// Its queue.
    pub queue: QueueConfig,
    /// Processing of its events.
    pub process: ProcessConfig,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            name: "kafka".to_owned(),
            endpoints: Vec::new(),
            topic: "kube-audit".to_owned(),
            topic_field_missing: "none".to_owned(),
            key: KafkaKey::AuditId,
            acks: KafkaAcks::All,
            idempotence: true,
            linger_ms: 5,
            batch_max_bytes: 1 << 20,
            batch_max_events: 10_000,
            message_max_bytes: 1_000_000,
            compression: KafkaCompression::Lz4,
            max_in_flight_events: 10_000,
            delivery_timeout_secs: 30,
            connect_timeout_secs: 5,
            retry: RetryConfig::default(),
            dead_letter_file: None,
            tls: ClientTlsConfig::default(),
            sasl: None,
            queue: QueueConfig::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// What a Kafka message's key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// No key.
    None,
    /// `auditID`.
    AuditId,
    /// `level`.
    Level,
    /// `stage`.
    Stage,
    /// `verb`.
    Verb,
    /// `objectRef.namespace`.
    Namespace,
    /// `objectRef.resource`.
    Resource,
    /// `user.username`.
    User,
}

/// Which acknowledgement the producer waits for (`acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAcks {
    /// Every in-sync replica (`acks=all`).
    All,
    /// The partition leader alone (`acks=1`): a leader lost before its
    /// followers copied the message loses it.
    Leader,
}

/// Kafka batch compression (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// SASL authentication to the brokers, over TLS when `tls.enabled`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `plain`, `scram_sha_256` or `scram_sha_512`.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// A file whose content (trailing newline removed) is the password,
    /// read at start-up and on reload.
    pub password_file: PathBuf,
}

/// A SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaslMechanism {
    /// `PLAIN` (RFC 4616): the password in clear, so only over TLS.
    Plain,
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677).
    #[serde(rename = "scram_sha_256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "scram_sha_512")]
    ScramSha512,
}

/// The fields a topic template may name.
pub const TOPIC_FIELDS: &[&str] = &["level", "stage", "verb", "namespace", "resource", "user"];

fn missing(key: &str, msg: &str) -> Result<(), (String, String)> {
    Err((key.to_owned(), msg.to_owned()))
}

/// Whether `name` may be (part of) a Kafka topic name: ASCII letters,
/// digits, `.`, `_` and `-` (Kafka's `Topic.validate`).
pub fn topic_chars_ok(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaSinkConfig {
    /// Checks what types alone cannot.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.endpoints.is_empty() {
            return missing(
                &format!("{prefix}.endpoints"),
                "at least one broker host:port is needed",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || e.contains(',') {
                return missing(&format!("{prefix}.endpoints[{i}]"), "must be host:port");
            }
        }
        self.validate_topic(prefix)?;
        if !topic_chars_ok(&self.topic_field_missing) || self.topic_field_missing.is_empty() {
            return missing(
                &format!("{prefix}.topic_field_missing"),
                "must be letters, digits, '.', '_' or '-'",
            );
        }
        if self.idempotence && self.acks != KafkaAcks::All {
            return missing(&format!("{prefix}.acks"), "idempotence needs acks: all");
        }
        for (key, v) in [
            ("batch_max_bytes", self.batch_max_bytes),
            ("batch_max_events", self.batch_max_events),
            ("message_max_bytes", self.message_max_bytes),
            ("max_in_flight_events", self.max_in_flight_events),
            ("delivery_timeout_secs", self.delivery_timeout_secs as usize),
            ("connect_timeout_secs", self.connect_timeout_secs as usize),
        ] {
            if v == 0 {
                return missing(&format!("{prefix}.{key}"), "must be greater than 0");
            }
        }
        if self.message_max_bytes > 1_000_000_000 || self.batch_max_bytes > 2_147_483_647 {
            return missing(
                &format!("{prefix}.message_max_bytes"),
                "must be at most 1000000000 (batch_max_bytes at most 2147483647)",
            );
        }
        if let Some(s) = &self.sasl
            && s.username.is_empty()
        {
            return missing(&format!("{prefix}.sasl.username"), "must not be empty");
        }
        if self.tls.server_name.is_some() {
            return missing(
                &format!("{prefix}.tls.server_name"),
                "not supported by the kafka sink: give the brokers by the names their certificates hold",
            );
        }
        self.retry.validate(&format!("{prefix}.retry"))?;
        self.tls.validate(&format!("{prefix}.tls"))
    }

    fn validate_topic(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = format!("{prefix}.topic");
        let mut rest = self.topic.as_str();
        let mut literal = String::new();
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                return missing(&key, "a '{' without its '}'");
            };
            let field = &rest[open + 1..open + close];
            if !TOPIC_FIELDS.contains(&field) {
                return missing(
                    &key,
                    &format!(
                        "unknown field {{{field}}}; expected one of {}",
                        TOPIC_FIELDS.join(", ")
                    ),
                );
            }
            rest = &rest[open + close + 1..];
        }
        literal.push_str(rest);
        if self.topic.is_empty() || !topic_chars_ok(&literal) {
            return missing(
                &key,
                "must be a topic name (letters, digits, '.', '_', '-') with optional {field}s",
            );
        }
        Ok(())
    }
}
