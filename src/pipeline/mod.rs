//! The pipeline between the source and the sinks: one bounded queue per sink and
//! whole-batch admission across all of them.
//!
//! The source hands each decoded request to [`Pipeline::admit`] and answers the
//! API server from its result alone (DESIGN.md, "acknowledgement"): `Ok` means
//! every event of the request is in every `block` sink's queue; an error means
//! none is in any. With a disk buffer ([`crate::buffer`]), `Ok` means the
//! batch is synced to the buffer's log, and each sink's queue is fed from
//! the log instead.

mod batch;
mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use batch::{Batch, Origin};
pub use queue::{Delivery, QueueReader, WhenFull};

use crate::buffer::{BufferRefusal, DiskBuffer};
use crate::metrics::Metrics;
use queue::Queue;

/// The shape of one sink's queue.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// The sink's name (metric label).
    pub name: String,
    /// Most events the queue holds.
    pub capacity_events: usize,
    /// Most bytes the queue holds.
    pub capacity_bytes: usize,
    /// What happens when a batch does not fit.
    pub when_full: WhenFull,
}

/// Why a batch was not admitted. Nothing of it was queued anywhere.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// A `block` sink's queue had no room for the whole batch within the wait,
    /// or no queue had drained for as long as the wait.
    #[error("sink {sink} has no room for {} {}", batch(*events), waited(*wait_ms, *stalled))]
    Full {
        /// The first sink found full.
        sink: String,
        /// Events in the batch (0 when refused before the body was read).
        events: usize,
        /// The admission wait, in milliseconds.
        wait_ms: u64,
        /// Refused without waiting: no queue had given back room for as long
        /// as the wait.
        stalled: bool,
    },
    /// The batch is larger than a `block` sink's whole queue.
    #[error(
        "batch of {events} events and {bytes} bytes is larger than the whole queue of sink {sink}"
    )]
    TooLarge {
        /// The sink.
        sink: String,
        /// Events in the batch.
        events: usize,
        /// Bytes the batch holds.
        bytes: usize,
    },
    /// The pipeline is shutting down.
    #[error("the forwarder is shutting down")]
    Closed,
    /// The disk buffer did not take the batch.
    #[error(transparent)]
    Buffer(BufferRefusal),
}

impl From<BufferRefusal> for Refusal {
    fn from(r: BufferRefusal) -> Self {
        match r {
            BufferRefusal::Closed => Self::Closed,
            other => Self::Buffer(other),
        }
    }
}

impl Refusal {
    /// Bounded label for `audit_forwarder_requests_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Full { .. } => "queue_full",
            Self::TooLarge { .. } => "batch_too_large",
            Self::Closed => "shutting_down",
            Self::Buffer(BufferRefusal::Full(_)) => "buffer_full",
            Self::Buffer(_) => "disk_error",
        }
    }
}

fn batch(events: usize) -> String {
    if events == 0 {
        "the request".to_owned()
    } else {
        format!("{events} events")
    }
}

fn waited(wait_ms: u64, stalled: bool) -> String {
    if stalled {
        format!("(the queues have not drained for {wait_ms} ms or more)")
    } else {
        format!("within {wait_ms} ms")
    }
}

/// The queues of all sinks.
pub struct Pipeline {
    queues: Vec<Arc<Queue>>,
    space: Arc<Space>,
    wait: Duration,
    disk: Option<Disk>,
}

/// The disk buffer and the tasks that feed the queues from it.
struct Disk {
    buffer: Arc<DiskBuffer>,
    stop: CancellationToken,
}

/// Room given back in any queue: wakes the requests waiting for it, and
/// remembers when, so that a request does not wait on queues that have
/// stopped draining.
pub(crate) struct Space {
    notify: Notify,
    start: Instant,
    /// Milliseconds from `start` to the last time room was given back.
    last_freed_ms: AtomicU64,
}

impl Space {
    fn new() -> Self {
        Self {
            notify: Notify::new(),
            start: Instant::now(),
            last_freed_ms: AtomicU64::new(0),
        }
    }

