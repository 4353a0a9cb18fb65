//! Sinks: where events are delivered. A closed set, built from the `sinks`
//! config; each runs as one task that ends when its queue is closed and drained.

mod acked;
pub mod deadletter;
pub mod encode;
pub mod fd;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod retry;
pub mod stdout;
pub mod tcp;

use tokio::io::AsyncWrite;

use crate::pipeline::QueueReader;
pub use http::HttpSink;
#[cfg(feature = "kafka")]
pub use kafka::KafkaSink;
pub use stdout::StdoutSink;
pub use tcp::TcpSink;

/// A writer the stdout sink can own.
pub type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A built sink, ready to run.
pub enum Sink {
    /// JSON lines to stdout (or the writer given in its place).
    Stdout(StdoutSink<BoxWriter>),
    /// HTTP(S) POSTs.
    Http(Box<HttpSink>),
    /// JSON lines over TCP.
    Tcp(TcpSink),
    /// One Kafka message per event.
    #[cfg(feature = "kafka")]
    Kafka(Box<KafkaSink>),
}

impl Sink {
    /// The sink's TLS client settings, if it has any (for certificate
    /// watching and expiry metrics).
    pub fn tls(&self) -> Option<&crate::tls::OutboundTls> {
        match self {
            Self::Stdout(_) => None,
            Self::Http(s) => s.tls(),
            Self::Tcp(s) => s.tls(),
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.tls(),
        }
    }

    /// The `reason`s this sink counts in `audit_forwarder_error_total` and in
    /// `audit_forwarder_connection_errors_total`, so that they can be
    /// exported at 0 from the start.
    pub fn reasons(&self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Stdout(_) => (&["write"], &[]),
            Self::Http(_) => (
                &[
                    "connect",
                    "timeout",
                    "connection",
                    "unauthorized",
                    "http_4xx",
                    "http_5xx",
                    "bad_response",
                    "ack_timeout",
                ],
                &["connect", "timeout", "connection"],
            ),
            Self::Tcp(_) => (
                &["connect", "timeout", "connection", "message_too_long"],
                &["connect", "timeout", "closed", "broken"],
            ),
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => KafkaSink::reasons(),
        }
    }

    /// Delivers every batch of `input` until the queue is closed and drained.
    pub async fn run(self, input: QueueReader) {
        match self {
            Self::Stdout(s) => s.run(input).await,
            Self::Http(s) => s.run(input).await,
            Self::Tcp(s) => s.run(input).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.run(input).await,
        }
    }
}
