//! The librdkafka producer behind the `kafka` sink: its settings from the
//! sink's configuration (names as in librdkafka's `CONFIGURATION.md`), and a
//! client context that sends librdkafka's log lines and errors to `tracing`
//! and the sink's connection metrics.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaAcks, KafkaCompression, KafkaSinkConfig, SaslMechanism};
use crate::metrics::SinkMetrics;

/// The producer type the sink uses.
pub(crate) type Producer = FutureProducer<Context>;

/// Routes librdkafka's callbacks to the sink's logs and metrics.
pub(crate) struct Context {
    sink: String,
    metrics: SinkMetrics,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(sink = %self.sink, facility = fac, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(sink = %self.sink, facility = fac, "librdkafka: {message}");
            }
            _ => tracing::debug!(sink = %self.sink, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.metrics.connection_error("down");
                tracing::warn!(sink = %self.sink, "no broker can be reached: {reason}");
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                self.metrics.connection_error("transport");
                tracing::debug!(sink = %self.sink, "broker connection failed: {reason}");
            }
            Some(
                RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::SSL,
            ) => {
                self.metrics.connection_error("auth");
                tracing::error!(sink = %self.sink, "broker refused the connection: {reason}");
            }
            _ => tracing::warn!(sink = %self.sink, error = %error, "{reason}"),
        }
    }
}

/// The `reason`s [`Context`] counts in `audit_forwarder_connection_errors_total`.
pub(crate) const CONNECTION_REASONS: &[&str] = &["down", "transport", "auth"];

/// What a producer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The sink's producer, batching as configured.
    Main,
    /// One message per request, to tell which messages of a batch the
    /// broker refused.
    Solo,
}

/// Creates a producer for `cfg`, reading its password file.
///
/// # Errors
///
/// A password file that cannot be read, or a setting librdkafka refuses,
/// named.
pub(crate) fn producer(
    cfg: &KafkaSinkConfig,
    role: Role,
    metrics: &SinkMetrics,
) -> anyhow::Result<Producer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.endpoints.join(","))
        .set("client.id", "kube-audit-forwarder")
        .set(
            "acks",
            match cfg.acks {
                KafkaAcks::All => "all",
                KafkaAcks::Leader => "1",
            },
        )
        .set("enable.idempotence", cfg.idempotence.to_string())
        .set("message.max.bytes", cfg.message_max_bytes.to_string())
        .set(
            "compression.type",
            match cfg.compression {
                KafkaCompression::None => "none",
                KafkaCompression::Gzip => "gzip",
                KafkaCompression::Lz4 => "lz4",
                KafkaCompression::Zstd => "zstd",
            },
        )
        .set(
            "message.timeout.ms",
            (cfg.delivery_timeout_secs * 1000).to_string(),
        )
        .set(
            "socket.connection.setup.timeout.ms",
            (cfg.connect_timeout_secs * 1000).to_string(),
        )
        .set("retry.backoff.ms", cfg.retry.initial_backoff_ms.to_string())
        .set(
            "retry.backoff.max.ms",
            (cfg.retry.max_backoff_secs * 1000)
                .max(cfg.retry.initial_backoff_ms)
                .to_string(),
        )
        .set(
            "reconnect.backoff.ms",
            cfg.retry.initial_backoff_ms.to_string(),
        )
        .set(
            "reconnect.backoff.max.ms",
            (cfg.retry.max_backoff_secs * 1000)
                .max(cfg.retry.initial_backoff_ms)
                .to_string(),
        )
        // The sink bounds what it hands over; librdkafka's own queue only
        // needs room for that.
        .set(
            "queue.buffering.max.messages",
            (cfg.max_in_flight_events.saturating_mul(2))
                .clamp(1000, 10_000_000)
                .to_string(),
        );
    match role {
        Role::Main => c
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("batch.size", cfg.batch_max_bytes.to_string())
            .set("batch.num.messages", cfg.batch_max_events.to_string()),
        Role::Solo => c
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("max.in.flight.requests.per.connection", "1"),
    };
    security(cfg, &mut c)?;
    c.set_log_level(RDKafkaLogLevel::Warning);
    let context = Context {
        sink: cfg.name.clone(),
        metrics: metrics.clone(),
    };
    c.create_with_context(context)
        .context("librdkafka refused the producer settings")
}

/// `security.protocol` and the TLS and SASL settings.
fn security(cfg: &KafkaSinkConfig, c: &mut ClientConfig) -> anyhow::Result<()> {
    let protocol = match (cfg.tls.enabled, cfg.sasl.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if cfg.tls.enabled {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &cfg.tls.ca_file {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(crt), Some(key)) = (&cfg.tls.crt_file, &cfg.tls.key_file) {
            c.set("ssl.certificate.location", path(crt))
                .set("ssl.key.location", path(key));
        }
        c.set(
            "ssl.endpoint.identification.algorithm",
            if cfg.tls.verify_hostname {
                "https"
            } else {
                "none"
            },
        );
    }
    if let Some(sasl) = &cfg.sasl {
        let password = std::fs::read_to_string(&sasl.password_file).with_context(|| {
            format!(
                "failed to read sasl.password_file {}",
                sasl.password_file.display()
            )
        })?;
        c.set(
            "sasl.mechanism",
            match sasl.mechanism {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            },
        )
        .set("sasl.username", &sasl.username)
        .set("sasl.password", password.trim_end_matches(['\r', '\n']));
    }
    Ok(())
}

/// The files a producer reads when it is created (TLS, SASL password), and
/// when each last changed: when that changes, the producer is made again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files(Vec<(PathBuf, Option<SystemTime>, u64)>);

impl Files {
    /// The files of `cfg` as they are now.
    pub(crate) fn of(cfg: &KafkaSinkConfig) -> Self {
        let mut paths: Vec<&PathBuf> = Vec::new();
        if cfg.tls.enabled {
            paths.extend(
                [&cfg.tls.ca_file, &cfg.tls.crt_file, &cfg.tls.key_file]
                    .into_iter()
                    .flatten(),
            );
        }
        paths.extend(cfg.sasl.as_ref().map(|s| &s.password_file));
        Self(
            paths
                .into_iter()
                .map(|p| {
                    let m = std::fs::metadata(p).ok();
                    (
                        p.clone(),
                        m.as_ref().and_then(|m| m.modified().ok()),
                        m.map_or(0, |m| m.len()),
                    )
                })
                .collect(),
        )
    }

    /// Whether there are files to watch.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
