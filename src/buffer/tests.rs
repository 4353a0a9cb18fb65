//! The disk buffer against damage, injected disk errors and a crash model.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::storage::{Dir, LogFile, Storage};
use super::*;
use crate::config::{BufferConfig, BufferKind};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, QueueSpec, Refusal};

fn cfg(path: &Path, segment_bytes: u64) -> BufferConfig {
    BufferConfig {
        kind: BufferKind::Disk,
        path: path.to_owned(),
        max_bytes: 1 << 30,
        segment_bytes,
        checkpoint_interval_ms: 20,
    }
}

fn decode_opts() -> DecodeOptions {
    DecodeOptions {
        max_events: usize::MAX,
        max_event_bytes: 0,
    }
}

/// A batch of one event whose auditID is `id-<n>`, padded to vary sizes.
fn batch(n: u64) -> Batch {
    let pad = "x".repeat((n as usize * 37) % 300);
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{{"level":"Metadata","auditID":"id-{n}","stage":"ResponseComplete","verb":"get","pad":"{pad}"}}]}}"#
    );
    let (body, decoded) =
        crate::source::body::unpack(Bytes::from(body), false, 1 << 20, &decode_opts()).unwrap();
    Batch::new(body, decoded.events)
}

fn id_of(batch: &Batch) -> u64 {
    let raw = std::str::from_utf8(&batch.events[0].raw).unwrap();
    let at = raw.find("\"id-").unwrap() + 4;
    raw[at..].split('"').next().unwrap().parse().unwrap()
}

fn sinks() -> Vec<(String, WhenFull)> {
    vec![("a".to_owned(), WhenFull::Block)]
}

fn open(path: &Path, segment_bytes: u64, metrics: &Metrics) -> Arc<DiskBuffer> {
    DiskBuffer::open(
        &cfg(path, segment_bytes),
        &sinks(),
        decode_opts(),
        1 << 20,
        metrics,
    )
    .unwrap()
}

