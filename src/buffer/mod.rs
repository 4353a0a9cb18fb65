//! The disk buffer: a write-ahead log on disk shared by all sinks, one saved
//! position per sink. With `buffer.type: disk` a request is answered 200 only
//! once its batch is `fdatasync`ed, so an accepted batch survives `kill -9`
//! and a power cut, and a sink outage is absorbed up to `buffer.max_bytes`.
//!
//! # Layout of `buffer.path`
//!
//! - `<first seq, 20 digits>.wal`: segments, records appended in order (see
//!   [`record`] for the framing), deleted whole once every sink's saved
//!   position has passed them.
//! - `<sink>.pos`: each sink's saved position (see [`cursor`]).
//! - `lock`: held (`flock`) by the running forwarder.
//!
//! # Guarantees
//!
//! - A batch is written once, whole, as one record: after a crash every sink
//!   gets it or none does.
//! - A sink is given again, after a restart, what it finished after its last
//!   saved position: at most `checkpoint_interval_ms` of deliveries plus the
//!   batches it had in flight (at least once). Events a sink is given from
//!   the previous run are counted in
//!   `audit_forwarder_buffer_replayed_events_total`.
//! - Start-up reads the last segment whole (its torn end is cut off) and the
//!   others' record headers only; memory does not grow with the backlog.
//!   Damage anywhere is skipped, counted and logged, never a reason not to
//!   start.

pub mod cursor;
mod log;
mod reader;
pub mod record;
mod segment;
pub(crate) mod storage;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::BufferConfig;
use crate::decode::DecodeOptions;
use crate::metrics::{BufferMetrics, Metrics};
use crate::pipeline::{Batch, WhenFull};
use log::{AppendError, Log, SegMeta};
pub(crate) use reader::Progress;
use reader::{Cache, Cached, ReadAt};
use segment::Found;
use storage::{Dir, Storage};

/// A place in the log: the segment (named by its first sequence number) and
/// a byte offset in it. Ordered as the log is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// The segment's first sequence number.
    pub seg: u64,
    /// Byte offset of a record in it.
    pub off: u64,
}

/// Recent batches kept in memory for sinks that keep up.
const CACHE_BYTES: usize = 64 << 20;

/// Why the disk buffer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A file operation failed.
    #[error("disk buffer {path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the directory.
    #[error(
        "disk buffer {0}: in use by another forwarder (its lock file is held); give each forwarder its own buffer.path"
    )]
    Locked(PathBuf),
}

/// Why a batch was not taken by the disk buffer. Nothing of it is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferRefusal {
    /// A `block` sink's backlog holds the buffer at `max_bytes`.
    #[error("the disk buffer is full (buffer.max_bytes) with events sink {0} has not delivered")]
    Full(String),
    /// A disk error; the message says which.
    #[error("{0}")]
    Disk(String),
    /// Shutting down.
    #[error("the forwarder is shutting down")]
    Closed,
}

/// The open disk buffer.
pub struct DiskBuffer {
    dir: PathBuf,
    log: Log,
    sinks: Vec<Arc<Progress>>,
    cache: Cache,
    metrics: BufferMetrics,
    max_payload: u32,
    decode: DecodeOptions,
    max_decoded_bytes: u64,
    /// Records up to this sequence number were accepted by an earlier run.
    replay_until: u64,
    /// Damaged places already counted, so that several sinks reading the
    /// same damage count it once.
    damage_seen: Mutex<HashSet<Pos>>,
    checkpoint_interval: Duration,
    main_metrics: Metrics,
    error_log: crate::ratelimit::RateLimit,
    _lock: File,
}

