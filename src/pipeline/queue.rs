//! A sink's bounded in-memory queue of batches.
//!
//! Bounded in events and in bytes ([`super::Batch::retained_bytes`]). Room is
//! held from the moment a batch is admitted until the sink has finished with it
//! (its [`Delivery`] is dropped), so the depth counts what is being sent too.
//! Admission is done by [`super::Pipeline`], which takes the locks of every
//! queue at once so that a batch enters all of them or none.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Batch, Space};
use crate::buffer::Progress;
use crate::metrics::SinkMetrics;

/// Most bytes a queue fed from the disk buffer reads ahead of its sink.
pub const READ_AHEAD_BYTES: usize = 32 << 20;

/// What a queue does when a batch does not fit (Vector's `when_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the whole request with 503 (back-pressure to the API server).
    #[default]
    Block,
    /// Accept the request and drop the batch for this sink, counted in
    /// `audit_forwarder_events_dropped_total{reason="queue_full"}`.
    DropNewest,
}

pub(crate) struct State {
    /// Batches waiting, with their record's sequence number when they come
    /// from the disk buffer.
    items: VecDeque<(Arc<Batch>, Option<u64>)>,
    events: usize,
    bytes: usize,
    closed: bool,
}

/// One sink's queue.
pub(crate) struct Queue {
    pub(crate) name: String,
    pub(crate) capacity_events: usize,
    pub(crate) capacity_bytes: usize,
    pub(crate) when_full: WhenFull,
    state: Mutex<State>,
    ready: Notify,
    space: Arc<Space>,
    pub(crate) metrics: SinkMetrics,
    /// With a disk buffer: where a batch the sink is done with is recorded.
    progress: Option<Arc<Progress>>,
}