    /// Called by a queue that has given back room.
    pub(crate) fn freed(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_freed_ms.fetch_max(ms, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    /// How long since room was last given back (or since the start).
    fn since_freed(&self) -> Duration {
        let last = Duration::from_millis(self.last_freed_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

impl Pipeline {
    /// Creates one queue per spec and returns the pipeline with the readers, in
    /// the order of `specs`. `wait` is how long [`Pipeline::admit`] waits for
    /// room before refusing.
    pub fn new(specs: &[QueueSpec], wait: Duration, metrics: &Metrics) -> (Self, Vec<QueueReader>) {
        Self::build(specs, wait, metrics, None)
    }

    /// Like [`Pipeline::new`], with `buffer` (opened for the same sinks, in
    /// the same order) taking the batches: each queue is fed from the
    /// buffer's log by a task of its own, and the sinks' positions are saved
    /// every `buffer.checkpoint_interval_ms`. Must be called within a Tokio
    /// runtime.
    pub fn with_disk(
        specs: &[QueueSpec],
        wait: Duration,
        metrics: &Metrics,
        buffer: Arc<DiskBuffer>,
    ) -> (Self, Vec<QueueReader>) {
        let (pipeline, readers) = Self::build(specs, wait, metrics, Some(&buffer));
        let stop = CancellationToken::new();
        for (i, q) in pipeline.queues.iter().enumerate() {
            let q = q.clone();
            let feed = buffer.clone().feed(i, {
                let q = q.clone();
                move |batch, seq| {
                    let q = q.clone();
                    async move { q.push_wait(batch, seq).await }
                }
            });
            tokio::spawn(async move {
                feed.await;
                q.close();
            });
        }
        tokio::spawn(buffer.clone().run_checkpoints(stop.clone()));
        let pipeline = Self {
            disk: Some(Disk { buffer, stop }),
            ..pipeline
        };
        (pipeline, readers)
    }

    fn build(
        specs: &[QueueSpec],
        wait: Duration,
        metrics: &Metrics,
        buffer: Option<&Arc<DiskBuffer>>,
    ) -> (Self, Vec<QueueReader>) {
        let space = Arc::new(Space::new());
        let queues: Vec<Arc<Queue>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let m = metrics.sink(&s.name, s.capacity_events, s.capacity_bytes);
                Arc::new(Queue::new(
                    s.name.clone(),
                    s.capacity_events,
                    s.capacity_bytes,
                    s.when_full,
                    space.clone(),
                    m,
                    buffer.map(|b| b.progress(i)),
                ))
            })
            .collect();
        let readers = queues
            .iter()
            .map(|q| QueueReader {
                queue: q.clone(),
                processor: None,
            })
            .collect();
        (
            Self {
                queues,
                space,
                wait,
                disk: None,
            },
            readers,
        )
    }

    /// Most events one request may carry: the smallest `capacity_events` of the
    /// `block` queues (a larger batch could never be admitted).
    pub fn max_batch_events(&self) -> usize {
        self.blocking()
            .map(|q| q.capacity_events)
            .min()
            .unwrap_or(usize::MAX)
    }

    fn blocking(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.queues
            .iter()
            .filter(|q| q.when_full == WhenFull::Block)
    }

    /// Puts `batch` into every sink's queue, all or nothing across the `block`
    /// sinks, waiting up to the configured wait for room. A `drop_newest` sink
    /// without room drops the batch (counted) without holding up the others.
    /// An empty batch is admitted without being queued.
    ///
    /// # Errors
    ///
    /// [`Refusal`] when the batch was not queued anywhere.
    pub async fn admit(&self, batch: Batch) -> Result<(), Refusal> {
        if let Some(q) = self.blocking().find(|q| !q.can_ever_hold(&batch)) {
            return Err(Refusal::TooLarge {
                sink: q.name.clone(),
                events: batch.events.len(),
                bytes: batch.retained_bytes(),
            });
        }
        if batch.events.is_empty() {
            return Ok(());
        }
        if let Some(disk) = &self.disk {
            return Ok(disk.buffer.append(Arc::new(batch)).await?);
        }
        let batch = Arc::new(batch);
        self.retry_until_deadline(batch.events.len(), || self.try_admit(&batch))
            .await
    }

    /// Waits, up to the configured wait, until every `block` queue has room for
    /// `bytes` more bytes and one more event. This is a cheap check made before
    /// a request body is read, so that an overloaded forwarder answers 503 at
    /// once instead of reading and decoding bodies it could not queue; the
    /// batch itself is admitted by [`Pipeline::admit`].
    ///
    /// # Errors
    ///
    /// [`Refusal::Full`] or [`Refusal::Closed`].
    pub async fn wait_for_room(&self, bytes: usize) -> Result<(), Refusal> {
        if let Some(disk) = &self.disk {
            return Ok(disk.buffer.check_room(bytes)?);
        }
        self.retry_until_deadline(0, || {
            for q in self.blocking() {
                let state = q.lock();
                if Queue::is_closed(&state) {
                    return Err(None);
                }
                if !q.has_room(&state, bytes) {
                    return Err(Some(&q.name));
                }
            }
            Ok(())
        })
        .await
    }

    /// Runs `attempt` until it succeeds, again each time a queue frees room,
    /// until the configured wait has passed. When no queue has given back
    /// room for as long as that wait, the queues are not draining (a stalled
    /// or dead sink) and the request is refused at once: DESIGN.md's bounded
    /// contract wants an overloaded forwarder to answer 503 fast rather than
    /// hold requests open, and the API server retries.
    async fn retry_until_deadline<'a>(
        &'a self,
        events: usize,
        attempt: impl Fn() -> Result<(), Option<&'a str>>,
    ) -> Result<(), Refusal> {
        let deadline = Instant::now() + self.wait;
        loop {
            let notified = self.space.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match attempt() {
                Ok(()) => return Ok(()),
                Err(None) => return Err(Refusal::Closed),
                Err(Some(full)) => {
                    let stalled = self.space.since_freed() >= self.wait;
                    if stalled || tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(Refusal::Full {
                            sink: full.to_owned(),
                            events,
                            wait_ms: self.wait.as_millis() as u64,
                            stalled,
                        });
                    }
                }
            }
        }
    }

    /// One attempt under all the locks. `Err(Some(sink))` names a full `block`
    /// queue; `Err(None)` means closed.
    fn try_admit(&self, batch: &Arc<Batch>) -> Result<(), Option<&str>> {
        let mut states: Vec<_> = self.queues.iter().map(|q| q.lock()).collect();
        for (q, state) in self.queues.iter().zip(&states) {
            if Queue::is_closed(state) {
                return Err(None);
            }
            if q.when_full == WhenFull::Block && !q.fits(state, batch) {
                return Err(Some(&q.name));
            }
        }
        for (q, state) in self.queues.iter().zip(states.iter_mut()) {
            if q.fits(state, batch) {
                q.push(state, batch.clone(), None);
            } else {
                q.metrics.dropped("queue_full", batch.events.len() as u64);
            }
        }
        Ok(())
    }

    /// Refuses every later batch and lets each sink end once it has delivered
    /// what its queue holds.
    ///
    /// With a disk buffer, the buffer stops taking batches and each queue is
    /// closed once its feeder has read the rest of the log: the sinks
    /// deliver what they can until the shutdown deadline, and what they have
    /// not delivered then stays in the log for the next start.
    pub fn close(&self) {
        if let Some(disk) = &self.disk {
            disk.buffer.close();
            return;
        }
        for q in &self.queues {
            q.close();
        }
    }

    /// At a shutdown that ran out of time, before the late sinks are
    /// stopped: counts every event still queued as dropped for `reason`; with
    /// a disk buffer, saves each sink's position instead (nothing is lost)
    /// and returns the events left in the log.
    pub fn count_undelivered(&self, reason: &str) -> Option<u64> {
        if let Some(disk) = &self.disk {
            disk.stop.cancel();
            disk.buffer.finish();
            return Some(disk.buffer.undelivered_events());
        }
        for q in &self.queues {
            q.metrics.dropped(reason, q.depth_events() as u64);
        }
        None
    }

    /// Events waiting or being delivered, summed over all queues.
    pub fn depth_events(&self) -> usize {
        self.queues.iter().map(|q| q.depth_events()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Event, EventMeta};
    use bytes::Bytes;

    fn batch(n: usize) -> Batch {
        let body = Bytes::from(vec![b'x'; n * 10]);
        let events = (0..n)
            .map(|i| Event {
                raw: body.slice(i * 10..i * 10 + 10),
                meta: EventMeta::default(),
            })
            .collect();
        Batch::new(body, events)
    }

    fn spec(name: &str, events: usize, when_full: WhenFull) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            capacity_events: events,
            capacity_bytes: 1 << 20,
            when_full,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_does_not_fit_everywhere_is_queued_nowhere() {
        let m = Metrics::new();
        let (p, mut readers) = Pipeline::new(
            &[
                spec("a", 10, WhenFull::Block),
                spec("b", 5, WhenFull::Block),
            ],
            Duration::from_millis(100),
            &m,
        );
        p.admit(batch(4)).await.unwrap();
        let refused = p.admit(batch(2)).await.unwrap_err();
        assert!(matches!(refused, Refusal::Full { ref sink, events: 2, .. } if sink == "b"));
        assert_eq!(readers[0].depth_events(), 4);
        assert_eq!(readers[1].depth_events(), 4);
        // Room made while admission waits lets the batch in.
        drop(readers[1].recv().await.unwrap());
        p.admit(batch(4)).await.unwrap();
        let second = readers[1].recv().await.unwrap();
        let admit = p.admit(batch(2));
        tokio::pin!(admit);
        assert!(futures_poll(&mut admit).is_none());
        drop(second);
        admit.await.unwrap();
        assert_eq!(readers[1].depth_events(), 2);
        assert_eq!(readers[0].depth_events(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn queues_that_stopped_draining_refuse_without_waiting() {
        let m = Metrics::new();
        let wait = Duration::from_millis(100);
        let (p, mut readers) = Pipeline::new(&[spec("a", 5, WhenFull::Block)], wait, &m);
        p.admit(batch(4)).await.unwrap();
        // Room was given back less than a wait ago (here: never, and the
        // pipeline is new), so the request waits for it.
        let t = Instant::now();
        assert!(p.admit(batch(2)).await.is_err());
        assert_eq!(t.elapsed(), wait);
        // A full wait without room given back: refused at once, again and again.
        for _ in 0..3 {
            let t = Instant::now();
            let refused = p.admit(batch(2)).await.unwrap_err();
            assert!(matches!(refused, Refusal::Full { .. }));
            assert_eq!(t.elapsed(), Duration::ZERO);
            tokio::time::advance(Duration::from_millis(30)).await;
        }
        // The sink drains: requests wait for room again.
        drop(readers[0].recv().await.unwrap());
        p.admit(batch(4)).await.unwrap();
        let t = Instant::now();
        assert!(p.admit(batch(2)).await.is_err());
        assert_eq!(t.elapsed(), wait);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_newest_sink_never_blocks_the_others() {
        let m = Metrics::new();
        let (p, readers) = Pipeline::new(
            &[
                spec("a", 10, WhenFull::Block),
                spec("b", 3, WhenFull::DropNewest),
            ],
            Duration::from_millis(100),
            &m,
        );
        p.admit(batch(3)).await.unwrap();
        p.admit(batch(3)).await.unwrap();
        assert_eq!(readers[0].depth_events(), 6);
        assert_eq!(readers[1].depth_events(), 3);
        assert!(matches!(
            p.admit(batch(11)).await,
            Err(Refusal::TooLarge { .. })
        ));
        p.close();
        assert_eq!(p.admit(batch(1)).await, Err(Refusal::Closed));
    }

    #[tokio::test]
    async fn readers_drain_then_end_after_close() {
        let m = Metrics::new();
        let (p, mut readers) = Pipeline::new(&[spec("a", 10, WhenFull::Block)], Duration::ZERO, &m);
        p.admit(batch(2)).await.unwrap();
        p.close();
        assert_eq!(readers[0].recv().await.unwrap().batch.events.len(), 2);
        assert!(readers[0].recv().await.is_none());
        assert_eq!(readers[0].depth_events(), 0);
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