fn open_on(storage: Arc<dyn Storage>, path: &Path, segment_bytes: u64) -> Arc<DiskBuffer> {
    DiskBuffer::open_with(
        storage,
        &cfg(path, segment_bytes),
        &sinks(),
        decode_opts(),
        1 << 20,
        &Metrics::new(),
    )
    .unwrap()
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    let text = String::from_utf8(metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Opens the buffer in `path` in a pipeline and returns the auditIDs the sink
/// gets, in order, marking each delivered: until it has every one up to
/// `last` (then a further 100 ms, for anything given twice), or for `wait`
/// when `last` is `None` (or when they do not all come within 20 s).
async fn drain_to(
    path: &Path,
    segment_bytes: u64,
    last: Option<u64>,
    wait: Duration,
) -> (Vec<u64>, Metrics) {
    let metrics = Metrics::new();
    let buffer = open(path, segment_bytes, &metrics);
    let spec = QueueSpec {
        name: "a".into(),
        capacity_events: 1000,
        capacity_bytes: 1 << 20,
        when_full: WhenFull::Block,
    };
    let (pipeline, mut readers) =
        Pipeline::with_disk(&[spec], Duration::from_millis(10), &metrics, buffer.clone());
    let mut got = Vec::new();
    let start = tokio::time::Instant::now();
    let mut deadline = start + last.map_or(wait, |_| Duration::from_secs(20));
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, readers[0].recv()).await {
        got.push(id_of(&d.batch));
        if last.is_some_and(|l| got.last() == Some(&l)) {
            deadline = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
        }
    }
    pipeline.close();
    pipeline.count_undelivered("shutdown");
    drop(readers);
    drop(pipeline);
    // Let the feeder and checkpoint tasks let go of the buffer and its lock.
    for _ in 0..100 {
        if Arc::strong_count(&buffer) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (got, metrics)
}

/// [`drain_to`] for a fixed time.
async fn drain(path: &Path, segment_bytes: u64, wait: Duration) -> (Vec<u64>, Metrics) {
    drain_to(path, segment_bytes, None, wait).await
}

fn write_log(path: &Path, segment_bytes: u64, ids: std::ops::Range<u64>) {
    let buffer = open(path, segment_bytes, &Metrics::new());
    for n in ids {
        buffer.append_blocking(Arc::new(batch(n))).unwrap();
    }
}

fn wal_files(path: &Path) -> Vec<PathBuf> {
    segment::list(path)
        .unwrap()
        .into_iter()
        .map(|s| path.join(segment::file_name(s)))
        .collect()
}

#[tokio::test]
async fn batches_survive_a_restart_and_are_not_given_twice_once_saved() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 4096, 0..40);
    assert!(wal_files(dir.path()).len() > 2, "several segments");
    let (got, m) = drain_to(dir.path(), 4096, Some(39), Duration::ZERO).await;
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    assert_eq!(
        counter(&m, "audit_forwarder_buffer_replayed_events_total"),
        40.0
    );
    // Positions were saved: nothing again, and delivered segments are gone.
    let (again, _) = drain(dir.path(), 4096, Duration::from_millis(200)).await;
    assert!(again.is_empty(), "{again:?}");
    assert!(wal_files(dir.path()).len() <= 1);
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_every_byte_and_the_rest_delivered() {
    let src = tempfile::tempdir().unwrap();
    write_log(src.path(), 1 << 20, 0..5);
    let wal = wal_files(src.path()).pop().unwrap();
    let whole = std::fs::read(&wal).unwrap();
    let last_start = {
        let f = File::open(&wal).unwrap();
        let w = segment::walk(&f, 0, whole.len() as u64, 1 << 20, true, None).unwrap();
        assert_eq!(w.records, 5);
        let mut off = 0;
        for _ in 0..4 {
            let raw: [u8; record::HEADER] = whole[off..off + record::HEADER].try_into().unwrap();
            off += record::Header::parse(&raw).unwrap().size() as usize;
        }
        off
    };
    for cut in last_start..whole.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.path().join("a.pos"), dir.path().join("a.pos")).unwrap();
        std::fs::write(dir.path().join(wal.file_name().unwrap()), &whole[..cut]).unwrap();
        let m = Metrics::new();
        let buffer = open(dir.path(), 1 << 20, &m);
        let expect_damage = if cut > last_start { 1.0 } else { 0.0 };
        assert_eq!(
            counter(&m, "audit_forwarder_buffer_corrupt_records_total"),
            expect_damage,
            "cut at {cut}"
        );
        assert_eq!(buffer.undelivered_events(), 4, "cut at {cut}");
        drop(buffer);
        assert_eq!(
            std::fs::metadata(dir.path().join(wal.file_name().unwrap()))
                .unwrap()
                .len(),
            last_start as u64,
            "the torn end is cut off"
        );
    }
    // One full read-back for the last cut.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.path().join("a.pos"), dir.path().join("a.pos")).unwrap();
    std::fs::write(
        dir.path().join(wal.file_name().unwrap()),
        &whole[..whole.len() - 1],
    )
    .unwrap();
    let (got, _) = drain_to(dir.path(), 1 << 20, Some(3), Duration::ZERO).await;
    assert_eq!(got, vec![0, 1, 2, 3]);
}

/// Damages the log written for ids 0..60 with `harm` and checks that every
/// record the harm did not touch is delivered, and the damage counted.
async fn survives(harm: impl Fn(&[PathBuf]), lost_at_most: usize) {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 4096, 0..60);
    let files = wal_files(dir.path());
    assert!(files.len() >= 4);
    harm(&files);
    let (got, m) = drain_to(dir.path(), 4096, Some(59), Duration::ZERO).await;
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(
        got.len() >= 60 - lost_at_most && got.len() < 60,
        "{} of 60 delivered: {got:?}",
        got.len()
    );
    assert!(
        got.contains(&59) && got.contains(&0),
        "records after the damage are kept"
    );
    assert!(counter(&m, "audit_forwarder_buffer_corrupt_records_total") >= 1.0);
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_costs_one_record() {
    survives(
        |files| {
            let f = &files[1];
            let mut b = std::fs::read(f).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x20;
            std::fs::write(f, b).unwrap();
        },
        1,
    )
    .await;
}

