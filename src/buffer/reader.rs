//! The read side: each sink's progress through the log and the task that
//! feeds its queue from it.
//!
//! A sink's queue holds batches read ahead from the log. A batch counts as
//! done for the sink when the sink lets go of it (it was delivered, or
//! rejected for good and dead-lettered). The sink's position, saved by the
//! checkpoint, is that of the oldest batch not yet done; batches can finish
//! out of order (an HTTP sink sends several at once), so the position waits
//! for the oldest.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::Pos;
use super::cursor::Cursor;
use super::lock;
use crate::pipeline::{Batch, WhenFull};

/// A batch read from the log and not yet done.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    pos: Pos,
    events: u32,
    time_ms: u64,
}

struct State {
    /// The next record to read.
    read: Pos,
    /// Sequence number of the last record read.
    read_seq: u64,
    /// Events read so far from the segment `read` is in.
    read_events_in_seg: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    /// Bumped when the position is moved from outside (a skip), so that a
    /// read made from the old position is thrown away.
    generation: u64,
    /// Events accepted into the log that this sink has not finished.
    backlog_events: u64,
    /// Once frozen (at shutdown), batches let go of count as not done: a
    /// sink stopped at the deadline drops batches it did not deliver.
    frozen: bool,
    /// Batches read from a segment the sink was moved past (their file may
    /// be gone), with their events: each is delivered after all (the sink
    /// had it in hand) or counted as dropped.
    skipped: BTreeMap<u64, u32>,
    cursor: Cursor,
}

/// Takes batches out of a sink's queue (those not yet handed to the sink):
/// given sequence numbers, returns those it removed.
pub(crate) type Purge = Box<dyn Fn(&[u64]) -> Vec<u64> + Send + Sync>;

/// One sink's progress through the log.
pub(crate) struct Progress {
    pub(crate) name: String,
    pub(crate) when_full: WhenFull,
    state: Mutex<State>,
    purge: std::sync::OnceLock<Purge>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("name", &self.name)
            .finish()
    }
}

/// What [`Progress::read_position`] gives the feeder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadAt {
    pub(crate) pos: Pos,
    pub(crate) after_seq: u64,
    pub(crate) generation: u64,
}

