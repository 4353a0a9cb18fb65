//! The write side of the log: appends records to the active segment, rolls
//! to a new one at `segment_bytes`, and makes appends durable with one
//! `fdatasync` shared by every request waiting at that moment (group commit).
//!
//! Nothing is acknowledged that is not synced. A failed `fdatasync` leaves the
//! kernel's pages marked clean whatever reached the disk, so the log stops
//! trusting the active file: it is cut back to its last synced length, synced
//! again, closed, and appends go on in a new file; until that succeeds every
//! append fails.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::lock;
use super::record;
use super::segment;
use super::storage::{LogFile, Storage};

/// One segment as the writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegMeta {
    /// Sequence number the file is named after (its first record's, or the
    /// next one's when it was created).
    pub(crate) first: u64,
    /// Bytes of records in it (the durable part for the active segment).
    pub(crate) len: u64,
    /// Events in its records.
    pub(crate) events: u64,
    /// No more records will be added.
    pub(crate) sealed: bool,
}

/// The end of what is durable: readers never read past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Sequence number of the last durable record (0: none yet).
    pub(crate) seq: u64,
    /// Bumped by every commit, so readers can wait for the next.
    pub(crate) epoch: u64,
}

/// Why an append failed. Nothing of it is acknowledged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    /// `max_bytes` would be passed.
    #[error("the disk buffer is at its max_bytes")]
    NoRoom,
    /// The file system has no space left.
    #[error("no space left on the disk buffer's file system")]
    DiskFull,
    /// A write, sync or file operation failed; the log is re-checked before
    /// the next append.
    #[error("disk buffer {what} failed: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The log is closed.
    #[error("the disk buffer is closed")]
    Closed,
}

impl AppendError {
    /// The `kind` label of `audit_forwarder_buffer_disk_errors_total`.
    pub(crate) fn kind(&self) -> Option<&'static str> {
        match self {
            Self::DiskFull => Some("full"),
            Self::Io { what, .. } => Some(what),
            Self::NoRoom | Self::Closed => None,
        }
    }
}

/// Where an appended record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) seq: u64,
    pub(crate) seg: u64,
    pub(crate) off: u64,
    pub(crate) next: u64,
}

struct Writer {
    segs: VecDeque<SegMeta>,
    file: Option<Arc<dyn LogFile>>,
    /// Bytes written to the active file, synced or not.
    written_len: u64,
    written_events: u64,
    written_seq: u64,
    next_seq: u64,
    prev_crc: u32,
    total: u64,
    failed: bool,
    /// Records up to this sequence number that were not committed were
    /// given up with their file after a failure.
    lost_through: u64,
    closed: bool,
    buf: Vec<u8>,
}

/// Records up to this size are copied into one buffer and written with one
/// call; larger ones are written from where their parts lie.
const SMALL_RECORD: usize = 64 << 10;

/// Writes a record: `buf` holds its header; `parts` are its payload.
fn write_record(
    file: &dyn LogFile,
    buf: &mut Vec<u8>,
    parts: &[&[u8]],
    off: u64,
) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let pad = record::padding(len);
    if len <= SMALL_RECORD {
        for p in parts {
            buf.extend_from_slice(p);
        }
        buf.resize(buf.len() + pad, 0);
        return file.write_at(buf, off);
    }
    let mut at = off;
    // The header with the first (short) part, then the rest where it lies.
    let (first, rest) = parts
        .split_first()
        .map_or((&[][..], parts), |(f, r)| (*f, r));
    buf.extend_from_slice(first);
    file.write_at(buf, at)?;
    at += buf.len() as u64;
    for p in rest {
        file.write_at(p, at)?;
        at += p.len() as u64;
    }
    file.write_at(&[0u8; 8][..pad], at)
}

/// The log's writer.
pub(crate) struct Log {
    storage: Arc<dyn Storage>,
    segment_bytes: u64,
    max_bytes: u64,
    w: Mutex<Writer>,
    sync_lock: Mutex<()>,
    committed: Mutex<Committed>,
    /// Woken at every commit and at close.
    pub(crate) changed: tokio::sync::Notify,
    /// Seconds per `fdatasync`, for the histogram.
    on_sync: Box<dyn Fn(f64) + Send + Sync>,
}

