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
pub(crate) mod recycle;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use batch::{Batch, Listener, Origin};
pub use queue::{Delivery, QueueReader, READ_AHEAD_BYTES, WhenFull};

use crate::buffer::{BufferRefusal, DiskBuffer, Progress};
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

/// The queues of all sinks. The set of queues can change while requests are
/// admitted ([`Pipeline::replace`], on a configuration reload): each admission
/// works on one snapshot of the set, so a batch enters either the old set or
/// the new one, never both.
pub struct Pipeline {
    queues: ArcSwap<Vec<Arc<Queue>>>,
    /// Queues taken out of the set that may still hold batches being drained.
    retired: Mutex<Vec<Arc<Queue>>>,
    space: Arc<Space>,
    wait_ms: AtomicU64,
    closed: AtomicBool,
    /// Batches a `drop_newest` queue had no room for: one line per period.
    drop_log: crate::ratelimit::RateLimit,
    /// With a disk buffer: the buffer, whose log feeds the queues.
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
        let pipeline = Self::empty(wait);
        let readers = pipeline.replace(&[], specs, metrics);
        (pipeline, readers)
    }

    /// Like [`Pipeline::new`], with `buffer` (opened for the same sinks, in
    /// the same order) taking the batches: each queue is fed from the
    /// buffer's log by a task of its own, and the sinks' positions are saved
    /// every `buffer.checkpoint_interval_ms`. The set of sinks is fixed (a
    /// reload that changes it needs a restart). Must be called within a
    /// Tokio runtime.
    pub fn with_disk(
        specs: &[QueueSpec],
        wait: Duration,
        metrics: &Metrics,
        buffer: Arc<DiskBuffer>,
    ) -> (Self, Vec<QueueReader>) {
        let mut pipeline = Self::empty(wait);
        let queues: Vec<Arc<Queue>> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| pipeline.queue(s, metrics, Some(buffer.progress(i))))
            .collect();
        pipeline.queues.store(Arc::new(queues.clone()));
        for (i, q) in queues.iter().enumerate() {
            let weak = Arc::downgrade(q);
            buffer.progress(i).set_purge(Box::new(move |seqs: &[u64]| {
                weak.upgrade().map_or_else(Vec::new, |q| q.purge(seqs))
            }));
            let feed = buffer.clone().feed(i, {
                let q = q.clone();
                move |batch, seq| {
                    let q = q.clone();
                    async move { q.push_wait(batch, seq).await }
                }
            });
            let q = q.clone();
            tokio::spawn(async move {
                feed.await;
                q.close();
            });
        }
        let stop = CancellationToken::new();
        tokio::spawn(buffer.clone().run_checkpoints(stop.clone()));
        pipeline.disk = Some(Disk { buffer, stop });
        let readers = queues
            .into_iter()
            .map(|queue| QueueReader {
                queue,
                processor: None,
            })
            .collect();
        (pipeline, readers)
    }

    fn empty(wait: Duration) -> Self {
        Self {
            queues: ArcSwap::from_pointee(Vec::new()),
            retired: Mutex::new(Vec::new()),
            space: Arc::new(Space::new()),
            wait_ms: AtomicU64::new(wait.as_millis() as u64),
            closed: AtomicBool::new(false),
            drop_log: crate::ratelimit::RateLimit::new(Duration::from_secs(10)),
            disk: None,
        }
    }

    /// With a disk buffer, the events its sinks have not yet delivered,
    /// summed; `None` without one.
    pub fn disk_backlog(&self) -> Option<u64> {
        self.disk.as_ref().map(|d| d.buffer.undelivered_events())
    }

    /// Whether batches go through a disk buffer.
    pub fn has_disk_buffer(&self) -> bool {
        self.disk.is_some()
    }

    fn queue(
        &self,
        s: &QueueSpec,
        metrics: &Metrics,
        progress: Option<Arc<Progress>>,
    ) -> Arc<Queue> {
        let m = metrics.sink(&s.name, s.capacity_events, s.capacity_bytes);
        Arc::new(Queue::new(
            s.name.clone(),
            s.capacity_events,
            s.capacity_bytes,
            s.when_full,
            self.space.clone(),
            m,
            progress,
        ))
    }

    /// Takes the queues of the sinks named in `remove` out of the set and adds
    /// a new, empty queue for each of `add`, in one step: a batch admitted
    /// from now on enters the new set. A removed queue is closed: it refuses
    /// nothing already in it, and its reader ends once it has handed out
    /// everything. Returns the readers of the new queues, in the order of
    /// `add`.
    pub fn replace(
        &self,
        remove: &[String],
        add: &[QueueSpec],
        metrics: &Metrics,
    ) -> Vec<QueueReader> {
        debug_assert!(
            self.disk.is_none() || (remove.is_empty() && add.is_empty()),
            "the sinks of a disk buffer are fixed"
        );
        let added: Vec<Arc<Queue>> = add.iter().map(|s| self.queue(s, metrics, None)).collect();
        let current = self.queues.load_full();
        let (gone, mut kept): (Vec<_>, Vec<_>) = current
            .iter()
            .cloned()
            .partition(|q| remove.contains(&q.name));
        kept.extend(added.iter().cloned());
        self.queues.store(Arc::new(kept));
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|q| q.depth_events() > 0);
        for q in gone {
            q.close();
            retired.push(q);
        }
        added
            .into_iter()
            .map(|queue| QueueReader {
                queue,
                processor: None,
            })
            .collect()
    }

    /// Changes how long [`Pipeline::admit`] waits for room.
    pub fn set_wait(&self, wait: Duration) {
        self.wait_ms
            .store(wait.as_millis() as u64, Ordering::Relaxed);
    }

    fn wait(&self) -> Duration {
        Duration::from_millis(self.wait_ms.load(Ordering::Relaxed))
    }

    /// Most events one request may carry: the smallest `capacity_events` of the
    /// `block` queues (a larger batch could never be admitted).
    pub fn max_batch_events(&self) -> usize {
        blocking(&self.queues.load())
            .map(|q| q.capacity_events)
            .min()
            .unwrap_or(usize::MAX)
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
        if let Some(q) = blocking(&self.queues.load()).find(|q| !q.can_ever_hold(&batch)) {
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
            if self.closed.load(Ordering::SeqCst) {
                return Err(None);
            }
            for q in blocking(&self.queues.load()) {
                let state = q.lock();
                // A closed queue here is one a reload took out of the set.
                if !Queue::is_closed(&state) && !q.has_room(&state, bytes) {
                    return Err(Some(q.name.clone()));
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
    async fn retry_until_deadline(
        &self,
        events: usize,
        attempt: impl Fn() -> Result<(), Option<String>>,
    ) -> Result<(), Refusal> {
        let wait = self.wait();
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.space.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match attempt() {
                Ok(()) => return Ok(()),
                Err(None) => return Err(Refusal::Closed),
                Err(Some(full)) => {
                    let stalled = self.space.since_freed() >= wait;
                    if stalled || tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(Refusal::Full {
                            sink: full,
                            events,
                            wait_ms: wait.as_millis() as u64,
                            stalled,
                        });
                    }
                }
            }
        }
    }

    /// One attempt under all the locks of one snapshot of the set.
    /// `Err(Some(sink))` names a full `block` queue; `Err(None)` means closed.
    fn try_admit(&self, batch: &Arc<Batch>) -> Result<(), Option<String>> {
        // A closed queue in a snapshot, while the pipeline is open, is one a
        // reload took out of the set after the snapshot was taken: the new set
        // is already in place, so the attempt starts again on it. Reloads are
        // rare; the bound only keeps the loop finite.
        for _ in 0..16 {
            let queues = self.queues.load();
            let mut states: Vec<_> = queues.iter().map(|q| q.lock()).collect();
            // Checked under the locks: `close` sets the flag before it closes
            // any queue, and closing a queue takes its lock.
            if self.closed.load(Ordering::SeqCst) {
                return Err(None);
            }
            if states.iter().any(|s| Queue::is_closed(s)) {
                continue;
            }
            for (q, state) in queues.iter().zip(&states) {
                if q.when_full == WhenFull::Block && !q.fits(state, batch) {
                    return Err(Some(q.name.clone()));
                }
            }
            let mut dropped_for = None;
            for (q, state) in queues.iter().zip(states.iter_mut()) {
                if q.fits(state, batch) {
                    q.push(state, batch.clone(), None);
                } else {
                    q.metrics.dropped("queue_full", batch.events.len() as u64);
                    dropped_for = Some(q.name.clone());
                }
            }
            drop(states);
            if let Some(sink) = dropped_for
                && let Some(suppressed) = self.drop_log.allow()
            {
                tracing::warn!(
                    sink,
                    events = batch.events.len(),
                    suppressed,
                    "queue full: dropping a batch for this drop_newest sink (counted in audit_forwarder_events_dropped_total)"
                );
            }
            return Ok(());
        }
        Err(None)
    }

    /// Refuses every later batch and lets each sink end once it has delivered
    /// what its queue holds.
    ///
    /// With a disk buffer, the buffer stops taking batches and each queue is
    /// closed once its feeder has read the rest of the log: the sinks
    /// deliver what they can until the shutdown deadline, and what they have
    /// not delivered then stays in the log for the next start.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(disk) = &self.disk {
            disk.buffer.close();
            return;
        }
        for q in self.queues.load().iter() {
            q.close();
        }
    }

    /// Every queue, those a reload took out of the set and that still hold
    /// batches included.
    fn all(&self) -> Vec<Arc<Queue>> {
        let mut all: Vec<_> = self.queues.load().iter().cloned().collect();
        all.extend(
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        all
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
        for q in self.all() {
            q.metrics.dropped(reason, q.depth_events() as u64);
        }
        None
    }

    /// Events waiting or being delivered, summed over all queues.
    pub fn depth_events(&self) -> usize {
        self.all().iter().map(|q| q.depth_events()).sum()
    }
}