impl Queue {
    pub(crate) fn new(
        name: String,
        capacity_events: usize,
        capacity_bytes: usize,
        when_full: WhenFull,
        space: Arc<Space>,
        metrics: SinkMetrics,
        progress: Option<Arc<Progress>>,
    ) -> Self {
        let state = State {
            items: VecDeque::new(),
            events: 0,
            bytes: 0,
            closed: false,
        };
        Self {
            name,
            capacity_events,
            capacity_bytes,
            when_full,
            state: Mutex::new(state),
            ready: Notify::new(),
            space,
            metrics,
            progress,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still
        // consistent (each update is a single statement), so poison is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `batch` could ever fit in an empty queue.
    pub(crate) fn can_ever_hold(&self, batch: &Batch) -> bool {
        batch.events.len() <= self.capacity_events && batch.retained_bytes() <= self.capacity_bytes
    }

    /// Whether `bytes` more bytes and one more event fit now.
    pub(crate) fn has_room(&self, state: &State, bytes: usize) -> bool {
        state.events < self.capacity_events && state.bytes + bytes <= self.capacity_bytes
    }

    pub(crate) fn fits(&self, state: &State, batch: &Batch) -> bool {
        state.events + batch.events.len() <= self.capacity_events
            && state.bytes + batch.retained_bytes() <= self.capacity_bytes
    }

    pub(crate) fn push(&self, state: &mut State, batch: Arc<Batch>, seq: Option<u64>) {
        state.events += batch.events.len();
        state.bytes += batch.retained_bytes();
        state.items.push_back((batch, seq));
        self.publish(state);
        self.ready.notify_one();
    }

    /// Puts a batch read from the disk buffer into the queue, waiting for
    /// room (an empty queue takes any batch). With a disk buffer the queue is
    /// read-ahead from the log, so it holds at most [`READ_AHEAD_BYTES`] even
    /// when `capacity_bytes` is larger: memory does not follow the backlog.
    /// `false` once the queue is closed.
    pub(crate) async fn push_wait(&self, batch: Arc<Batch>, seq: u64) -> bool {
        loop {
            let notified = self.space.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return false;
                }
                // Skipped past while waiting for room (a lagging
                // `drop_newest` sink): dropped, counted.
                if let Some(p) = &self.progress
                    && !p.wanted(seq)
                {
                    let events = p.take_skipped(seq).unwrap_or(0);
                    self.metrics.dropped("buffer_full", u64::from(events));
                    return true;
                }
                let read_ahead = state.bytes + batch.retained_bytes() <= READ_AHEAD_BYTES;
                if state.events == 0 || (read_ahead && self.fits(&state, &batch)) {
                    self.push(&mut state, batch, Some(seq));
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Takes the waiting batches whose sequence numbers are in `seqs` out
    /// of the queue (not those a sink already has in hand) and returns their
    /// sequence numbers.
    pub(crate) fn purge(&self, seqs: &[u64]) -> Vec<u64> {
        let mut state = self.lock();
        let mut removed = Vec::new();
        let mut freed = (0, 0);
        state.items.retain(|(batch, seq)| match seq {
            Some(s) if seqs.contains(s) => {
                removed.push(*s);
                freed.0 += batch.events.len();
                freed.1 += batch.retained_bytes();
                false
            }
            _ => true,
        });
        state.events -= freed.0;
        state.bytes -= freed.1;
        self.publish(&state);
        drop(state);
        if !removed.is_empty() {
            self.space.freed();
        }
        removed
    }

    pub(crate) fn depth_events(&self) -> usize {
        self.lock().events
    }

    pub(crate) fn is_closed(state: &State) -> bool {
        state.closed
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.space.notify.notify_waiters();
    }

    fn publish(&self, state: &State) {
        self.metrics.queue_events.set(state.events as i64);
        self.metrics.queue_bytes.set(state.bytes as i64);
    }

    fn release(&self, batch: &Batch, seq: Option<u64>) {
        if let (Some(p), Some(seq)) = (&self.progress, seq) {
            p.done(seq);
        }
        let mut state = self.lock();
        state.events -= batch.events.len();
        state.bytes -= batch.retained_bytes();
        self.publish(&state);
        drop(state);
        self.space.freed();
    }
}

/// The receiving end of a queue, owned by its sink. With a
/// [`Processor`](crate::process::Processor) set, each batch is processed as it
/// is taken: the sink gets its own view, the queue keeps the batch received.
pub struct QueueReader {
    pub(crate) queue: Arc<Queue>,
    pub(crate) processor: Option<Arc<crate::process::Processor>>,
}

/// A batch taken from a queue. Its room in the queue is given back when this is
/// dropped, so a sink drops it once the batch is delivered.
pub struct Delivery {
    /// The batch, as the sink's processing made it.
    pub batch: Arc<Batch>,
    /// The batch as queued, whose room this holds.
    held: Arc<Batch>,
    queue: Arc<Queue>,
    seq: Option<u64>,
    _done: Option<crate::process::Done>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.queue.release(&self.held, self.seq);
    }
}

impl QueueReader {
    /// The next batch, waiting for one; `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            let queue = self.queue.clone();
            let notified = queue.ready.notified();
            if let Some(next) = self.try_recv() {
                return Some(next);
            }
            if self.queue.lock().closed {
                if let Some(p) = &self.processor {
                    p.flush();
                }
                return None;
            }
            notified.await;
        }
    }

    /// The next batch if one is waiting. A batch whose events processing
    /// dropped entirely is finished with at once and skipped.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        loop {
            let (held, seq) = self.queue.lock().items.pop_front()?;
            let (batch, done) = match &self.processor {
                None => (held.clone(), None),
                Some(p) => match p.process(&held) {
                    (crate::process::Processed::Same, done) => (held.clone(), done),
                    (crate::process::Processed::Changed(b), done) => (b, done),
                },
            };
            let delivery = Delivery {
                batch,
                held,
                queue: self.queue.clone(),
                seq,
                _done: done,
            };
            if !delivery.batch.events.is_empty() {
                return Some(delivery);
            }
        }
    }

    /// Processes each batch with `processor` from now on.
    pub fn set_processor(&mut self, processor: Arc<crate::process::Processor>) {
        self.processor = Some(processor);
    }

    /// Whether the queue is closed and has nothing waiting.
    pub fn is_closed_and_empty(&self) -> bool {
        let state = self.queue.lock();
        state.closed && state.items.is_empty()
    }

    /// Whether no batch is waiting (batches being delivered do not count).
    pub fn is_empty(&self) -> bool {
        self.queue.lock().items.is_empty()
    }

    /// Events waiting or being delivered.
    pub fn depth_events(&self) -> usize {
        self.queue.depth_events()
    }

    /// The sink's name.
    pub fn sink_name(&self) -> &str {
        &self.queue.name
    }

    /// The sink's metric handles.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.queue.metrics
    }
}
