//! The `tcp` sink: events as JSON lines over one TCP connection, optionally
//! TLS, to a Logstash `tcp` input (codec `json_lines`) or any line reader.
//!
//! TCP has no application acknowledgements, so delivery is judged from the
//! socket, and a batch keeps its room in the queue until it is judged delivered:
//! - a batch counts as delivered once the peer's kernel has acknowledged all of
//!   its bytes (the connection's unacknowledged byte count, asked of the
//!   kernel by netlink `sock_diag`, or read from `/proc/net/tcp` where
//!   netlink is not allowed; see `acked.rs`); where that count cannot be read,
//!   once `resend_window_ms` has passed since it was written;
//! - the socket is read all the time, so a peer's close (FIN) or reset is
//!   noticed at once, not at the next write; nothing is written after it;
//! - every batch not yet counted as delivered when a connection is lost is
//!   written again on the next connection (at least once, never at most once),
//!   counted in `audit_forwarder_retries_total`;
//! - while no connection can be made, batches stay queued (back-pressure).
//!
//! Writes are vectored: each event's bytes go from the request body to the
//! socket without a copy (TLS copies them into records). The batches waiting
//! when the sink is ready to write are written together, up to 4 MiB of
//! events, in writes of up to 1,024 slices (the kernel's `IOV_MAX`).
//!
//! With `encoding: syslog` each event is one syslog message
//! ([`super::encode::syslog`]); an event whose message is over
//! `syslog.max_message_bytes` is not sent but logged, counted and
//! dead-lettered.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::acked::Unacked;
use super::deadletter::DeadLetter;
use super::encode::syslog::{Frame, SyslogEncoder};
use super::retry::Backoff;
use crate::config::{TcpEncoding, TcpSinkConfig};
use crate::decode::Event;
use crate::metrics::SinkMetrics;
use crate::pipeline::{Delivery, QueueReader};
use crate::tls::OutboundTls;
use crate::tls::outbound::server_name;

/// How often unacknowledged batches are checked.
const ACK_POLL: Duration = Duration::from_millis(20);

/// At most this many bytes of events, from batches already waiting, are
/// written in one go (after the first batch, which is always taken whole).
const MAX_GROUP_BYTES: usize = 4 << 20;

/// Slices per vectored write: Linux's `IOV_MAX`.
const MAX_SLICES: usize = 1024;

/// Any connection the sink can write to.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Conn for T {}

/// A built TCP sink.
pub struct TcpSink {
    name: String,
    endpoint: String,
    tls: Option<(TlsConnector, ServerName<'static>, OutboundTls)>,
    connect_timeout: Duration,
    backoff: Backoff,
    window: Duration,
    /// Boxed: most sinks use JSON lines, and the `Sink` enum stays small.
    encoding: Box<Encoding>,
}

/// A batch written but not yet known to be delivered.
struct Written {
    /// TCP bytes written on the connection up to the end of this batch.
    end: u64,
    at: Instant,
    delivery: Delivery,
    /// Events written (those the encoding refused are not).
    events: usize,
    /// Bytes written for them, framing included.
    bytes: u64,
}

/// One open connection.
struct Session {
    conn: Box<dyn Conn>,
    written: Arc<AtomicU64>,
    unacked: Unacked,
}

/// Why a connection was given up.
enum Lost {
    /// The peer closed it.
    Closed,
    /// Reset, or a write failed.
    Broken(std::io::Error),
}

impl TcpSink {
    /// Builds the sink, loading TLS files.
    ///
    /// # Errors
    ///
    /// A message naming the key and file at fault.
    pub fn build(cfg: &TcpSinkConfig) -> anyhow::Result<Self> {
        let tls = if cfg.tls.enabled {
            let host = cfg
                .endpoint
                .rsplit_once(':')
                .map_or(cfg.endpoint.as_str(), |(h, _)| h);
            let name =
                server_name(host, cfg.tls.server_name.as_deref()).map_err(anyhow::Error::msg)?;
            let outbound = OutboundTls::load(&cfg.tls)?;
            let connector = TlsConnector::from(Arc::new(outbound.client_config(&[])?));
            Some((connector, name, outbound))
        } else {
            None
        };
        Ok(Self {
            name: cfg.name.clone(),
            endpoint: cfg.endpoint.clone(),
            tls,
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            backoff: Backoff::new(
                Duration::from_millis(cfg.retry.initial_backoff_ms),
                Duration::from_secs(cfg.retry.max_backoff_secs),
            ),
            window: Duration::from_millis(cfg.resend_window_ms),
            encoding: Box::new(Encoding {
                lines: match cfg.encoding {
                    TcpEncoding::JsonLines => LineEncoding::JsonLines,
                    TcpEncoding::Syslog => {
                        LineEncoding::Syslog(Box::new(SyslogEncoder::new(&cfg.syslog)))
                    }
                },
                dead_letter: DeadLetter::configured(cfg.dead_letter_file.as_ref())?,
            }),
        })
    }