fn blocking(queues: &[Arc<Queue>]) -> impl Iterator<Item = &Arc<Queue>> {
    queues.iter().filter(|q| q.when_full == WhenFull::Block)
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

    #[tokio::test]
    async fn a_replaced_queue_drains_what_it_holds_and_new_batches_go_to_its_successor() {
        let m = Metrics::new();
        let wait = Duration::from_millis(10);
        let (p, mut old) = Pipeline::new(
            &[
                spec("a", 10, WhenFull::Block),
                spec("b", 10, WhenFull::Block),
            ],
            wait,
            &m,
        );
        p.admit(batch(2)).await.unwrap();
        let mut new = p.replace(&["a".into()], &[spec("a", 3, WhenFull::Block)], &m);
        p.admit(batch(3)).await.unwrap();
        assert_eq!(p.max_batch_events(), 3, "the new queue's bound");
        // The old "a" hands out what it held, then ends; the new one has only
        // the later batch; "b" has both.
        assert_eq!(old[0].recv().await.unwrap().batch.events.len(), 2);
        assert!(old[0].recv().await.is_none());
        assert_eq!(new[0].recv().await.unwrap().batch.events.len(), 3);
        assert_eq!(old[1].depth_events(), 5);
        // A full successor pushes back; the retired queue does not.
        p.admit(batch(3)).await.unwrap();
        assert!(matches!(p.admit(batch(1)).await, Err(Refusal::Full { .. })));
        p.close();
        assert_eq!(p.admit(batch(1)).await, Err(Refusal::Closed));
        assert_eq!(p.depth_events(), 3 + 8);
    }

    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