/// Locks `m`; a panic while it was held leaves state that is still
/// consistent (each update is one statement or is redone), so poison is
/// ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DiskBuffer {
    /// Opens (or creates) the buffer in `cfg.path` for `sinks` (name and
    /// `when_full`, in config order), recovering what an earlier run left:
    /// the torn end of the last segment is cut off, damage is counted, each
    /// known sink resumes at its saved position, a new sink starts at the
    /// end, and the positions of sinks no longer configured are removed.
    ///
    /// # Errors
    ///
    /// [`OpenError`] naming the path, when the directory cannot be created,
    /// locked or read.
    pub fn open(
        cfg: &BufferConfig,
        sinks: &[(String, WhenFull)],
        decode: DecodeOptions,
        max_decoded_bytes: u64,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, OpenError> {
        Self::open_with(
            Arc::new(Dir::new(&cfg.path)),
            cfg,
            sinks,
            decode,
            max_decoded_bytes,
            metrics,
        )
    }

    pub(crate) fn open_with(
        storage: Arc<dyn Storage>,
        cfg: &BufferConfig,
        sinks: &[(String, WhenFull)],
        decode: DecodeOptions,
        max_decoded_bytes: u64,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, OpenError> {
        let dir = cfg.path.clone();
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, what, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("failed to create the directory", &dir))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("failed to open the lock file", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(dir));
        }
        let names: Vec<&str> = sinks.iter().map(|(n, _)| n.as_str()).collect();
        let bm = BufferMetrics::register(metrics.registry(), &names);
        bm.max_bytes.set(cfg.max_bytes as i64);
        // A record holds one request: its body, its path and a few bytes.
        let max_payload =
            (max_decoded_bytes + 4 + u64::from(u16::MAX)).min(u64::from(u32::MAX)) as u32;

        let recovered = recover(&dir, max_payload).map_err(io("failed to read the log", &dir))?;
        if recovered.damaged > 0 {
            bm.corrupt.inc_by(recovered.damaged);
        }
        let next_seq = recovered.next_seq;
        let end = Pos {
            seg: next_seq,
            off: 0,
        };
        let first_seg = recovered.segs.first().map(|s| s.first);
        let mut progress = Vec::new();
        for (name, when_full) in sinks {
            let path = dir.join(cursor::file_name(name));
            let saved = match cursor::read(&path) {
                Ok(found) => Some(found),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("failed to read a sink's position", &path)(e)),
            };
            let (cursor, pos) = match saved {
                Some(Some((generation, pos))) => {
                    let pos = clamp(pos, &recovered.segs, end);
                    let c = cursor::Cursor::open(storage.as_ref(), name, generation, pos)
                        .map_err(io("failed to open a sink's position", &path))?;
                    (c, pos)
                }
                Some(None) => {
                    let pos = first_seg.map_or(end, |seg| Pos { seg, off: 0 });
                    tracing::warn!(sink = %name, file = %path.display(), "disk buffer: a sink's saved position is unreadable; it starts again at the oldest record kept");
                    bm.corrupt.inc();
                    let c = cursor::Cursor::create(storage.as_ref(), name, pos)
                        .map_err(io("failed to write a sink's position", &path))?;
                    (c, pos)
                }
                None => {
                    let c = cursor::Cursor::create(storage.as_ref(), name, end)
                        .map_err(io("failed to write a sink's position", &path))?;
                    (c, end)
                }
            };
            let backlog = backlog_from(&dir, &recovered.segs, pos, max_payload)
                .map_err(io("failed to read the log", &dir))?;
            progress.push(Arc::new(Progress::new(
                name.clone(),
                *when_full,
                cursor,
                backlog,
            )));
        }
        remove_unknown_positions(&dir, &names);

        let fsync = bm.fsync.clone();
        let log = Log::new(
            storage,
            cfg.segment_bytes,
            cfg.max_bytes,
            recovered.segs,
            next_seq,
            Box::new(move |secs| fsync.observe(secs)),
        );
        let min_saved = progress
            .iter()
            .map(|p| p.saved().seg)
            .min()
            .unwrap_or(next_seq);
        log.delete_before(min_saved);
        let backlog: u64 = progress.iter().map(|p| p.lag().0).max().unwrap_or(0);
        tracing::info!(
            path = %dir.display(),
            segments = log.segments().len(),
            bytes = log.total_bytes(),
            undelivered_events = backlog,
            damaged_records = recovered.damaged,
            "disk buffer opened"
        );
        let buffer = Arc::new(Self {
            dir,
            log,
            sinks: progress,
            cache: Cache::new(CACHE_BYTES),
            metrics: bm,
            max_payload,
            decode,
            max_decoded_bytes,
            replay_until: next_seq - 1,
            damage_seen: Mutex::new(HashSet::new()),
            checkpoint_interval: Duration::from_millis(cfg.checkpoint_interval_ms),
            main_metrics: metrics.clone(),
            error_log: crate::ratelimit::RateLimit::new(Duration::from_secs(10)),
            _lock: lock,
        });
        buffer.publish_metrics();
        Ok(buffer)
    }

    /// The progress of the sink at `index` (config order).
    pub(crate) fn progress(&self, index: usize) -> Arc<Progress> {
        self.sinks[index].clone()
    }

    /// Checks, before a body is read, that `bytes` more would fit.
    ///
    /// # Errors
    ///
    /// [`BufferRefusal`] when the request would be refused.
    pub fn check_room(&self, bytes: usize) -> Result<(), BufferRefusal> {
        match self.log.has_room(bytes) {
            Ok(()) => Ok(()),
            Err(AppendError::NoRoom) => {
                // A lagging drop_newest sink would be skipped to make room.
                match self.lagging_block_sink() {
                    Some(sink) => Err(BufferRefusal::Full(sink)),
                    None => Ok(()),
                }
            }
            Err(e) => Err(self.refusal(e)),
        }
    }

    fn lagging_block_sink(&self) -> Option<String> {
        let oldest = self.log.segments().first()?.first;
        self.sinks
            .iter()
            .find(|p| p.when_full == WhenFull::Block && p.frontier().seg <= oldest)
            .map(|p| p.name.clone())
    }

    /// Appends `batch` and returns once it is durable; every sink will be
    /// given it.
    ///
    /// # Errors
    ///
    /// [`BufferRefusal`]: nothing of the batch is kept.
    pub async fn append(self: &Arc<Self>, batch: Arc<Batch>) -> Result<(), BufferRefusal> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.append_blocking(batch))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn append_blocking(&self, batch: Arc<Batch>) -> Result<(), BufferRefusal> {
        let [prefix, body] = record::payload(&batch);
        let payload: [&[u8]; 2] = [&prefix, &body];
        let events = batch.events.len() as u32;
        let time_ms = now_ms();
        let mut tries = 0;
        let at = loop {
            match self.log.write(&payload, events, time_ms) {
                Ok(at) => break at,
                Err(AppendError::NoRoom) if tries < 64 => {
                    tries += 1;
                    if let Err(sink) = self.make_room() {
                        return Err(BufferRefusal::Full(sink));
                    }
                }
                Err(AppendError::NoRoom) => {
                    return Err(BufferRefusal::Full("(several)".into()));
                }
                Err(e) => return Err(self.refusal(e)),
            }
        };
        // Into the cache before the commit makes the record visible, so that
        // a sink that keeps up takes it from memory rather than the file.
        let pos = Pos {
            seg: at.seg,
            off: at.off,
        };
        let min_read = self
            .sinks
            .iter()
            .map(|p| p.read_position().pos)
            .min()
            .unwrap_or_default();
        let cached = Cached {
            pos,
            next: at.next,
            seq: at.seq,
            events,
            time_ms,
            batch,
        };
        self.cache.insert(cached, min_read);
        for p in &self.sinks {
            p.accepted(events);
        }
        if let Err(e) = self.log.commit(at.seq) {
            self.cache.remove(pos);
            for p in &self.sinks {
                p.accepted_not(events);
            }
            return Err(self.refusal(e));
        }
        Ok(())
    }

    fn refusal(&self, e: AppendError) -> BufferRefusal {
        if let AppendError::Closed = e {
            return BufferRefusal::Closed;
        }
        if let Some(kind) = e.kind() {
            self.metrics.disk_errors.with_label_values(&[kind]).inc();
        }
        // One line per 10 s: a full disk refuses every request.
        if let Some(suppressed) = self.error_log.allow() {
            tracing::error!(error = %e, path = %self.dir.display(), suppressed, "disk buffer: refusing requests with 503 until the disk takes writes again");
        }
        BufferRefusal::Disk(e.to_string())
    }

    /// Frees the oldest segment when only `drop_newest` sinks still need
    /// it: they skip past it (their unread events there are dropped,
    /// counted). `Err(sink)` names a `block` sink that holds it.
    fn make_room(&self) -> Result<(), String> {
        let segs = self.log.segments();
        let (Some(oldest), Some(next)) = (segs.first(), segs.get(1)) else {
            return Err(self
                .sinks
                .first()
                .map(|p| p.name.clone())
                .unwrap_or_default());
        };
        let holders: Vec<&Arc<Progress>> = self
            .sinks
            .iter()
            .filter(|p| p.frontier().seg <= oldest.first)
            .collect();
        if let Some(p) = holders.iter().find(|p| p.when_full == WhenFull::Block) {
            return Err(p.name.clone());
        }
        let to = Pos {
            seg: next.first,
            off: 0,
        };
        for p in holders {
            match p
                .skip(oldest.first, oldest.events, to)
                .map(|unread| unread + p.purge_skipped())
            {
                Ok(dropped) => {
                    if dropped > 0 {
                        tracing::warn!(sink = %p.name, dropped_events = dropped, "disk buffer full: a drop_newest sink that lags skips its oldest segment");
                    }
                    self.sink_dropped(&p.name, dropped);
                }
                Err(e) => {
                    self.metrics
                        .disk_errors
                        .with_label_values(&["checkpoint"])
                        .inc();
                    tracing::error!(sink = %p.name, error = %e, "disk buffer: failed to save a sink's position");
                    return Err(p.name.clone());
                }
            }
        }
        self.log.delete_before(to.seg);
        self.metrics.bytes.set(self.log.total_bytes() as i64);
        Ok(())
    }

    fn sink_dropped(&self, sink: &str, events: u64) {
        self.main_metrics.sink_dropped(sink, "buffer_full", events);
    }

    /// Saves every sink's position, deletes the segments all have passed,
    /// and refreshes the gauges. Runs every `checkpoint_interval_ms`.
    pub fn checkpoint(&self) {
        for p in &self.sinks {
            if let Err(e) = p.checkpoint() {
                self.metrics
                    .disk_errors
                    .with_label_values(&["checkpoint"])
                    .inc();
                tracing::error!(sink = %p.name, error = %e, "disk buffer: failed to save a sink's position");
            }
        }
        let min_saved = self.sinks.iter().map(|p| p.saved().seg).min();
        if let Some(min) = min_saved {
            self.log.delete_before(min);
        }
        self.publish_metrics();
    }

    fn publish_metrics(&self) {
        self.metrics.bytes.set(self.log.total_bytes() as i64);
        if let Ok(st) = rustix::fs::statvfs(&self.dir) {
            self.metrics
                .free_bytes
                .set(st.f_bavail.saturating_mul(st.f_frsize).min(i64::MAX as u64) as i64);
        }
        let now = now_ms();
        for p in &self.sinks {
            let (events, oldest) = p.lag();
            self.metrics
                .events
                .with_label_values(&[&p.name])
                .set(events as i64);
            let age = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0);
            self.metrics
                .oldest_age
                .with_label_values(&[&p.name])
                .set(age);
        }
    }

    /// Saves positions every `checkpoint_interval_ms` until `stop` is
    /// cancelled, then once more.
    pub async fn run_checkpoints(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.checkpoint()).await;
        }
    }

    /// Refuses further appends; the feeders end once they have read the
    /// rest of the log.
    pub fn close(&self) {
        self.log.close();
    }

    /// Stops counting batches let go of as delivered (the sinks are about to
    /// be stopped at the shutdown deadline), then saves every position:
    /// what was not delivered stays in the log for the next start.
    pub fn finish(&self) {
        for p in &self.sinks {
            p.freeze();
            // Batches of a skipped segment still in hand: their records are
            // gone, so they are dropped now.
            self.sink_dropped(&p.name, p.drain_skipped());
        }
        self.checkpoint();
    }

    /// Events not yet delivered, summed over the sinks.
    pub fn undelivered_events(&self) -> u64 {
        self.sinks.iter().map(|p| p.lag().0).sum()
    }

    /// Feeds the queue of sink `index` from the log until the log is closed
    /// and read to its end, or the queue refuses more. `push` waits for room in the queue and
    /// returns `false` when the queue is closed.
    pub(crate) async fn feed<F, Fut>(self: Arc<Self>, index: usize, mut push: F)
    where
        F: FnMut(Arc<Batch>, u64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let p = self.sinks[index].clone();
        let replayed = self.metrics.replayed.with_label_values(&[&p.name]);
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let closed = self.log.is_closed();
            let at = p.read_position();
            // A cached batch is taken only once committed (it is cached
            // just before its commit).
            let committed = self.log.committed().seq;
            let next = match self.cache.get(at.pos).filter(|c| c.seq <= committed) {
                Some(c) => Next::Record {
                    seq: c.seq,
                    next: c.next,
                    events: c.events,
                    time_ms: c.time_ms,
                    batch: c.batch,
                },
                None => {
                    let me = self.clone();
                    tokio::task::spawn_blocking(move || me.read_next(at))
                        .await
                        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                }
            };
            match next {
                Next::Record {
                    seq,
                    next,
                    events,
                    time_ms,
                    batch,
                } => {
                    if !p.mark_read(at, seq, next, events, time_ms) {
                        continue;
                    }
                    if seq <= self.replay_until {
                        replayed.inc_by(u64::from(events));
                    }
                    if !push(batch, seq).await {
                        return;
                    }
                }
                Next::MoveTo(pos) => p.move_to(at, pos),
                // Closed and everything read: the sink drains its queue.
                Next::Wait if closed => return,
                Next::Wait => changed.await,
            }
        }
    }

    /// Reads the record at `at` from its file (a blocking call).
    fn read_next(&self, at: ReadAt) -> Next {
        let pos = at.pos;
        let Some(seg) = self.log.segment(pos.seg) else {
            return self.next_segment(pos.seg);
        };
        if pos.off >= seg.len {
            return match seg.sealed {
                true => self.next_segment(pos.seg),
                false => Next::Wait,
            };
        }
        if self.log.committed().seq <= at.after_seq && !seg.sealed {
            return Next::Wait;
        }
        let path = self.dir.join(segment::file_name(pos.seg));
        let file = match File::open(&path) {
            Ok(f) => f,
            // Deleted meanwhile (skipped past): go on from the next one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.next_segment(pos.seg);
            }
            Err(e) => return self.read_error(&path, e),
        };
        let found = match segment::read_at(&file, pos.off, seg.len, self.max_payload, true) {
            Ok(f) => f,
            Err(e) => return self.read_error(&path, e),
        };
        match found {
            Found::Record {
                header,
                payload,
                next,
            } => match self.batch_of(payload) {
                Some(batch) => Next::Record {
                    seq: header.seq,
                    next,
                    events: header.events,
                    time_ms: header.time_ms,
                    batch: Arc::new(batch),
                },
                None => {
                    self.damaged(&path, pos, "a record that validates does not decode");
                    Next::MoveTo(Pos {
                        seg: pos.seg,
                        off: next,
                    })
                }
            },
            Found::Header { .. } | Found::Damaged => {
                self.damaged(&path, pos, "a damaged record is skipped");
                match segment::resync(&file, pos.off + 8, seg.len, at.after_seq, self.max_payload) {
                    Ok(Some(off)) => Next::MoveTo(Pos { seg: pos.seg, off }),
                    Ok(None) if seg.sealed => self.next_segment(pos.seg),
                    Ok(None) => Next::MoveTo(Pos {
                        seg: pos.seg,
                        off: seg.len,
                    }),
                    Err(e) => self.read_error(&path, e),
                }
            }
            Found::End => Next::Wait,
        }
    }

    fn next_segment(&self, seg: u64) -> Next {
        match self.log.next_segment(seg) {
            Some(next) => Next::MoveTo(Pos { seg: next, off: 0 }),
            None => Next::Wait,
        }
    }

    fn read_error(&self, path: &Path, e: std::io::Error) -> Next {
        self.metrics.disk_errors.with_label_values(&["read"]).inc();
        tracing::error!(file = %path.display(), error = %e, "disk buffer: read failed; trying again in 1 s");
        std::thread::sleep(Duration::from_secs(1));
        Next::Wait
    }

    fn damaged(&self, path: &Path, pos: Pos, what: &str) {
        let first = lock(&self.damage_seen).insert(pos);
        if first {
            self.metrics.corrupt.inc();
            tracing::error!(file = %path.display(), offset = pos.off, "disk buffer: {what}");
        }
    }

    /// Decodes a record's payload as the source decoded the request.
    fn batch_of(&self, payload: bytes::Bytes) -> Option<Batch> {
        let (body, gzip, origin) = record::parse_payload(payload)?;
        let (body, decoded) =
            crate::source::body::unpack(body, gzip, self.max_decoded_bytes, &self.decode).ok()?;
        Some(Batch::with_origin(body, decoded.events, origin))
    }
}