    /// Its TLS client settings, when `tls.enabled`.
    pub fn tls(&self) -> Option<&OutboundTls> {
        self.tls.as_ref().map(|(_, _, t)| t)
    }

    /// Delivers every batch of `input` until it is closed and drained.
    pub async fn run(mut self, mut input: QueueReader) {
        let metrics = input.metrics().clone();
        let mut resend: VecDeque<Delivery> = VecDeque::new();
        let mut failures = 0u32;
        // Events already counted in `error_total` for the outage under way.
        let mut counted = 0usize;
        loop {
            if resend.is_empty() && input.is_closed_and_empty() {
                return;
            }
            let session = match self.connect().await {
                Ok(s) => s,
                Err(e) => {
                    let reason = match e.kind() {
                        std::io::ErrorKind::TimedOut => "timeout",
                        _ => "connect",
                    };
                    metrics.connection_error(reason);
                    if failures == 0 {
                        tracing::warn!(sink = %self.name, endpoint = %self.endpoint, error = %e, "cannot connect; retrying");
                        // Once an outage: the events waiting for the connection
                        // (the queue's depth includes those to re-send), less
                        // those counted when the last connection was lost.
                        let waiting = input.depth_events().saturating_sub(counted);
                        metrics.error(reason, waiting as u64);
                        counted += waiting;
                    }
                    failures += 1;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                    continue;
                }
            };
            if failures > 0 {
                tracing::info!(sink = %self.name, endpoint = %self.endpoint, failures, "connected again");
            }
            failures = 0;
            self.backoff.reset();
            let mut unconfirmed = VecDeque::new();
            let lost = self
                .session(session, &mut input, &mut resend, &mut unconfirmed, &metrics)
                .await;
            let again: u64 = unconfirmed.iter().map(|w| w.events as u64).sum();
            match lost {
                None => return,
                Some(Lost::Closed) => {
                    metrics.connection_error("closed");
                    tracing::warn!(sink = %self.name, endpoint = %self.endpoint, resending_events = again, "peer closed the connection; reconnecting");
                }
                Some(Lost::Broken(e)) => {
                    metrics.connection_error("broken");
                    tracing::warn!(sink = %self.name, endpoint = %self.endpoint, error = %e, resending_events = again, "connection lost; reconnecting");
                }
            }
            metrics.error("connection", again);
            metrics.retries.inc_by(again);
            counted = again as usize;
            while let Some(w) = unconfirmed.pop_back() {
                resend.push_front(w.delivery);
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Session> {
        let connect = async {
            let stream = TcpStream::connect(&self.endpoint).await?;
            stream.set_nodelay(true)?;
            let sock = socket2::SockRef::from(&stream);
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(15))
                .with_interval(Duration::from_secs(5));
            sock.set_tcp_keepalive(&keepalive)?;
            sock.set_tcp_user_timeout(Some(Duration::from_secs(30)))?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let (local, peer) = (stream.local_addr()?, stream.peer_addr()?);
        let written = Arc::new(AtomicU64::new(0));
        let counted = Counting {
            inner: stream,
            written: written.clone(),
        };
        let conn: Box<dyn Conn> = match &self.tls {
            None => Box::new(counted),
            Some((connector, name, _)) => Box::new(
                tokio::time::timeout(
                    self.connect_timeout,
                    connector.connect(name.clone(), counted),
                )
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)??,
            ),
        };
        // The handshake's bytes are acknowledged before it completes.
        Ok(Session {
            conn,
            written,
            unacked: Unacked::new(local, peer),
        })
    }

    /// Writes batches on one connection until it is lost (`Some`) or the
    /// input is closed and everything written is delivered (`None`).
    async fn session(
        &self,
        mut s: Session,
        input: &mut QueueReader,
        resend: &mut VecDeque<Delivery>,
        unconfirmed: &mut VecDeque<Written>,
        metrics: &SinkMetrics,
    ) -> Option<Lost> {
        let mut scratch = vec![0u8; 4096];
        let mut closed = false;
        let mut confirmed = Instant::now();
        let mut group: Vec<Delivery> = Vec::new();
        loop {
            // A batch not from `resend` is new: its refused events are
            // dead-lettered once, not at each attempt.
            let fresh = resend.is_empty();
            let next = if let Some(d) = resend.pop_front() {
                Some(d)
            } else {
                let waiting = !unconfirmed.is_empty();
                tokio::select! {
                    biased;
                    r = s.conn.read(&mut scratch) => match r {
                        Ok(0) => {
                            self.confirm(&mut s, unconfirmed, metrics);
                            return Some(Lost::Closed);
                        }
                        Ok(_) => continue, // the peer may talk; nothing to do with it
                        Err(e) => return Some(Lost::Broken(e)),
                    },
                    () = tokio::time::sleep(ACK_POLL), if waiting => {
                        self.confirm(&mut s, unconfirmed, metrics);
                        confirmed = Instant::now();
                        continue;
                    }
                    d = input.recv(), if !closed => d,
                    () = std::future::ready(()), if closed && !waiting => {
                        let _ = s.conn.shutdown().await;
                        return None;
                    }
                }
            };
            let Some(first) = next else {
                closed = true;
                continue;
            };
            if fresh {
                self.refuse(&first, metrics).await;
            }
            // The batches already waiting go out with it, in order.
            let mut bytes = first.batch.event_bytes();
            group.push(first);
            while bytes < MAX_GROUP_BYTES {
                let d = if let Some(d) = resend.pop_front() {
                    d
                } else if let Some(d) = (!closed).then(|| input.try_recv()).flatten() {
                    self.refuse(&d, metrics).await;
                    d
                } else {
                    break;
                };
                bytes += d.batch.event_bytes();
                group.push(d);
            }
            let started = Instant::now();
            let counts = match write_lines(&mut s.conn, &group, &self.encoding.lines).await {
                Ok(counts) => counts,
                Err(e) => {
                    while let Some(d) = group.pop() {
                        resend.push_front(d);
                    }
                    return Some(Lost::Broken(e));
                }
            };
            metrics
                .send_duration
                .observe(started.elapsed().as_secs_f64());
            // Every batch of the group counts as delivered once the whole
            // group is acknowledged: never sooner than its own bytes.
            let end = s.written.load(Ordering::Acquire);
            let at = Instant::now();
            unconfirmed.extend(
                group
                    .drain(..)
                    .zip(counts)
                    .map(|(delivery, (events, bytes))| Written {
                        end,
                        at,
                        delivery,
                        events,
                        bytes,
                    }),
            );
            // While batches keep coming the poll above never fires: check
            // here too, or a sink that catches up would not count what the
            // peer already has until its queue runs dry.
            if confirmed.elapsed() >= ACK_POLL {
                self.confirm(&mut s, unconfirmed, metrics);
                confirmed = Instant::now();
            }
        }
    }

    /// Logs, counts and dead-letters the events of a new batch that the
    /// encoding refuses (a syslog message over `max_message_bytes`); the
    /// write path skips them. While the dead-letter file cannot be written
    /// the write is tried again with backoff, holding the batch.
    async fn refuse(&self, d: &Delivery, metrics: &SinkMetrics) {
        let LineEncoding::Syslog(enc) = &self.encoding.lines else {
            return;
        };
        if !enc.has_limit() {
            return;
        }
        let mut scratch = Vec::new();
        let refused: Vec<&Event> = d
            .batch
            .events
            .iter()
            .filter(|e| {
                scratch.clear();
                enc.encode(e, &mut scratch).is_err()
            })
            .collect();
        if refused.is_empty() {
            return;
        }
        let n = refused.len() as u64;
        metrics.error("message_too_long", n);
        let ids: Vec<_> = refused
            .iter()
            .take(10)
            .filter_map(|e| e.meta.audit_id)
            .map(|s| String::from_utf8_lossy(s.get(&d.batch.body)).into_owned())
            .collect();
        tracing::error!(sink = %self.name, events = n, audit_ids = ?ids, "events over syslog.max_message_bytes are not sent");
        if let Some(dl) = &self.encoding.dead_letter {
            let mut backoff = self.backoff.clone();
            let mut failing = false;
            while let Err(e) = dl.append(refused.iter().copied()).await {
                metrics.error("dead_letter_write", n);
                if !failing {
                    tracing::error!(sink = %self.name, file = %dl.path().display(), error = %e, events = n, "failed to write the dead-letter file; holding the events and retrying");
                }
                failing = true;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        metrics.dead_lettered.inc_by(n);
    }

    /// Counts as delivered (and releases) the batches the peer has
    /// acknowledged, or, where that cannot be read, those written more than
    /// `resend_window_ms` ago.
    fn confirm(&self, s: &mut Session, unconfirmed: &mut VecDeque<Written>, metrics: &SinkMetrics) {
        let acked = s
            .unacked
            .bytes()
            .map(|q| s.written.load(Ordering::Acquire).saturating_sub(q));
        let now = Instant::now();
        while let Some(w) = unconfirmed.front() {
            let done = match acked {
                Some(a) => w.end <= a,
                None => now >= w.at + self.window,
            };
            if !done {
                break;
            }
            let w = unconfirmed.pop_front().expect("front exists");
            metrics.events_sent.inc_by(w.events as u64);
            metrics.bytes_sent.inc_by(w.bytes);
        }
    }
}

/// Writes the events of `group`'s batches in order, each framed by
/// [`frame`], with vectored writes of up to [`MAX_SLICES`] slices. Returns
/// the events written and their bytes, per batch.
async fn write_lines<W: AsyncWrite + Unpin>(
    wr: &mut W,
    group: &[Delivery],
    encoding: &LineEncoding,
) -> std::io::Result<Vec<(usize, u64)>> {
    let mut counts = vec![(0usize, 0u64); group.len()];
    let mut scratch = Vec::new();
    let mut frames: Vec<(usize, &Event, Range<usize>, Frame)> = Vec::new();
    // The next event to write: its batch in the group, its index there.
    let (mut b, mut i) = (0, 0);
    while b < group.len() {
        scratch.clear();
        frames.clear();
        // At most three slices per event: head, the event's bytes, tail.
        let mut room = MAX_SLICES;
        while room >= 3 && b < group.len() {
            let events = &group[b].batch.events;
            if let Some(e) = events.get(i) {
                if let Some((head, f)) = frame(encoding, e, &mut scratch) {
                    room -= usize::from(!head.is_empty())
                        + usize::from(f.event)
                        + usize::from(!f.tail.is_empty());
                    frames.push((b, e, head, f));
                }
                i += 1;
            } else {
                (b, i) = (b + 1, 0);
            }
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_SLICES - room);
        for (batch, e, head, f) in &frames {
            let parts = [
                &scratch[head.clone()],
                if f.event { &e.raw[..] } else { &[] },
                f.tail,
            ];
            let c = &mut counts[*batch];
            c.0 += 1;
            for p in parts.into_iter().filter(|p| !p.is_empty()) {
                c.1 += p.len() as u64;
                slices.push(IoSlice::new(p));
            }
        }
        let mut bufs: &mut [IoSlice<'_>] = &mut slices;
        while !bufs.is_empty() {
            let n = wr.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
    }
    wr.flush().await?;
    Ok(counts)
}

// ---- per-event encoding: the hook the write path calls ---------------------

/// The sink's per-event encoding, and where the events it refuses go.
struct Encoding {
    lines: LineEncoding,
    dead_letter: Option<DeadLetter>,
}

/// What the sink writes for each event (`encoding`).
enum LineEncoding {
    /// The event's bytes and a newline.
    JsonLines,
    /// One syslog message per event.
    Syslog(Box<SyslogEncoder>),
}

/// Frames one event: appends to `scratch` what goes before the event's own
/// bytes and returns its range there with the [`Frame`] that says what
/// follows. `None` for an event the encoding refuses (not sent).
fn frame(enc: &LineEncoding, e: &Event, scratch: &mut Vec<u8>) -> Option<(Range<usize>, Frame)> {
    let start = scratch.len();
    let f = match enc {
        LineEncoding::JsonLines => Frame {
            event: true,
            tail: b"\n",
        },
        LineEncoding::Syslog(s) => s.encode(e, scratch).ok()?,
    };
    Some((start..scratch.len(), f))
}

/// A TCP stream that counts the bytes written to the socket (below TLS).
struct Counting {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::AcqRel);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::AcqRel);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