impl Progress {
    pub(crate) fn new(
        name: String,
        when_full: WhenFull,
        cursor: Cursor,
        backlog_events: u64,
    ) -> Self {
        let read = cursor.saved();
        Self {
            name,
            when_full,
            state: Mutex::new(State {
                read,
                read_seq: 0,
                read_events_in_seg: 0,
                outstanding: BTreeMap::new(),
                generation: 0,
                backlog_events,
                frozen: false,
                skipped: BTreeMap::new(),
                cursor,
            }),
            purge: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn read_position(&self) -> ReadAt {
        let s = lock(&self.state);
        ReadAt {
            pos: s.read,
            after_seq: s.read_seq,
            generation: s.generation,
        }
    }

    /// Moves the read position (to the next segment, or past damage) unless
    /// it was moved from outside since `at` was taken.
    pub(crate) fn move_to(&self, at: ReadAt, pos: Pos) {
        let mut s = lock(&self.state);
        if s.generation == at.generation && pos > s.read {
            if pos.seg != s.read.seg {
                s.read_events_in_seg = 0;
            }
            s.read = pos;
        }
    }

    /// Records that the record at `at` (sequence `seq`, ending at `next`) was
    /// read and is being handed to the sink. `false` when the position was
    /// moved meanwhile: the record must not be handed over.
    pub(crate) fn mark_read(
        &self,
        at: ReadAt,
        seq: u64,
        next: u64,
        events: u32,
        time_ms: u64,
    ) -> bool {
        let mut s = lock(&self.state);
        if s.generation != at.generation || s.read != at.pos {
            return false;
        }
        s.outstanding.insert(
            seq,
            Outstanding {
                pos: at.pos,
                events,
                time_ms,
            },
        );
        s.read = Pos {
            seg: at.pos.seg,
            off: next,
        };
        s.read_seq = seq;
        s.read_events_in_seg += u64::from(events);
        true
    }

    /// The sink is done with the batch of record `seq`.
    pub(crate) fn done(&self, seq: u64) {
        let mut s = lock(&self.state);
        if s.frozen {
            return;
        }
        if let Some(o) = s.outstanding.remove(&seq) {
            s.backlog_events = s.backlog_events.saturating_sub(u64::from(o.events));
        }
        s.skipped.remove(&seq);
    }

    /// Sets how batches are taken back out of the sink's queue.
    pub(crate) fn set_purge(&self, purge: Purge) {
        let _ = self.purge.set(purge);
    }

    /// Whether the batch of record `seq` is still wanted by the sink: not
    /// moved past by a skip.
    pub(crate) fn wanted(&self, seq: u64) -> bool {
        lock(&self.state).outstanding.contains_key(&seq)
    }

    /// The events of a skipped batch that will not be delivered after all
    /// (taken out of the queue, or not yet put in it), to be counted as
    /// dropped; `None` when `seq` is not a skipped batch.
    pub(crate) fn take_skipped(&self, seq: u64) -> Option<u32> {
        lock(&self.state).skipped.remove(&seq)
    }

    /// Takes the skipped batches still waiting in the sink's queue out of it
    /// and returns their events, to be counted as dropped.
    pub(crate) fn purge_skipped(&self) -> u64 {
        let seqs: Vec<u64> = lock(&self.state).skipped.keys().copied().collect();
        let Some(purge) = self.purge.get() else {
            return 0;
        };
        purge(&seqs)
            .into_iter()
            .filter_map(|seq| self.take_skipped(seq))
            .map(u64::from)
            .sum()
    }

    /// At shutdown: the events of skipped batches never delivered, to be
    /// counted as dropped.
    pub(crate) fn drain_skipped(&self) -> u64 {
        let mut s = lock(&self.state);
        std::mem::take(&mut s.skipped)
            .into_values()
            .map(u64::from)
            .sum()
    }

    /// From now on, batches let go of are not counted as done.
    pub(crate) fn freeze(&self) {
        lock(&self.state).frozen = true;
    }

    /// `events` more were accepted into the log.
    pub(crate) fn accepted(&self, events: u32) {
        lock(&self.state).backlog_events += u64::from(events);
    }

    /// `events` counted by [`Progress::accepted`] were not acknowledged after
    /// all (their sync failed).
    pub(crate) fn accepted_not(&self, events: u32) {
        let mut s = lock(&self.state);
        s.backlog_events = s.backlog_events.saturating_sub(u64::from(events));
    }

    /// The position of the oldest record not yet done.
    pub(crate) fn frontier(&self) -> Pos {
        let s = lock(&self.state);
        s.outstanding.values().next().map_or(s.read, |o| o.pos)
    }

    /// Events not yet done, and the acceptance time (ms since the epoch) of
    /// the oldest batch being handled, if any.
    pub(crate) fn lag(&self) -> (u64, Option<u64>) {
        let s = lock(&self.state);
        (
            s.backlog_events,
            s.outstanding.values().next().map(|o| o.time_ms),
        )
    }

    /// Saves the frontier durably.
    ///
    /// # Errors
    ///
    /// The save failed; the saved position stays the older one.
    pub(crate) fn checkpoint(&self) -> std::io::Result<Pos> {
        let mut s = lock(&self.state);
        let frontier = s.outstanding.values().next().map_or(s.read, |o| o.pos);
        s.cursor.save(frontier)?;
        Ok(frontier)
    }

    /// The position last saved.
    pub(crate) fn saved(&self) -> Pos {
        lock(&self.state).cursor.saved()
    }

    /// Moves a lagging sink past segment `seg` (of `seg_events` events) to
    /// `to`, the next segment's start, and saves that. Returns the events it
    /// had not read yet: they are dropped for this sink. Batches of that
    /// segment already read become skipped ones: see [`Progress::purge_skipped`].
    pub(crate) fn skip(&self, seg: u64, seg_events: u64, to: Pos) -> std::io::Result<u64> {
        let mut s = lock(&self.state);
        let mut dropped = 0;
        if s.read < to {
            dropped = if s.read.seg == seg {
                seg_events.saturating_sub(s.read_events_in_seg)
            } else {
                seg_events
            };
            s.read = to;
            s.read_events_in_seg = 0;
            s.generation += 1;
        }
        let gone: Vec<u64> = s
            .outstanding
            .iter()
            .filter(|(_, o)| o.pos < to)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in gone {
            if let Some(o) = s.outstanding.remove(&seq) {
                s.backlog_events = s.backlog_events.saturating_sub(u64::from(o.events));
                s.skipped.insert(seq, o.events);
            }
        }
        s.backlog_events = s.backlog_events.saturating_sub(dropped);
        let frontier = s.outstanding.values().next().map_or(s.read, |o| o.pos);
        s.cursor.save(frontier)?;
        Ok(dropped)
    }
}

/// A batch recently committed, kept in memory so that sinks that keep up do
/// not read it back from the file and decode it again.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) pos: Pos,
    pub(crate) next: u64,
    pub(crate) seq: u64,
    pub(crate) events: u32,
    pub(crate) time_ms: u64,
    pub(crate) batch: Arc<Batch>,
}

/// The recently committed batches, in log order, bounded in bytes.
pub(crate) struct Cache {
    entries: Mutex<(VecDeque<Cached>, usize)>,
    budget: usize,
}

impl Cache {
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            entries: Mutex::new((VecDeque::new(), 0)),
            budget,
        }
    }

    /// Adds a committed batch; the oldest ones go when over budget, and so
    /// do those every sink has read (`min_read`).
    pub(crate) fn insert(&self, c: Cached, min_read: Pos) {
        let mut g = lock(&self.entries);
        let (entries, bytes) = &mut *g;
        *bytes += c.batch.retained_bytes();
        let at = entries.partition_point(|e| e.seq < c.seq);
        entries.insert(at, c);
        while let Some(front) = entries.front() {
            if *bytes <= self.budget && front.pos >= min_read {
                break;
            }
            *bytes -= front.batch.retained_bytes();
            entries.pop_front();
        }
    }

    /// Forgets the batch at `pos` (its record was not committed).
    pub(crate) fn remove(&self, pos: Pos) {
        let mut g = lock(&self.entries);
        let (entries, bytes) = &mut *g;
        if let Some(i) = entries.iter().position(|e| e.pos == pos)
            && let Some(e) = entries.remove(i)
        {
            *bytes -= e.batch.retained_bytes();
        }
    }

    /// The batch of the record at `pos`, if kept.
    pub(crate) fn get(&self, pos: Pos) -> Option<Cached> {
        let g = lock(&self.entries);
        let i = g.0.partition_point(|e| e.pos < pos);
        g.0.get(i).filter(|e| e.pos == pos).cloned()
    }
}