/// What a feeder does next.
enum Next {
    Record {
        seq: u64,
        next: u64,
        events: u32,
        time_ms: u64,
        batch: Arc<Batch>,
    },
    MoveTo(Pos),
    Wait,
}

/// What start-up found in the directory.
struct Recovered {
    segs: Vec<SegMeta>,
    next_seq: u64,
    damaged: u64,
}

/// Reads the directory: every segment's length and events from its record
/// headers, the last one checked record by record with its torn end cut off.
fn recover(dir: &Path, max_payload: u32) -> std::io::Result<Recovered> {
    let names = segment::list(dir)?;
    let mut segs = Vec::with_capacity(names.len());
    let mut next_seq = 1;
    let mut damaged = 0;
    for (i, &first) in names.iter().enumerate() {
        let path = dir.join(segment::file_name(first));
        let last = i + 1 == names.len();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(last)
            .open(&path)?;
        let size = file.metadata()?.len();
        let walk = segment::walk(&file, 0, size, max_payload, last, Some(record::seed(first)))?;
        if walk.damaged > 0 {
            damaged += walk.damaged;
            tracing::error!(
                file = %path.display(),
                offset = walk.first_damage.unwrap_or(0),
                damaged = walk.damaged,
                "disk buffer: damaged records found and skipped (a torn end of the last file is cut off)"
            );
        }
        let mut len = size;
        if last && walk.valid_end < size {
            file.set_len(walk.valid_end)?;
            file.sync_all()?;
            len = walk.valid_end;
        }
        if last && walk.records == 0 {
            drop(file);
            std::fs::remove_file(&path)?;
            File::open(dir)?.sync_all()?;
            next_seq = next_seq.max(first);
            continue;
        }
        next_seq = next_seq.max(walk.last_seq + 1).max(first);
        segs.push(SegMeta {
            first,
            len,
            events: walk.events,
            sealed: true,
        });
    }
    Ok(Recovered {
        segs,
        next_seq,
        damaged,
    })
}