#[tokio::test]
async fn a_zeroed_block_in_the_middle_costs_only_the_records_in_it() {
    survives(
        |files| {
            let f = &files[1];
            let mut b = std::fs::read(f).unwrap();
            let start = 512.min(b.len() / 4);
            let end = (start + 1024).min(b.len());
            b[start..end].fill(0);
            std::fs::write(f, b).unwrap();
        },
        6,
    )
    .await;
}

#[tokio::test]
async fn a_segment_truncated_in_the_middle_costs_only_its_tail() {
    survives(
        |files| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&files[1])
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2 + 3).unwrap();
        },
        12,
    )
    .await;
}

/// A directory whose writes and syncs fail on demand.
struct Faulty {
    dir: Dir,
    fail_write: Arc<Mutex<Option<io::ErrorKind>>>,
    fail_sync: Arc<AtomicBool>,
}

struct FaultyFile {
    inner: Arc<dyn LogFile>,
    fail_write: Arc<Mutex<Option<io::ErrorKind>>>,
    fail_sync: Arc<AtomicBool>,
}

impl Storage for Faulty {
    fn create(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(FaultyFile {
            inner: self.dir.create(name)?,
            fail_write: self.fail_write.clone(),
            fail_sync: self.fail_sync.clone(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        self.dir.open(name)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.dir.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.dir.sync_dir()
    }
}

impl LogFile for FaultyFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(kind) = *self.fail_write.lock().unwrap() {
            // Half the record reaches the file before the error.
            self.inner.write_at(&buf[..buf.len() / 2], offset)?;
            return Err(match kind {
                io::ErrorKind::StorageFull => io::Error::from_raw_os_error(28),
                k => io::Error::from(k),
            });
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

#[tokio::test]
async fn disk_full_and_a_failed_fsync_refuse_without_losing_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fail_write = Arc::new(Mutex::new(None));
    let fail_sync = Arc::new(AtomicBool::new(false));
    let storage = Arc::new(Faulty {
        dir: Dir::new(dir.path()),
        fail_write: fail_write.clone(),
        fail_sync: fail_sync.clone(),
    });
    let buffer = open_on(storage, dir.path(), 1 << 20);
    let mut acked = Vec::new();
    for n in 0..5 {
        buffer.append_blocking(Arc::new(batch(n))).unwrap();
        acked.push(n);
    }
    *fail_write.lock().unwrap() = Some(io::ErrorKind::StorageFull);
    let refused = buffer.append_blocking(Arc::new(batch(100))).unwrap_err();
    assert!(
        matches!(refused, BufferRefusal::Disk(ref m) if m.contains("no space")),
        "{refused:?}"
    );
    assert_eq!(Refusal::from(refused).reason(), "disk_error");
    // Space comes back: admission resumes in the same file.
    *fail_write.lock().unwrap() = None;
    for n in 5..8 {
        buffer.append_blocking(Arc::new(batch(n))).unwrap();
        acked.push(n);
    }
    // A failed fsync: refused, and the log is re-checked before the next append.
    fail_sync.store(true, Ordering::SeqCst);
    assert!(buffer.append_blocking(Arc::new(batch(200))).is_err());
    fail_sync.store(false, Ordering::SeqCst);
    for n in 8..10 {
        buffer.append_blocking(Arc::new(batch(n))).unwrap();
        acked.push(n);
    }
    let errors: Vec<_> = ["full", "sync"]
        .iter()
        .map(|k| buffer.metrics.disk_errors.with_label_values(&[k]).get())
        .collect();
    assert_eq!(errors, vec![1, 1]);
    drop(buffer);
    let (got, m) = drain_to(dir.path(), 1 << 20, acked.last().copied(), Duration::ZERO).await;
    assert_eq!(
        got, acked,
        "the refused batches 100 and 200 are not delivered"
    );
    assert_eq!(
        counter(&m, "audit_forwarder_buffer_corrupt_records_total"),
        0.0
    );
}

#[tokio::test]
async fn a_lagging_drop_newest_sink_skips_ahead_and_the_disk_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut c = cfg(dir.path(), 4096);
    c.max_bytes = 16 << 10;
    let sinks = vec![
        ("live".to_owned(), WhenFull::Block),
        ("dead".to_owned(), WhenFull::DropNewest),
    ];
    let buffer = DiskBuffer::open(&c, &sinks, decode_opts(), 1 << 20, &metrics).unwrap();
    let specs: Vec<QueueSpec> = sinks
        .iter()
        .map(|(name, when_full)| QueueSpec {
            name: name.clone(),
            capacity_events: 2,
            capacity_bytes: 1 << 20,
            when_full: *when_full,
        })
        .collect();
    let (pipeline, mut readers) =
        Pipeline::with_disk(&specs, Duration::from_millis(10), &metrics, buffer.clone());
    let _dead = readers.pop().unwrap(); // never read
    let mut live = readers.pop().unwrap();
    let mut got = Vec::new();
    for n in 0..300 {
        pipeline.admit(batch(n)).await.unwrap();
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(50), live.recv()).await {
            got.push(id_of(&d.batch));
            if got.len() as u64 == n + 1 {
                break;
            }
        }
        let on_disk: u64 = wal_files(dir.path())
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum();
        assert!(on_disk <= c.max_bytes, "{on_disk} bytes on disk");
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    let dropped = counter(
        &metrics,
        "audit_forwarder_events_dropped_total{reason=\"buffer_full\",sink=\"dead\"}",
    );
    assert!(dropped > 200.0, "{dropped}");
}

/// A file system in memory that remembers what was synced, for the crash
/// model: at a crash each write since the file's last sync is lost, kept, or
/// kept in part, and each directory change since the last directory sync is
/// kept or lost.
#[derive(Default)]
struct Sim {
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    files: HashMap<String, SimFile>,
    entries: HashSet<String>,
    durable_entries: HashSet<String>,
}

#[derive(Default, Clone)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
}

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

struct SimHandle {
    sim: Arc<Sim>,
    name: String,
}

impl Storage for Arc<Sim> {
    fn create(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        let mut s = self.state.lock().unwrap();
        let f = s.files.entry(name.to_owned()).or_default();
        f.current.clear();
        f.pending.push(Op::SetLen(0));
        s.entries.insert(name.to_owned());
        Ok(Arc::new(SimHandle {
            sim: self.clone(),
            name: name.to_owned(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(SimHandle {
            sim: self.clone(),
            name: name.to_owned(),
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.state.lock().unwrap().entries.remove(name);
        Ok(())
    }
    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.durable_entries = s.entries.clone();
        Ok(())
    }
}

fn apply(buf: &mut Vec<u8>, op: &Op, keep: usize) {
    match op {
        Op::Write(off, data) => {
            let off = *off as usize;
            let data = &data[..keep.min(data.len())];
            if buf.len() < off + data.len() {
                buf.resize(off + data.len(), 0);
            }
            buf[off..off + data.len()].copy_from_slice(data);
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

impl LogFile for SimHandle {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.sim.state.lock().unwrap();
        let f = s.files.get_mut(&self.name).unwrap();
        let op = Op::Write(offset, buf.to_vec());
        apply(&mut f.current, &op, usize::MAX);
        f.pending.push(op);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.sim.state.lock().unwrap();
        let f = s.files.get_mut(&self.name).unwrap();
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.sim.state.lock().unwrap();
        let f = s.files.get_mut(&self.name).unwrap();
        let op = Op::SetLen(len);
        apply(&mut f.current, &op, usize::MAX);
        f.pending.push(op);
        Ok(())
    }
}

impl Sim {
    /// Writes what a power cut at this moment could leave into `dir`; `rng`
    /// picks among the outcomes.
    fn crash_into(&self, dir: &Path, rng: &mut impl FnMut(usize) -> usize) {
        let s = self.state.lock().unwrap();
        let mut names: Vec<&String> = s.entries.union(&s.durable_entries).collect();
        names.sort();
        for name in names {
            let synced = s.entries.contains(name) == s.durable_entries.contains(name);
            let exists = if synced {
                s.entries.contains(name)
            } else {
                rng(2) == 0
            };
            if !exists {
                continue;
            }
            let f = &s.files[name];
            let mut content = f.durable.clone();
            for op in &f.pending {
                match rng(3) {
                    0 => {}
                    1 => apply(&mut content, op, usize::MAX),
                    _ => apply(&mut content, op, rng(4096)),
                }
            }
            std::fs::write(dir.join(name), content).unwrap();
        }
    }
}

/// One step of the model's workload.
#[derive(Debug, Clone)]
enum Step {
    /// Append and acknowledge a batch.
    Append,
    /// Write a record whose sync never returns (the crash comes first).
    WriteOnly,
    /// The sink takes the next batch.
    Read,
    /// The sink finishes the oldest batch it holds.
    Done,
    /// Save positions and delete delivered segments.
    Checkpoint,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Append),
        4 => Just(Step::Read),
        3 => Just(Step::Done),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::WriteOnly),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Simulated power loss at many points: start-up always succeeds, and
    /// every batch acknowledged and not yet finished by the sink is given
    /// to it after the restart.
    #[test]
    fn power_loss_keeps_every_acknowledged_batch(
        steps in proptest::collection::vec(step(), 1..80),
        seed in any::<u64>(),
    ) {
        let live = tempfile::tempdir().unwrap();
        let sim = Arc::new(Sim::default());
        let buffer = open_on(Arc::new(sim.clone()), live.path(), 2048);
        let p = buffer.progress(0);
        let mut next_id = 0u64;
        let mut acked = BTreeSet::new();
        let mut held: Vec<(u64, u64)> = Vec::new(); // (seq, id) read, not done
        let mut done = BTreeSet::new();
        let mut last_was_write_only = false;
        for s in &steps {
            if last_was_write_only {
                break; // the write's sync never came back: crash here
            }
            match s {
                Step::Append => {
                    buffer.append_blocking(Arc::new(batch(next_id))).unwrap();
                    acked.insert(next_id);
                    next_id += 1;
                }
                Step::WriteOnly => {
                    let b = batch(next_id);
                    next_id += 1;
                    let [prefix, body] = record::payload(&b);
                    let _ = buffer.log.write(&[&prefix, &body], 1, 0);
                    last_was_write_only = true;
                }
                Step::Read => {
                    for _ in 0..4 {
                        let at = p.read_position();
                        if let Some(c) = buffer.cache.get(at.pos) {
                            prop_assert!(p.mark_read(at, c.seq, c.next, c.events, c.time_ms));
                            held.push((c.seq, id_of(&c.batch)));
                            break;
                        }
                        match buffer.log.segment(at.pos.seg) {
                            Some(seg) if at.pos.off < seg.len || !seg.sealed => break,
                            _ => match buffer.log.next_segment(at.pos.seg) {
                                Some(next) => p.move_to(at, Pos { seg: next, off: 0 }),
                                None => break,
                            },
                        }
                    }
                }
                Step::Done => {
                    if !held.is_empty() {
                        let (seq, id) = held.remove(0);
                        p.done(seq);
                        done.insert(id);
                    }
                }
                Step::Checkpoint => buffer.checkpoint(),
            }
        }
        let mut state = seed;
        let mut rng = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n.max(1)
        };
        let after = tempfile::tempdir().unwrap();
        sim.crash_into(after.path(), &mut rng);
        drop(buffer);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Every batch owed comes before the last of them, in log order.
        let last_owed = acked.difference(&done).last().copied();
        let (got, _) = rt.block_on(drain_to(
            after.path(),
            2048,
            last_owed,
            Duration::from_millis(100),
        ));
        let got: BTreeSet<u64> = got.into_iter().collect();
        let owed: BTreeSet<u64> = acked.difference(&done).copied().collect();
        let missing: Vec<u64> = owed.difference(&got).copied().collect();
        prop_assert!(missing.is_empty(), "acknowledged batches lost: {:?}", missing);
        prop_assert!(got.iter().all(|id| *id < next_id));
    }
}

#[tokio::test]
async fn a_stale_record_that_validates_on_its_own_breaks_the_chain_and_is_cut() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_log(a.path(), 1 << 20, 0..3);
    write_log(b.path(), 1 << 20, 100..104);
    let (wal_a, wal_b) = (
        wal_files(a.path()).pop().unwrap(),
        wal_files(b.path()).pop().unwrap(),
    );
    let a_bytes = std::fs::read(&wal_a).unwrap();
    let b_bytes = std::fs::read(&wal_b).unwrap();
    // Record 4 of the other log (its sequence number 4 follows ours, 3).
    let f = File::open(&wal_b).unwrap();
    let three = segment::walk(&f, 0, b_bytes.len() as u64, 1 << 20, true, None).unwrap();
    let f = File::open(&wal_b).unwrap();
    let first_three = {
        let mut off = 0u64;
        for _ in 0..3 {
            let Found::Record { next, .. } =
                segment::read_at(&f, off, b_bytes.len() as u64, 1 << 20, true).unwrap()
            else {
                panic!()
            };
            off = next;
        }
        off as usize
    };
    assert_eq!(three.records, 4);
    let mut spliced = a_bytes.clone();
    spliced.extend_from_slice(&b_bytes[first_three..]);
    std::fs::write(&wal_a, &spliced).unwrap();
    let (got, m) = drain_to(a.path(), 1 << 20, Some(2), Duration::ZERO).await;
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(
        counter(&m, "audit_forwarder_buffer_corrupt_records_total"),
        1.0
    );
    assert_eq!(
        std::fs::metadata(&wal_a).unwrap().len(),
        a_bytes.len() as u64,
        "the stale record is cut off"
    );
}

/// A batch of one event padded to about `bytes`.
fn big_batch(n: u64, bytes: usize) -> Batch {
    let pad = "y".repeat(bytes);
    let body = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{{"level":"Metadata","auditID":"id-{n}","stage":"ResponseComplete","pad":"{pad}"}}]}}"#
    );
    let (body, decoded) =
        crate::source::body::unpack(Bytes::from(body), false, 1 << 20, &decode_opts()).unwrap();
    Batch::new(body, decoded.events)
}

#[tokio::test]
async fn large_records_written_in_parts_read_back_and_a_torn_one_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let buffer = open(dir.path(), 1 << 20, &Metrics::new());
        for n in 0..3 {
            buffer
                .append_blocking(Arc::new(big_batch(n, 200_000 + n as usize)))
                .unwrap();
        }
    }
    let wal = wal_files(dir.path()).pop().unwrap();
    let whole = std::fs::read(&wal).unwrap();
    // Tear the last record in its body, as a crash during its write would.
    std::fs::write(&wal, &whole[..whole.len() - 100_000]).unwrap();
    let (got, m) = drain_to(dir.path(), 1 << 20, Some(1), Duration::ZERO).await;
    assert_eq!(got, vec![0, 1]);
    assert_eq!(
        counter(&m, "audit_forwarder_buffer_corrupt_records_total"),
        1.0
    );
}
