//! The configuration of the network sinks (`type: http`, `type: tcp`) and of
//! their TLS client side.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    ElasticsearchConfig, ProcessConfig, QueueConfig, SplunkHecConfig, SyslogConfig, TcpEncoding,
};

/// `type: http`: POSTs to one or more HTTP(S) endpoints (a Logstash `http`
/// input, an external collector), like HAProxy relaying the webhook.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkConfig {
    /// The sink's name.
    pub name: String,
    /// URLs to POST to (`http://` or `https://`); at least one.
    pub endpoints: Vec<String>,
    /// How requests are spread over the endpoints.
    pub balance: Balance,
    /// What each request carries.
    pub encoding: Encoding,
    /// Re-batching for every encoding but `passthrough`.
    pub batch: BatchConfig,
    /// Request body compression.
    pub compression: Compression,
    /// With `encoding: passthrough`, append each webhook request's path and
    /// query (`/post?timeout=30s`) to the endpoint URL's path and query, as
    /// HAProxy relays the path it received; otherwise every request goes to
    /// the endpoint URL as written.
    pub forward_path: bool,
    /// With `encoding: elasticsearch`: index and credentials.
    pub elasticsearch: Box<ElasticsearchConfig>,
    /// With `encoding: splunk_hec`: token, envelope fields, acknowledgement.
    pub splunk_hec: Box<SplunkHecConfig>,
    /// Extra request headers (an `Authorization` token, say).
    pub headers: BTreeMap<String, HeaderValueConfig>,
    /// Requests in flight at once with `encoding: passthrough` (one per
    /// webhook batch) and with `splunk_hec.ack` (awaiting acknowledgement);
    /// the other re-batching encodings send one at a time. The default, 16,
    /// matches what one API server sends at once (its throttle's burst of
    /// 15 batches, each POSTed on its own): a relay that sends fewer at once
    /// than arrive piles them up in its queue and then answers 503, while
    /// the destination could take them.
    pub max_in_flight: usize,
    /// Seconds one request may take, connecting included.
    pub timeout_secs: u64,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: u64,
    /// HTTP version: `auto` (HTTP/1.1, or h2 when TLS ALPN agrees),
    /// `http1` (never h2), `http2` (h2 only, prior knowledge on plain HTTP).
    pub http_version: HttpVersion,
    /// Active health checks, like HAProxy's `check`; none when absent.
    pub health_check: Option<HealthCheckConfig>,
    /// Consecutive failed requests after which an endpoint is taken out of
    /// rotation until a health check (or, without one, `eject_secs`) brings it back.
    pub max_failures: u32,
    /// Seconds an endpoint stays out of rotation when there is no health check.
    pub eject_secs: u64,
    /// Retries.
    pub retry: RetryConfig,
    /// JSON-lines file for events an endpoint rejected for good; none when absent.
    pub dead_letter_file: Option<PathBuf>,
    /// TLS for `https://` endpoints.
    pub tls: ClientTlsConfig,
    /// Its queue.
    pub queue: QueueConfig,
    /// Processing of its events.
    pub process: ProcessConfig,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        Self {
            name: "http".to_owned(),
            endpoints: Vec::new(),
            balance: Balance::Failover,
            encoding: Encoding::Passthrough,
            batch: BatchConfig::default(),
            compression: Compression::AsReceived,
            forward_path: false,
            elasticsearch: Box::default(),
            splunk_hec: Box::default(),
            headers: BTreeMap::new(),
            max_in_flight: 16,
            timeout_secs: 10,
            connect_timeout_secs: 5,
            http_version: HttpVersion::Auto,
            health_check: None,
            max_failures: 3,
            eject_secs: 10,
            retry: RetryConfig::default(),
            dead_letter_file: None,
            tls: ClientTlsConfig::default(),
            queue: QueueConfig::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// `type: tcp`: JSON lines (one event per line) over a TCP connection,
/// optionally TLS, like a Logstash `tcp` input with the `json_lines` codec;
/// or, with `encoding: syslog`, RFC 5424 syslog messages.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSinkConfig {
    /// The sink's name.
    pub name: String,
    /// `host:port` to connect to.
    pub endpoint: String,
    /// Seconds to establish a connection (TLS handshake included).
    pub connect_timeout_secs: u64,
    /// Reconnection backoff.
    pub retry: RetryConfig,
    /// Milliseconds after writing during which events are re-sent if the
    /// connection is reset: TCP gives no acknowledgement, so a reset soon after a
    /// write may have lost it (delivery is at least once).
    pub resend_window_ms: u64,
    /// TLS, when `enabled`.
    pub tls: ClientTlsConfig,
    /// What goes on the wire for each event: `json_lines` or `syslog`.
    pub encoding: TcpEncoding,
    /// The syslog messages, with `encoding: syslog`.
    pub syslog: SyslogConfig,
    /// JSON-lines file for events the encoding refuses (a syslog message
    /// over `syslog.max_message_bytes`); none when absent.
    pub dead_letter_file: Option<PathBuf>,
    /// Its queue.
    pub queue: QueueConfig,
    /// Processing of its events.
    pub process: ProcessConfig,
}