/// A saved position made valid for the segments there are: inside a
/// segment that is gone, the start of the next one; past the end, the end.
fn clamp(pos: Pos, segs: &[SegMeta], end: Pos) -> Pos {
    if segs.iter().any(|s| s.first == pos.seg) || pos >= end {
        return pos.min(end);
    }
    segs.iter()
        .find(|s| s.first > pos.seg)
        .map_or(end, |s| Pos {
            seg: s.first,
            off: 0,
        })
}

/// Events in the records from `pos` on.
fn backlog_from(dir: &Path, segs: &[SegMeta], pos: Pos, max_payload: u32) -> std::io::Result<u64> {
    let mut events: u64 = segs
        .iter()
        .filter(|s| s.first > pos.seg)
        .map(|s| s.events)
        .sum();
    if let Some(seg) = segs.iter().find(|s| s.first == pos.seg) {
        let file = File::open(dir.join(segment::file_name(seg.first)))?;
        events += segment::walk(&file, pos.off, seg.len, max_payload, false, None)?.events;
    }
    Ok(events)
}

/// Removes the saved positions of sinks no longer configured.
fn remove_unknown_positions(dir: &Path, sinks: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sink) = name.to_str().and_then(|n| n.strip_suffix(".pos")) else {
            continue;
        };
        if !sinks.contains(&sink) {
            tracing::info!(
                sink,
                "disk buffer: forgetting the position of a sink no longer configured"
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