impl Log {
    /// A log over `storage` whose sealed segments are `segs` (oldest first)
    /// and whose next record gets `next_seq`.
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        segment_bytes: u64,
        max_bytes: u64,
        segs: Vec<SegMeta>,
        next_seq: u64,
        on_sync: Box<dyn Fn(f64) + Send + Sync>,
    ) -> Self {
        let total = segs.iter().map(|s| s.len).sum();
        Self {
            storage,
            segment_bytes,
            max_bytes,
            w: Mutex::new(Writer {
                segs: segs.into(),
                file: None,
                written_len: 0,
                written_events: 0,
                written_seq: next_seq - 1,
                next_seq,
                prev_crc: 0,
                total,
                failed: false,
                lost_through: 0,
                closed: false,
                buf: Vec::new(),
            }),
            sync_lock: Mutex::new(()),
            committed: Mutex::new(Committed {
                seq: next_seq - 1,
                epoch: 0,
            }),
            changed: tokio::sync::Notify::new(),
            on_sync,
        }
    }

    /// The end of the durable log.
    pub(crate) fn committed(&self) -> Committed {
        *lock(&self.committed)
    }

    /// The segments, oldest first (the active one last, with its durable
    /// length).
    pub(crate) fn segments(&self) -> Vec<SegMeta> {
        lock(&self.w).segs.iter().copied().collect()
    }

    /// The segment after `first`, if any.
    pub(crate) fn next_segment(&self, first: u64) -> Option<u64> {
        let w = lock(&self.w);
        w.segs.iter().map(|s| s.first).find(|&f| f > first)
    }

    /// Durable length of segment `first` and whether it is sealed; `None` when
    /// it is not (or no longer) part of the log.
    pub(crate) fn segment(&self, first: u64) -> Option<SegMeta> {
        lock(&self.w)
            .segs
            .iter()
            .find(|s| s.first == first)
            .copied()
    }

    /// Bytes the log's segments take.
    pub(crate) fn total_bytes(&self) -> u64 {
        lock(&self.w).total
    }

    /// Whether a record with a payload of `payload` bytes fits within
    /// `max_bytes` now, and the log takes appends.
    pub(crate) fn has_room(&self, payload: usize) -> Result<(), AppendError> {
        let w = lock(&self.w);
        if w.closed {
            return Err(AppendError::Closed);
        }
        if w.total + record::record_size(payload) as u64 > self.max_bytes {
            return Err(AppendError::NoRoom);
        }
        Ok(())
    }

    /// Writes one record (not yet durable: see [`Log::commit`]).
    ///
    /// # Errors
    ///
    /// [`AppendError`]; nothing of the record is kept.
    pub(crate) fn write(
        &self,
        payload: &[&[u8]],
        events: u32,
        time_ms: u64,
    ) -> Result<Appended, AppendError> {
        let mut w = lock(&self.w);
        if w.closed {
            return Err(AppendError::Closed);
        }
        if w.failed {
            self.recover(&mut w)?;
        }
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let size = record::record_size(len) as u64;
        if w.total + size > self.max_bytes {
            return Err(AppendError::NoRoom);
        }
        if w.file.is_some() && w.written_len > 0 && w.written_len + size > self.segment_bytes {
            self.seal(&mut w)?;
        }
        if w.file.is_none() {
            self.start_segment(&mut w)?;
        }
        let seq = w.next_seq;
        let off = w.written_len;
        let prev = w.prev_crc;
        let mut buf = std::mem::take(&mut w.buf);
        let crc = record::encode_header(&mut buf, seq, time_ms, events, prev, payload);
        let file = w.file.clone().ok_or(AppendError::Closed)?;
        let result = write_record(file.as_ref(), &mut buf, payload, off);
        buf.clear();
        if buf.capacity() > SMALL_RECORD {
            buf = Vec::new();
        }
        w.buf = buf;
        if let Err(e) = result {
            // Take back what part of the record may have been written.
            let cut = file.set_len(off);
            if e.raw_os_error() == Some(28) && cut.is_ok() {
                return Err(AppendError::DiskFull);
            }
            w.failed = true;
            return Err(AppendError::Io {
                what: "write",
                source: e,
            });
        }
        w.next_seq += 1;
        w.written_seq = seq;
        w.written_len += size;
        w.written_events += u64::from(events);
        w.prev_crc = crc;
        w.total += size;
        Ok(Appended {
            seq,
            seg: w.segs.back().map_or(0, |s| s.first),
            off,
            next: off + size,
        })
    }

    /// Makes everything written up to `seq` durable, sharing one sync with
    /// every append that waits at the same time. Until it returns `Ok` the
    /// record is not acknowledged and no sink reads it.
    ///
    /// # Errors
    ///
    /// [`AppendError::Io`] when the sync failed, or failed before for the
    /// record's file.
    pub(crate) fn commit(&self, seq: u64) -> Result<(), AppendError> {
        let _one_at_a_time = lock(&self.sync_lock);
        if self.committed().seq >= seq {
            return Ok(());
        }
        let (file, first, len, events, last) = {
            let w = lock(&self.w);
            if w.failed {
                return Err(AppendError::Io {
                    what: "sync",
                    source: io::Error::other("an earlier sync of this file failed"),
                });
            }
            // Sealing syncs and publishes, so a record not yet committed
            // whose file is gone was in a file given up after a failure.
            let Some(file) = w.file.clone().filter(|_| seq > w.lost_through) else {
                return Err(AppendError::Io {
                    what: "sync",
                    source: io::Error::other("the record's file was given up after a failed sync"),
                });
            };
            let first = w.segs.back().map_or(0, |s| s.first);
            (file, first, w.written_len, w.written_events, w.written_seq)
        };
        let started = Instant::now();
        let result = file.sync_data();
        (self.on_sync)(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => self.publish(last, first, len, events),
            Err(e) => {
                lock(&self.w).failed = true;
                Err(AppendError::Io {
                    what: "sync",
                    source: e,
                })
            }
        }
    }

    /// Records that everything up to `seq` is durable, segment `first` (if
    /// still active) up to `len` bytes holding `events` events.
    fn publish(&self, seq: u64, first: u64, len: u64, events: u64) -> Result<(), AppendError> {
        {
            let mut w = lock(&self.w);
            if let Some(seg) = w.segs.back_mut().filter(|s| !s.sealed && s.first == first)
                && len > seg.len
            {
                seg.len = len;
                seg.events = events;
            }
        }
        let mut c = lock(&self.committed);
        c.seq = c.seq.max(seq);
        c.epoch += 1;
        drop(c);
        self.changed.notify_waiters();
        Ok(())
    }

    fn start_segment(&self, w: &mut Writer) -> Result<(), AppendError> {
        let first = w.next_seq;
        let io = |what| move |source| AppendError::Io { what, source };
        let file = self
            .storage
            .create(&segment::file_name(first))
            .map_err(io("create"))?;
        self.storage.sync_dir().map_err(io("create"))?;
        w.file = Some(file);
        w.written_len = 0;
        w.written_events = 0;
        w.prev_crc = record::seed(first);
        w.segs.push_back(SegMeta {
            first,
            len: 0,
            events: 0,
            sealed: false,
        });
        Ok(())
    }

    /// Syncs and closes the active segment.
    fn seal(&self, w: &mut Writer) -> Result<(), AppendError> {
        let Some(file) = w.file.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let synced = file.sync_data();
        (self.on_sync)(started.elapsed().as_secs_f64());
        if let Err(source) = synced {
            w.file = Some(file);
            w.failed = true;
            return Err(AppendError::Io {
                what: "sync",
                source,
            });
        }
        let (len, events) = (w.written_len, w.written_events);
        if let Some(seg) = w.segs.back_mut() {
            *seg = SegMeta {
                len,
                events,
                sealed: true,
                ..*seg
            };
        }
        let seq = w.written_seq;
        let mut c = lock(&self.committed);
        c.seq = c.seq.max(seq);
        c.epoch += 1;
        Ok(())
    }

    /// After a failed write or sync: cuts the active file back to its durable
    /// length, syncs it and closes it; the next append starts a new file.
    fn recover(&self, w: &mut Writer) -> Result<(), AppendError> {
        if let Some(file) = w.file.take() {
            let seg = w.segs.back().copied();
            let durable = seg.map_or(0, |s| s.len);
            let cut = file.set_len(durable).and_then(|()| file.sync_data());
            if let Err(source) = cut {
                w.file = Some(file);
                return Err(AppendError::Io {
                    what: "sync",
                    source,
                });
            }
            w.total -= w.written_len - durable;
            if let Some(seg) = w.segs.back_mut() {
                seg.sealed = true;
            }
            tracing::warn!(
                segment = segment::file_name(seg.map_or(0, |s| s.first)),
                kept_bytes = durable,
                dropped_bytes = w.written_len - durable,
                "disk buffer: re-checked the log after a failed write or sync; unacknowledged records removed, appends go on in a new file"
            );
        }
        w.lost_through = w.written_seq;
        w.failed = false;
        Ok(())
    }

    /// Deletes sealed segments named before `below`, oldest first, and
    /// returns how many bytes that freed.
    pub(crate) fn delete_before(&self, below: u64) -> u64 {
        let mut freed = 0;
        let mut removed = false;
        loop {
            let mut w = lock(&self.w);
            let Some(front) = w.segs.front().copied() else {
                break;
            };
            let next = w.segs.get(1).map(|s| s.first);
            // A segment may go when the next one starts at or before `below`.
            if !front.sealed || next.is_none_or(|n| n > below) {
                break;
            }
            if let Err(e) = self.storage.remove(&segment::file_name(front.first)) {
                tracing::error!(error = %e, segment = segment::file_name(front.first), "disk buffer: failed to delete a delivered segment");
                break;
            }
            w.segs.pop_front();
            w.total -= front.len;
            freed += front.len;
            removed = true;
        }
        if removed && let Err(e) = self.storage.sync_dir() {
            tracing::warn!(error = %e, "disk buffer: failed to sync the directory after deleting segments");
        }
        freed
    }

    /// Refuses further appends and wakes readers.
    pub(crate) fn close(&self) {
        lock(&self.w).closed = true;
        lock(&self.committed).epoch += 1;
        self.changed.notify_waiters();
    }

    /// Whether [`Log::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.w).closed
    }
}
