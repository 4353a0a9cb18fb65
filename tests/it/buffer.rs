//! The disk buffer with the real binary, real files and a real TCP receiver:
//! `kill -9` under load, a long sink outage, fan-out with a dead
//! `drop_newest` sink, a full file system, and SIGTERM with a stalled sink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_audit_forwarder::synth::{Rng, SynthLevel, Template, sequence_of};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::binary::{Process, metrics_of};
use crate::harness::{Metrics, PATIENCE};

const MIB: u64 = 1 << 20;

// --- a line receiver that can stall, go down and come back ---------------

/// One JSON line a [`LineSink`] read.
#[derive(Debug, Clone, Copy)]
struct Line {
    /// When the test read it (the peer's kernel had it at that time or earlier).
    at: Instant,
    /// The connection it came on, numbered from 0 in accept order.
    conn: usize,
    /// The event's number: the first eight hex digits of its auditID.
    seq: u64,
}

#[derive(Default)]
struct Seen {
    lines: Vec<Line>,
    /// When each connection was accepted.
    accepted: Vec<Instant>,
}

type Readers = Arc<Mutex<JoinSet<()>>>;

/// A TCP line reader like a Logstash `json_lines` input, with a small receive
/// buffer so that a stalled receiver pushes back after a few KiB.
struct LineSink {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stalled: Arc<AtomicBool>,
    /// Slow reading: about 10,000 lines a second.
    slow: Arc<AtomicBool>,
    serving: Option<(JoinHandle<()>, Readers)>,
}