impl Default for TcpSinkConfig {
    fn default() -> Self {
        Self {
            name: "tcp".to_owned(),
            endpoint: String::new(),
            connect_timeout_secs: 5,
            retry: RetryConfig::default(),
            resend_window_ms: 200,
            tls: ClientTlsConfig::default(),
            encoding: TcpEncoding::JsonLines,
            syslog: SyslogConfig::default(),
            dead_letter_file: None,
            queue: QueueConfig::default(),
            process: ProcessConfig::default(),
        }
    }
}

/// How an HTTP sink spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Always the first healthy endpoint in the list.
    Failover,
    /// Each healthy endpoint in turn.
    RoundRobin,
}

/// What one request of an HTTP sink carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Each webhook request's body unchanged, one POST per webhook batch,
    /// `Content-Type: application/json`: what HAProxy relays (see
    /// [`Compression`] for a gzip body, and `forward_path` for the path).
    Passthrough,
    /// Events re-batched as JSON lines, `Content-Type: application/x-ndjson`.
    Ndjson,
    /// Events re-batched as one JSON array, `Content-Type: application/json`.
    JsonArray,
    /// Events re-batched as Elasticsearch/OpenSearch `_bulk` `create`
    /// actions (see [`ElasticsearchConfig`]).
    Elasticsearch,
    /// Events re-batched as Splunk HEC event envelopes (see [`SplunkHecConfig`]).
    SplunkHec,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// With `encoding: passthrough`, each body as the API server sent it: a
    /// body that came with `Content-Encoding: gzip` is relayed in its
    /// received gzip bytes with that header, any other body uncompressed.
    /// With the re-batching encodings, the same as `none`.
    AsReceived,
    /// Uncompressed: a gzip webhook body is relayed decompressed.
    None,
    /// gzip, with `Content-Encoding: gzip`; a webhook body that came gzipped
    /// is relayed in its received bytes.
    Gzip,
}

/// HTTP version choice of an HTTP sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    /// HTTP/1.1, or h2 when TLS ALPN agrees on it.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// h2 only (prior knowledge on plain HTTP).
    Http2,
}

/// Re-batching of events for every encoding but `passthrough`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most events per request.
    pub max_events: usize,
    /// Most bytes of events per request (a single larger event goes alone).
    pub max_bytes: usize,
    /// Milliseconds a partial batch waits for more events.
    pub timeout_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 1000,
            max_bytes: 4 << 20,
            timeout_ms: 200,
        }
    }
}

/// A header value, given inline or read at start-up from a file or an
/// environment variable (for tokens). Exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderValueConfig {
    /// The value itself.
    pub value: Option<String>,
    /// A file whose content (trailing newline removed) is the value.
    pub value_from_file: Option<PathBuf>,
    /// An environment variable whose value is the value.
    pub value_from_env: Option<String>,
}

/// Active health checks of an HTTP sink's endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path GET on each endpoint's host; any 2xx or 3xx is healthy.
    pub path: String,
    /// Seconds between checks.
    pub interval_secs: u64,
    /// Seconds one check may take.
    pub timeout_secs: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            path: "/".to_owned(),
            interval_secs: 5,
            timeout_secs: 2,
        }
    }
}

/// Retries with exponential backoff and jitter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Milliseconds before the first retry; doubled each time.
    pub initial_backoff_ms: u64,
    /// Longest pause in seconds.
    pub max_backoff_secs: u64,
    /// Response statuses that are retried even when `reject_statuses` names
    /// them (HTTP sink): codes like `429` or classes like `5xx`. Connection
    /// errors, timeouts, and any status neither list names are retried too.
    pub retry_statuses: Vec<String>,
    /// Response statuses that say the events themselves are refused (HTTP
    /// sink): the request is split to find the bad events, which are
    /// dead-lettered. 401, 403 and 407 are about the sink's credentials, not
    /// the events, and are always retried.
    pub reject_statuses: Vec<String>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 100,
            max_backoff_secs: 30,
            retry_statuses: vec!["408".into(), "429".into(), "5xx".into()],
            reject_statuses: vec!["400".into(), "413".into(), "415".into(), "422".into()],
        }
    }
}

/// The TLS client side of a sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// For the `tcp` sink: whether to use TLS at all (an `https://` URL decides
    /// for the `http` sink).
    pub enabled: bool,
    /// PEM CA certificates to trust; the Mozilla roots built in when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mTLS); needs `key_file`.
    pub crt_file: Option<PathBuf>,
    /// PEM private key of `crt_file`.
    pub key_file: Option<PathBuf>,
    /// Name to send (SNI) and verify instead of the endpoint's host, for
    /// endpoints given by IP address.
    pub server_name: Option<String>,
    /// Whether the server certificate must name the host; the chain is always
    /// verified.
    pub verify_hostname: bool,
}

impl Default for ClientTlsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ca_file: None,
            crt_file: None,
            key_file: None,
            server_name: None,
            verify_hostname: true,
        }
    }
}

