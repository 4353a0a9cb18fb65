//! The stdout sink: one event per line (JSON lines), for the node's logging
//! agent, as the print-to-stdout webhook images do.
//!
//! Lines are gathered in a buffer and written whole, so no partial line is ever
//! interleaved with another writer's output; logs go to stderr. The buffer is
//! written as soon as the queue has nothing more waiting, when it passes
//! [`BUFFER_BYTES`], and at the latest [`FLUSH_INTERVAL`] after its first line.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::pipeline::{Delivery, QueueReader};

/// Size at which the line buffer is written out.
pub const BUFFER_BYTES: usize = 256 << 10;
/// Longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest pause between retries of a failed write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Writes events as JSON lines to `W` (the process's stdout in production, any
/// writer in tests).
pub struct StdoutSink<W> {
    writer: W,
}

impl<W: AsyncWrite + Unpin + Send> StdoutSink<W> {
    /// A sink that writes to `writer`.
    pub fn new(writer: W) -> Self {
        Self { writer }
    }

    /// Writes every batch from `input` until it is closed and empty, then flushes.
    /// A failed write is counted, logged and retried with backoff; its events stay
    /// in the queue (holding back-pressure) until the write succeeds.
    pub async fn run(mut self, mut input: QueueReader) {
        let mut buf: Vec<u8> = Vec::with_capacity(BUFFER_BYTES);
        let mut pending: Vec<Delivery> = Vec::new();
        let mut oldest: Option<Instant> = None;
        loop {
            let next = match oldest {
                None => input.recv().await,
                Some(t) => match tokio::time::timeout_at(t + FLUSH_INTERVAL, input.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.write_out(&mut buf, &mut pending, &input).await;
                        oldest = None;
                        continue;
                    }
                },
            };
            let Some(delivery) = next else { break };
            for event in &delivery.batch.events {
                buf.extend_from_slice(&event.raw);
                buf.push(b'\n');
            }
            pending.push(delivery);
            oldest.get_or_insert_with(Instant::now);
            if buf.len() >= BUFFER_BYTES || input.is_empty() {
                self.write_out(&mut buf, &mut pending, &input).await;
                oldest = None;
            }
        }
        self.write_out(&mut buf, &mut pending, &input).await;
    }

    async fn write_out(
        &mut self,
        buf: &mut Vec<u8>,
        pending: &mut Vec<Delivery>,
        input: &QueueReader,
    ) {
        if buf.is_empty() && pending.is_empty() {
            return;
        }
        let metrics = input.metrics();
        let events: usize = pending.iter().map(|d| d.batch.events.len()).sum();
        let started = Instant::now();
        let mut written = 0;
        let mut failures = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            match write_all_and_flush(&mut self.writer, buf, &mut written).await {
                Ok(()) => break,
                Err(e) => {
                    if failures == 0 {
                        tracing::error!(sink = input.sink_name(), error = %e, events, "stdout sink cannot write; retrying");
                    }
                    failures += 1;
                    metrics.error("write", events as u64);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if failures > 0 {
            tracing::info!(
                sink = input.sink_name(),
                failures,
                "stdout sink writes again"
            );
        }
        metrics
            .send_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.events_sent.inc_by(events as u64);
        metrics.bytes_sent.inc_by(buf.len() as u64);
        buf.clear();
        if buf.capacity() > 4 * BUFFER_BYTES {
            buf.shrink_to(BUFFER_BYTES);
        }
        pending.clear();
    }
}

/// Writes `buf[*written..]` and flushes, keeping `written` up to date so that a
/// retry after an error does not write a byte twice.
async fn write_all_and_flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &[u8],
    written: &mut usize,
) -> std::io::Result<()> {
    while *written < buf.len() {
        match writer.write(&buf[*written..]).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => *written += n,
        }
    }
    writer.flush().await
}
