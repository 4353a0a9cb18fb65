//! Sinks: where events are delivered. A closed set, built from the `sinks`
//! config; each runs as one task that ends when its queue is closed and drained.

pub mod stdout;

use tokio::io::AsyncWrite;

use crate::pipeline::QueueReader;
pub use stdout::StdoutSink;

/// A writer the stdout sink can own.
pub type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A built sink, ready to run.
pub enum Sink {
    /// JSON lines to stdout (or the writer given in its place).
    Stdout(StdoutSink<BoxWriter>),
}

impl Sink {
    /// Delivers every batch of `input` until the queue is closed and drained.
    pub async fn run(self, input: QueueReader) {
        match self {
            Self::Stdout(s) => s.run(input).await,
        }
    }
}