impl LineSink {
    async fn start() -> Self {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut sink = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            stalled: Arc::default(),
            slow: Arc::default(),
            serving: None,
        };
        sink.serve(listener);
        sink
    }

    /// A receiver whose port is closed until [`LineSink::restart`].
    async fn start_down() -> Self {
        let mut sink = Self::start().await;
        sink.stop();
        sink
    }

    fn serve(&mut self, listener: TcpListener) {
        let readers: Readers = Arc::default();
        let (seen, rs) = (self.seen.clone(), readers.clone());
        let (stalled, slow) = (self.stalled.clone(), self.slow.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = {
                    let mut s = seen.lock().unwrap();
                    s.accepted.push(Instant::now());
                    s.accepted.len() - 1
                };
                let (seen, stalled, slow) = (seen.clone(), stalled.clone(), slow.clone());
                rs.lock()
                    .unwrap()
                    .spawn(read_lines(stream, conn, seen, stalled, slow));
            }
        });
        self.serving = Some((accept, readers));
    }

    /// Stops reading (what is in the kernel's buffers stays there).
    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Closes the port and every connection.
    fn stop(&mut self) {
        if let Some((accept, readers)) = self.serving.take() {
            accept.abort();
            readers.lock().unwrap().abort_all();
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match listen(self.addr) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("could not listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn lines(&self) -> Vec<Line> {
        self.seen.lock().unwrap().lines.clone()
    }

    fn seqs(&self) -> Vec<u64> {
        self.lines().iter().map(|l| l.seq).collect()
    }

    fn accept_times(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().accepted.clone()
    }

    /// Waits until every number in `want` has been read at least once.
    async fn wait_for(&self, want: &[u64]) {
        let deadline = Instant::now() + 4 * PATIENCE;
        loop {
            let have: HashSet<u64> = self.seqs().into_iter().collect();
            let missing = want.iter().filter(|s| !have.contains(s)).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} accepted events never reached the sink",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_recv_buffer_size(4096)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

async fn read_lines(
    stream: TcpStream,
    conn: usize,
    seen: Arc<Mutex<Seen>>,
    stalled: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    for n in 0u64.. {
        if n % 10 == 0 && slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            // A line cut by the sender's death.
            Ok(_) if !line.ends_with(b"\n") => return,
            Ok(_) => {
                let key = b"\"auditID\":\"";
                let at = line
                    .windows(key.len())
                    .position(|w| w == key)
                    .expect("every line is an event with an auditID");
                let seq = sequence_of(&line[at + key.len()..]).expect("a numbered auditID");
                seen.lock().unwrap().lines.push(Line {
                    at: Instant::now(),
                    conn,
                    seq,
                });
            }
        }
    }
}

// --- the forwarder as a process ------------------------------------------

/// The parts of a disk-buffer config these tests change.
struct Setup {
    buffer: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    checkpoint_interval_ms: u64,
    /// `source.http.max_body_bytes` and `max_decoded_bytes`.
    body_bytes: u64,
    deadline_secs: u64,
    sinks: Vec<Sink>,
}

/// A TCP sink of the config.
struct Sink {
    name: &'static str,
    addr: SocketAddr,
    when_full: &'static str,
    /// `queue.capacity_events`; the default when `None`.
    capacity_events: Option<usize>,
}

fn tcp_sink(name: &'static str, addr: SocketAddr, when_full: &'static str) -> Sink {
    Sink {
        name,
        addr,
        when_full,
        capacity_events: None,
    }
}

impl Setup {
    fn new(dir: &Path, sinks: Vec<Sink>) -> Self {
        Self {
            buffer: dir.join("buffer"),
            max_bytes: 256 * MIB,
            segment_bytes: 4 * MIB,
            checkpoint_interval_ms: 500,
            body_bytes: 4 * MIB,
            deadline_secs: 2,
            sinks,
        }
    }

    /// Writes the YAML file next to the buffer directory.
    fn write(&self) -> PathBuf {
        let mut yaml = format!(
            "source:\n  http:\n    max_body_bytes: {b}\n    max_decoded_bytes: {b}\n\
             buffer:\n  type: disk\n  path: {path}\n  max_bytes: {max}\n  segment_bytes: {seg}\n  checkpoint_interval_ms: {ckpt}\n\
             shutdown:\n  deadline_secs: {deadline}\n\
             sinks:\n",
            b = self.body_bytes,
            path = self.buffer.display(),
            max = self.max_bytes,
            seg = self.segment_bytes,
            ckpt = self.checkpoint_interval_ms,
            deadline = self.deadline_secs,
        );
        for s in &self.sinks {
            yaml.push_str(&format!(
                "  - type: tcp\n    name: {}\n    endpoint: \"{}\"\n    retry:\n      initial_backoff_ms: 20\n      max_backoff_secs: 1\n    queue:\n      when_full: {}\n",
                s.name, s.addr, s.when_full
            ));
            if let Some(n) = s.capacity_events {
                yaml.push_str(&format!("      capacity_events: {n}\n"));
            }
        }
        let file = self.buffer.with_file_name("forwarder.yaml");
        std::fs::write(&file, yaml).unwrap();
        file
    }
}

/// The binary, killed with SIGKILL if a test ends without stopping it.
struct Forwarder(Option<Process>);

impl Forwarder {
    async fn start(config: &Path) -> Self {
        let config = config.to_owned();
        let p = tokio::task::spawn_blocking(move || {
            Process::start_with(&["--config", config.to_str().unwrap()], &[], Stdio::null())
        })
        .await
        .unwrap();
        Self(Some(p))
    }

    fn process(&self) -> &Process {
        self.0.as_ref().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.process().addr
    }

    async fn metrics(&self) -> Metrics {
        metrics_of(self.process()).await
    }

    /// `kill -9`, and waits for the process to be gone.
    async fn kill(mut self) {
        let mut p = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || {
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        })
        .await
        .unwrap();
    }

    /// SIGTERM; waits (at most [`PATIENCE`]) for the exit and returns its
    /// code, the time it took and the log lines.
    async fn terminate(mut self) -> (Option<i32>, Duration, Vec<String>) {
        let mut p = self.0.take().unwrap();
        let start = Instant::now();
        p.signal("TERM");
        tokio::task::spawn_blocking(move || {
            while p.child.try_wait().unwrap().is_none() {
                if start.elapsed() > PATIENCE {
                    p.child.kill().unwrap();
                    panic!("no exit {PATIENCE:?} after SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let took = start.elapsed();
            let (code, _, logs) = p.finish();
            (code, took, logs)
        })
        .await
        .unwrap()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(p) = &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

// --- webhook requests ----------------------------------------------------

/// What the forwarder answered.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn reason(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// POSTs a batch; `None` when no whole answer came (refused connection, or a
/// process killed mid-request).
async fn try_post(addr: SocketAddr, body: &[u8]) -> Option<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "POST /post HTTP/1.1\r\nHost: forwarder.test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        stream.write_all(body).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let retry_after = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .map(|(_, v)| v.trim().to_owned());
        let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
        Some(Answer {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .ok()
        .flatten()
}

/// Batches of `size` Metadata events numbered 1, 2, …, each event's auditID
/// unique.
struct Batches {
    template: Template,
    size: u64,
}

impl Batches {
    fn new(size: usize) -> Self {
        Self {
            template: Template::new(&mut Rng::new(1), size, &[SynthLevel::Metadata]),
            size: size as u64,
        }
    }

    /// The body of batch `i` (from 0) and its event numbers.
    fn get(&self, i: u64) -> (Vec<u8>, std::ops::Range<u64>) {
        let first = 1 + i * self.size;
        (self.template.stamp(first), first..first + self.size)
    }

    /// The batch (from 0) an event number belongs to.
    fn of(&self, seq: u64) -> u64 {
        (seq - 1) / self.size
    }
}

/// Open-loop load: a batch every `every` to whatever address is current,
/// whether or not earlier requests were answered; the numbers of the events
/// answered 200 are kept.
struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<u64>, BTreeMap<String, usize>)>,
}

impl Load {
    fn start(
        batches: Arc<Batches>,
        every: Duration,
        addr: watch::Receiver<Option<SocketAddr>>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut inflight = JoinSet::new();
            let mut i = 0;
            // Bounded: the test stops it within a minute.
            while !halt.load(Ordering::SeqCst) && i < 100_000 {
                tick.tick().await;
                let to = *addr.borrow();
                let (body, ids) = batches.get(i);
                i += 1;
                inflight.spawn(async move {
                    let answer = match to {
                        Some(a) => try_post(a, &body).await,
                        None => None,
                    };
                    (answer.map(|a| a.status), ids)
                });
            }
            let mut accepted = Vec::new();
            let mut answers = BTreeMap::new();
            while let Some(done) = inflight.join_next().await {
                let (status, ids) = done.unwrap();
                let key = status.map_or("no answer".to_owned(), |s| s.to_string());
                *answers.entry(key).or_insert(0) += 1;
                if status == Some(200) {
                    accepted.extend(ids);
                }
            }
            accepted.sort_unstable();
            (accepted, answers)
        });
        Self { stop, task }
    }

    /// Stops sending, waits for the answers, and returns the numbers of the
    /// events answered 200 and the count of each answer.
    async fn finish(self) -> (Vec<u64>, BTreeMap<String, usize>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

// --- the tests -------------------------------------------------------------

const KILLS: usize = 20;
const KILL_CHECKPOINT_MS: u64 = 200;
/// Beyond `checkpoint_interval_ms`: a checkpoint's own fsyncs, the TCP sink's
/// 20 ms poll of the peer's acknowledgements, a busy machine.
const KILL_SLACK_MS: u64 = 1_000;

/// What a sink was given more than once across crashes.
struct Replays {
    duplicates: usize,
    /// Given twice by the same run (not caused by a crash).
    within_a_run: usize,
    /// Given again after a crash though the sink had finished its batch
    /// more than the limit before that crash: (event, run, how long before).
    too_old: Vec<(u64, usize, Duration)>,
}

/// Checks the replay bound batch by batch. A run is the life of one process
/// (run `r` ends with `kills[r]`); a connection belongs to the run during
/// which it was accepted. A copy of an event given in run `r2` after a copy
/// in run `r1 < r2` is a replay of the crash that ended `r1`: it is within
/// the bound when its batch had not wholly reached the sink in run `r1` (in
/// flight), or did so no more than `limit` before `kills[r1]`. A line's
/// time is when the test read it, no earlier than the peer's kernel had it,
/// so the check errs on the lenient side.
fn replays(sink: &LineSink, kills: &[Instant], batches: &Batches, limit: Duration) -> Replays {
    let run_of: Vec<usize> = sink
        .accept_times()
        .iter()
        .map(|t| kills.iter().filter(|k| *k < t).count())
        .collect();
    let lines = sink.lines();
    // How many of each batch's events each run gave, and when the last came.
    let mut arrived: HashMap<(u64, usize), (u64, Instant)> = HashMap::new();
    let mut by_seq: HashMap<u64, Vec<usize>> = HashMap::new();
    for l in &lines {
        let run = run_of[l.conn];
        let e = arrived.entry((batches.of(l.seq), run)).or_insert((0, l.at));
        e.0 += 1;
        e.1 = e.1.max(l.at);
        by_seq.entry(l.seq).or_default().push(run);
    }
    let mut r = Replays {
        duplicates: 0,
        within_a_run: 0,
        too_old: Vec::new(),
    };
    for (&seq, runs) in &mut by_seq {
        // A stalled connection's lines are read late: order copies by run.
        runs.sort_unstable();
        for pair in runs.windows(2) {
            let (r1, r2) = (pair[0], pair[1]);
            r.duplicates += 1;
            if r1 == r2 {
                r.within_a_run += 1;
                continue;
            }
            if let Some(&(n, done)) = arrived.get(&(batches.of(seq), r1))
                && n >= batches.size
                && done + limit < kills[r1]
            {
                r.too_old.push((seq, r1, kills[r1] - done));
            }
        }
    }
    r.too_old.sort();
    r
}

/// 20 `kill -9` at random moments under open-loop load, half of them while
/// the receiver has stopped reading. Every event answered 200 reaches the
/// receiver; an event is given again after a crash only if its batch was
/// still in flight at the crash or was finished by the sink within
/// `checkpoint_interval_ms` (plus slack) before it: the module's documented
/// bound, checked batch by batch.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_nothing_acknowledged_and_replays_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LineSink::start().await;
    let mut setup = Setup::new(dir.path(), vec![tcp_sink("tcp", sink.addr, "block")]);
    setup.segment_bytes = MIB;
    setup.checkpoint_interval_ms = KILL_CHECKPOINT_MS;
    let config = setup.write();
    let seed = seed();
    println!("kill -9 loop: seed {seed}");
    let mut rng = Rng::new(seed);
    let batches = Arc::new(Batches::new(20));
    let (addr_tx, addr_rx) = watch::channel(None);
    let load = Load::start(batches.clone(), Duration::from_millis(40), addr_rx);

    let mut kills = Vec::new();
    let mut replayed = 0.0;
    let replayed_series = r#"audit_forwarder_buffer_replayed_events_total{sink="tcp"}"#;
    for k in 0..KILLS {
        let fwd = Forwarder::start(&config).await;
        addr_tx.send_replace(Some(fwd.addr()));
        if sink.stalled.load(Ordering::SeqCst) {
            sleep_ms(rng.below(500)).await;
            sink.resume();
        }
        sleep_ms(300 + rng.below(1_200)).await;
        if k % 2 == 1 {
            sink.stall();
            sleep_ms(200 + rng.below(800)).await;
        }
        replayed += fwd.metrics().await.get(replayed_series);
        kills.push(Instant::now());
        fwd.kill().await;
        addr_tx.send_replace(None);
    }
    let fwd = Forwarder::start(&config).await;
    addr_tx.send_replace(Some(fwd.addr()));
    sink.resume();
    sleep_ms(1_000).await;
    let (accepted, answers) = load.finish().await;
    println!("answers: {answers:?}");
    assert!(
        accepted.len() > 1_000,
        "the load was accepted most of the time: {answers:?}"
    );
    sink.wait_for(&accepted).await;
    replayed += fwd.metrics().await.get(replayed_series);
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");

    let limit = Duration::from_millis(KILL_CHECKPOINT_MS + KILL_SLACK_MS);
    let Replays {
        duplicates,
        within_a_run,
        too_old,
    } = replays(&sink, &kills, &batches, limit);
    let lines = sink.lines();
    println!(
        "kill -9 loop: {} events accepted, {} lines read, {duplicates} duplicates, \
         {replayed} replayed events counted by the forwarder (scraped before each kill)",
        accepted.len(),
        lines.len()
    );
    assert_eq!(within_a_run, 0, "no event is sent twice within one run");
    assert!(
        too_old.is_empty(),
        "{} events given again after a crash though their batch was finished more than {limit:?} before it \
         (event, run, finished this long before the kill): {:?}",
        too_old.len(),
        &too_old[..too_old.len().min(10)]
    );
}

/// A `kill -9` while a sink works through a backlog of 20,000 events (its
/// receiver reading about 10,000 lines a second): after the restart the
/// sink is given again only batches it had in flight or finished within
/// `checkpoint_interval_ms` (plus slack) before the crash.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_a_sink_catches_up_replays_only_the_last_checkpoint_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = LineSink::start_down().await;
    let mut setup = Setup::new(dir.path(), vec![tcp_sink("tcp", sink.addr, "block")]);
    setup.checkpoint_interval_ms = KILL_CHECKPOINT_MS;
    let config = setup.write();
    let fwd = Forwarder::start(&config).await;
    let batches = Batches::new(100);
    let mut accepted = Vec::new();
    for i in 0..200 {
        let (body, ids) = batches.get(i);
        assert_eq!(try_post(fwd.addr(), &body).await.unwrap().status, 200);
        accepted.extend(ids);
    }
    sink.slow.store(true, Ordering::SeqCst);
    sink.restart().await;
    let deadline = Instant::now() + PATIENCE;
    while sink.lines().len() < 12_000 {
        assert!(Instant::now() < deadline, "the sink is not catching up");
        sleep_ms(10).await;
    }
    let sent = fwd
        .metrics()
        .await
        .get(r#"audit_forwarder_events_sent_total{sink="tcp"}"#);
    let read = sink.lines().len();
    let kills = [Instant::now()];
    fwd.kill().await;
    sink.slow.store(false, Ordering::SeqCst);
    let fwd = Forwarder::start(&config).await;
    sink.wait_for(&accepted).await;
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    let limit = Duration::from_millis(KILL_CHECKPOINT_MS + KILL_SLACK_MS);
    let r = replays(&sink, &kills, &batches, limit);
    println!(
        "catch-up: killed with {read} events read by the receiver, {sent} counted sent; \
         {} given again after the restart",
        r.duplicates
    );
    assert_eq!(r.within_a_run, 0);
    assert!(
        r.too_old.is_empty(),
        "{} events given again though their batch was finished more than {limit:?} before the crash \
         (event, run, finished this long before the kill): {:?}",
        r.too_old.len(),
        &r.too_old[..r.too_old.len().min(5)]
    );
}

/// The receiver is down for 30 s while the load goes on at the API server's
/// pace (10 batches a second, small ones): every request is answered 200,
/// and once the receiver is back it gets every event once, in the order the
/// requests were accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_30_s_sink_outage_is_absorbed_without_a_503_and_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = LineSink::start_down().await;
    let config = Setup::new(dir.path(), vec![tcp_sink("tcp", sink.addr, "block")]).write();
    let fwd = Forwarder::start(&config).await;
    let batches = Batches::new(5);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0..300 {
        tick.tick().await;
        let (body, ids) = batches.get(i);
        match try_post(fwd.addr(), &body).await {
            Some(a) if a.status == 200 => accepted.extend(ids),
            other => refused.push((i, other)),
        }
    }
    assert!(refused.is_empty(), "{refused:?}");
    let m = fwd.metrics().await;
    let held = m.get(r#"audit_forwarder_buffer_events{sink="tcp"}"#);
    let age = m.get(r#"audit_forwarder_buffer_oldest_event_age_seconds{sink="tcp"}"#);
    println!("outage: {held} events held, oldest {age} s old");
    assert!(held >= 1_000.0, "the backlog is published: {held}");
    assert!(age >= 20.0, "the oldest event's age is published: {age}");
    assert_eq!(sink.lines().len(), 0);

    sink.restart().await;
    sink.wait_for(&accepted).await;
    sleep_ms(200).await;
    assert_eq!(
        sink.seqs(),
        accepted,
        "each event once, in acceptance order"
    );
    crate::harness::eventually("the backlog is gone", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_buffer_events{sink="tcp"}"#)
            == 0.0
    })
    .await;
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

/// Bytes the log's segment files take now.
fn wal_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A forwarder with a healthy `block` sink and a dead `drop_newest` one
/// (queue of 1,000 events) sharing a 4 MiB buffer, after 16 MB were pushed
/// through it, batches answered 503 tried again as the API server does.
struct Fanout {
    _dir: tempfile::TempDir,
    setup: Setup,
    config: PathBuf,
    fwd: Forwarder,
    healthy: LineSink,
    dead: LineSink,
    accepted: Vec<u64>,
    /// The most the log files took, sampled after each request.
    most_wal_bytes: u64,
    /// Bytes of one event in the log.
    event_bytes: u64,
}

async fn fanout() -> Fanout {
    let dir = tempfile::tempdir().unwrap();
    let healthy = LineSink::start().await;
    let dead = LineSink::start_down().await;
    let mut setup = Setup::new(
        dir.path(),
        vec![
            tcp_sink("healthy", healthy.addr, "block"),
            Sink {
                capacity_events: Some(1_000),
                ..tcp_sink("dead", dead.addr, "drop_newest")
            },
        ],
    );
    setup.max_bytes = 4 * MIB;
    setup.segment_bytes = MIB;
    setup.body_bytes = 512 << 10;
    let config = setup.write();
    let fwd = Forwarder::start(&config).await;
    // About 110 KB a batch, 150 batches: 16 MB.
    let batches = Batches::new(100);
    let mut accepted = Vec::new();
    let mut most = 0;
    let mut full_answers = 0;
    for i in 0..150 {
        let (body, ids) = batches.get(i);
        for _ in 0..50 {
            let a = try_post(fwd.addr(), &body).await.expect("an answer");
            if a.status == 200 {
                accepted.extend(ids);
                break;
            }
            // The healthy sink is a moment behind.
            assert_eq!(
                (a.status, a.reason().as_str()),
                (503, "buffer_full"),
                "{a:?}"
            );
            full_answers += 1;
            sleep_ms(100).await;
        }
        most = most.max(wal_bytes(&setup.buffer));
    }
    assert_eq!(
        accepted.len(),
        15_000,
        "every batch was accepted in the end"
    );
    println!("fan-out: log files at most {most} bytes, {full_answers} answers 503 buffer_full");
    Fanout {
        _dir: dir,
        setup,
        config,
        fwd,
        healthy,
        dead,
        accepted,
        most_wal_bytes: most,
        event_bytes: batches.template.len() as u64 / batches.size,
    }
}

const DEAD_DROPPED: &str =
    r#"audit_forwarder_events_dropped_total{reason="buffer_full",sink="dead"}"#;

/// Four times `max_bytes` pushed past a dead `drop_newest` sink: the log
/// files never pass `max_bytes` (plus one record), the healthy sink gets
/// every event once, in order, and the dead sink's losses are counted.
#[tokio::test(flavor = "multi_thread")]
async fn fanout_a_dead_drop_newest_sink_keeps_the_disk_bounded_and_costs_the_healthy_sink_nothing()
{
    let f = fanout().await;
    let one_record = f.setup.body_bytes + 64 * 1024;
    assert!(
        f.most_wal_bytes <= f.setup.max_bytes + one_record,
        "the log stays within max_bytes plus one record: {}",
        f.most_wal_bytes
    );
    assert!(wal_bytes(&f.setup.buffer) <= f.setup.max_bytes + one_record);
    f.healthy.wait_for(&f.accepted).await;
    sleep_ms(200).await;
    assert_eq!(
        f.healthy.seqs(),
        f.accepted,
        "the healthy sink gets every event once, in order"
    );
    let m = f.fwd.metrics().await;
    let dropped = m.get(DEAD_DROPPED);
    let held = m.get(r#"audit_forwarder_buffer_events{sink="dead"}"#);
    println!("fan-out: dead sink: {dropped} dropped, {held} held in the buffer");
    // All but what the log holds for it and what its queue (1,000 events)
    // and its feeder (one batch) took before it fell behind.
    let kept = (f.setup.max_bytes + one_record) / f.event_bytes + 1_000 + 100;
    assert!(
        dropped >= (f.accepted.len() as u64 - kept) as f64 && dropped < f.accepted.len() as f64,
        "the dead sink's losses are counted: {dropped}"
    );
    let (code, _, logs) = f.fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

/// The dead `drop_newest` sink comes back after a restart: every event is
/// either delivered to it or was counted as dropped for it.
#[tokio::test(flavor = "multi_thread")]
async fn fanout_every_event_a_drop_newest_sink_never_gets_is_counted_as_dropped() {
    let Fanout {
        _dir,
        config,
        fwd,
        mut dead,
        accepted,
        ..
    } = fanout().await;
    let dropped = fwd.metrics().await.get(DEAD_DROPPED);
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    dead.restart().await;
    let fwd = Forwarder::start(&config).await;
    crate::harness::eventually("the dead sink caught up", || async {
        fwd.metrics()
            .await
            .get(r#"audit_forwarder_buffer_events{sink="dead"}"#)
            == 0.0
    })
    .await;
    sleep_ms(500).await;
    let got: HashSet<u64> = dead.seqs().into_iter().collect();
    let dropped = dropped + fwd.metrics().await.get(DEAD_DROPPED);
    println!(
        "fan-out: the revived sink got {} events, {dropped} counted as dropped, of {}",
        got.len(),
        accepted.len()
    );
    assert_eq!(
        got.len() as f64 + dropped,
        accepted.len() as f64,
        "delivered + counted as dropped = accepted"
    );
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

/// A tmpfs mounted for the test and unmounted when it ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(Self(dir.to_owned())),
            false => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The buffer on an 8 MiB tmpfs that a filler file and a stalled receiver
/// fill: requests are answered 503 with `Retry-After` and reason
/// `disk_error`, the error is counted, and once the filler is deleted
/// requests are answered 200 again; after a `kill -9` every event answered
/// 200 arrives. Needs root (mount); skipped with a message otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_loses_nothing_and_admits_again_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _tmpfs = match Tmpfs::mount(&mnt, "8m") {
        Ok(t) => t,
        Err(e) => {
            println!(
                "SKIPPED a_full_disk_answers_503…: cannot mount a tmpfs ({e}); the buffer's unit tests inject the error instead"
            );
            return;
        }
    };
    let sink = LineSink::start().await;
    sink.stall();
    let mut setup = Setup::new(&mnt, vec![tcp_sink("tcp", sink.addr, "block")]);
    setup.max_bytes = 64 * MIB;
    setup.segment_bytes = MIB;
    setup.body_bytes = 512 << 10;
    let config = setup.write();
    let fwd = Forwarder::start(&config).await;
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 4 << 20]).unwrap();

    let batches = Batches::new(50);
    let full = r#"audit_forwarder_buffer_disk_errors_total{kind="full"}"#;
    let mut accepted = Vec::new();
    let mut i = 0;
    let first_refusal = loop {
        assert!(i < 400, "8 MiB never filled up");
        let (body, ids) = batches.get(i);
        i += 1;
        let a = try_post(fwd.addr(), &body).await.expect("an answer");
        if a.status != 200 {
            break a;
        }
        accepted.extend(ids);
    };
    assert!(!accepted.is_empty());
    assert_eq!(first_refusal.status, 503, "{first_refusal:?}");
    assert_eq!(first_refusal.reason(), "disk_error", "{first_refusal:?}");
    assert!(first_refusal.retry_after.is_some(), "{first_refusal:?}");
    let errors = fwd.metrics().await.get(full);
    assert!(errors >= 1.0, "counted as kind=full: {errors}");
    // Still full: refused again, counted again.
    let (body, _) = batches.get(i);
    i += 1;
    assert_eq!(try_post(fwd.addr(), &body).await.unwrap().status, 503);
    assert!(fwd.metrics().await.get(full) > errors);

    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..50 {
        let (body, ids) = batches.get(i);
        i += 1;
        if try_post(fwd.addr(), &body).await.unwrap().status == 200 {
            accepted.extend(ids);
            resumed = true;
            break;
        }
        sleep_ms(100).await;
    }
    assert!(resumed, "admission resumes once space is freed");
    println!(
        "disk full: {} events accepted, refused after batch {}",
        accepted.len(),
        accepted.len() / 50
    );
    // What was answered 200 was on disk: a kill -9 loses none of it.
    fwd.kill().await;
    sink.resume();
    let fwd = Forwarder::start(&config).await;
    sink.wait_for(&accepted).await;
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

/// SIGTERM while the receiver has stopped reading: the forwarder exits 0
/// (the stalled write in flight is given up at the deadline; what is not
/// delivered stays on disk), and the next start delivers every event that
/// was answered 200.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_stalled_sink_exits_0_and_the_next_start_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LineSink::start().await;
    sink.stall();
    let setup = Setup::new(dir.path(), vec![tcp_sink("tcp", sink.addr, "block")]);
    let config = setup.write();
    let fwd = Forwarder::start(&config).await;
    let batches = Batches::new(50);
    let mut accepted = Vec::new();
    for i in 0..20 {
        let (body, ids) = batches.get(i);
        assert_eq!(try_post(fwd.addr(), &body).await.unwrap().status, 200);
        accepted.extend(ids);
    }
    sleep_ms(300).await;
    let (code, took, logs) = fwd.terminate().await;
    println!(
        "SIGTERM with a stalled sink: exit after {took:?} (shutdown.deadline_secs {})",
        setup.deadline_secs
    );
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("stay in the disk buffer")),
        "{logs:#?}"
    );
    assert!(
        sink.lines().len() < accepted.len(),
        "the receiver really was stalled"
    );
    // What the stalled connection's buffers hold is read now; the rest
    // comes from the log.
    sink.resume();
    let fwd = Forwarder::start(&config).await;
    sink.wait_for(&accepted).await;
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

/// SIGTERM while the receiver is down and a backlog waits for it: nothing is
/// in flight, so the forwarder exits 0 without waiting for the receiver or
/// for `shutdown.deadline_secs` (60 here), and the next start delivers the
/// backlog once the receiver is back.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_dead_sink_does_not_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = LineSink::start_down().await;
    let mut setup = Setup::new(dir.path(), vec![tcp_sink("tcp", sink.addr, "block")]);
    setup.deadline_secs = 60;
    let config = setup.write();
    let fwd = Forwarder::start(&config).await;
    let batches = Batches::new(50);
    let mut accepted = Vec::new();
    for i in 0..20 {
        let (body, ids) = batches.get(i);
        assert_eq!(try_post(fwd.addr(), &body).await.unwrap().status, 200);
        accepted.extend(ids);
    }
    // Fails (no exit within PATIENCE, 15 s) if the sink is waited for.
    let (code, took, logs) = fwd.terminate().await;
    println!("SIGTERM with a dead sink: exit after {took:?}");
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("kept_events=1000")),
        "{logs:#?}"
    );
    sink.restart().await;
    let fwd = Forwarder::start(&config).await;
    sink.wait_for(&accepted).await;
    sleep_ms(200).await;
    assert_eq!(sink.seqs(), accepted, "each once, in order");
    let (code, _, logs) = fwd.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}