/// A `retry_statuses` entry: one code, or a class like `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    /// Exactly this code.
    Code(u16),
    /// Every code of this hundred (`5` for `5xx`).
    Class(u16),
}

impl StatusPattern {
    /// Parses `429` or `5xx`.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(class) = t.strip_suffix("xx") {
            return class
                .parse()
                .ok()
                .filter(|c| (1..=5).contains(c))
                .map(Self::Class);
        }
        t.parse()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .map(Self::Code)
    }

    /// Whether `status` matches.
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            Self::Code(c) => c == status,
            Self::Class(c) => status / 100 == c,
        }
    }
}

fn missing(key: &str, msg: &str) -> Result<(), (String, String)> {
    Err((key.to_owned(), msg.to_owned()))
}

impl ClientTlsConfig {
    /// Checks for half an identity and unreadable names.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        match (&self.crt_file, &self.key_file) {
            (Some(_), None) => {
                return missing(
                    &format!("{prefix}.key_file"),
                    "crt_file is set but key_file is not",
                );
            }
            (None, Some(_)) => {
                return missing(
                    &format!("{prefix}.crt_file"),
                    "key_file is set but crt_file is not",
                );
            }
            _ => {}
        }
        if self
            .server_name
            .as_deref()
            .is_some_and(|n| rustls_pki_types::ServerName::try_from(n).is_err())
        {
            return missing(
                &format!("{prefix}.server_name"),
                "not a valid DNS name or IP address",
            );
        }
        Ok(())
    }
}

impl HttpSinkConfig {
    /// Checks what types alone cannot.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.endpoints.is_empty() {
            return missing(
                &format!("{prefix}.endpoints"),
                "at least one endpoint URL is needed",
            );
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return missing(
                        &format!("{prefix}.endpoints[{i}]"),
                        "must be an http:// or https:// URL with a host",
                    );
                }
            }
        }
        if self.max_in_flight == 0 {
            return missing(&format!("{prefix}.max_in_flight"), "must be greater than 0");
        }
        if self.batch.max_events == 0 || self.batch.max_bytes == 0 {
            return missing(
                &format!("{prefix}.batch"),
                "max_events and max_bytes must be greater than 0",
            );
        }
        if self.timeout_secs == 0 || self.connect_timeout_secs == 0 {
            return missing(
                &format!("{prefix}.timeout_secs"),
                "timeouts must be greater than 0",
            );
        }
        if let Some(h) = &self.health_check
            && (!h.path.starts_with('/') || h.interval_secs == 0 || h.timeout_secs == 0)
        {
            return missing(
                &format!("{prefix}.health_check"),
                "path must start with '/', interval and timeout above 0",
            );
        }
        for (name, v) in &self.headers {
            let key = format!("{prefix}.headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return missing(&key, "not a valid header name");
            }
            let given = [
                v.value.is_some(),
                v.value_from_file.is_some(),
                v.value_from_env.is_some(),
            ];
            if given.iter().filter(|&&g| g).count() != 1 {
                return missing(
                    &key,
                    "give exactly one of value, value_from_file, value_from_env",
                );
            }
        }
        match self.encoding {
            Encoding::Elasticsearch => self
                .elasticsearch
                .validate(&format!("{prefix}.elasticsearch"))?,
            Encoding::SplunkHec => self.splunk_hec.validate(&format!("{prefix}.splunk_hec"))?,
            _ => {}
        }
        self.retry.validate(&format!("{prefix}.retry"))?;
        self.tls.validate(&format!("{prefix}.tls"))
    }
}

impl TcpSinkConfig {
    /// Checks what types alone cannot.
    ///
    /// # Errors
    ///
    /// `(key under prefix, message)`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let ok = self
            .endpoint
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return missing(&format!("{prefix}.endpoint"), "must be host:port");
        }
        if self.connect_timeout_secs == 0 {
            return missing(
                &format!("{prefix}.connect_timeout_secs"),
                "must be greater than 0",
            );
        }
        self.retry.validate(&format!("{prefix}.retry"))?;
        if self.encoding == TcpEncoding::JsonLines && self.syslog != SyslogConfig::default() {
            return missing(
                &format!("{prefix}.syslog"),
                "is used only with encoding: syslog",
            );
        }
        self.syslog.validate(&format!("{prefix}.syslog"))?;
        self.tls.validate(&format!("{prefix}.tls"))
    }
}

impl RetryConfig {
    pub(super) fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        if self.initial_backoff_ms == 0 || self.max_backoff_secs == 0 {
            return missing(
                prefix,
                "initial_backoff_ms and max_backoff_secs must be greater than 0",
            );
        }
        for (key, list) in [
            ("retry_statuses", &self.retry_statuses),
            ("reject_statuses", &self.reject_statuses),
        ] {
            for (i, s) in list.iter().enumerate() {
                if StatusPattern::parse(s).is_none() {
                    return missing(
                        &format!("{prefix}.{key}[{i}]"),
                        "must be a status code like 429 or a class like 5xx",
                    );
                }
            }
        }
        Ok(())
    }
}
