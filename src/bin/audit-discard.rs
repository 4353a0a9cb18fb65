//! `audit-discard`: a counting discard backend for benchmarks. It takes audit
//! events over HTTP (any POST: an EventList, JSON lines or a JSON array) and
//! over TCP (JSON lines), throws them away, and counts requests, bytes and
//! events, checking the auditIDs made by `audit-loadgen` (first eight hex
//! digits are a sequence number) for loss and duplicates.
//!
//! `GET /stats` answers the counts as JSON, `POST /reset` zeroes them, and
//! `POST /stall` / `POST /unstall` make it stop and resume answering (HTTP) and
//! reading (TCP), to stand for a backend that hangs. On start it prints one JSON
//! line with the bound addresses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube_audit_forwarder::synth::sequence_of;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// A counting discard backend for audit events.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// TCP (JSON lines) listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    tcp: SocketAddr,
    /// Start stalled.
    #[arg(long)]
    stall: bool,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    bytes: u64,
    events: u64,
    duplicates: u64,
    seen: Vec<u64>,
    unique: u64,
    max_seq: u64,
}

impl Counts {
    /// Counts the auditIDs in `data`; returns how many.
    fn events_in(&mut self, data: &[u8]) -> u64 {
        let mut n = 0;
        for at in memchr::memmem::find_iter(data, br#""auditID":""#) {
            n += 1;
            let Some(seq) = data.get(at + 11..at + 19).and_then(sequence_of) else {
                continue;
            };
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if self.seen.len() <= word {
                self.seen.resize(word + 1, 0);
            }
            if self.seen[word] & (1 << bit) != 0 {
                self.duplicates += 1;
            } else {
                self.seen[word] |= 1 << bit;
                self.unique += 1;
                self.max_seq = self.max_seq.max(seq);
            }
        }
        self.events += n;
        n
    }
}

struct State {
    counts: Mutex<Counts>,
    stalled: AtomicBool,
    unstall: tokio::sync::Notify,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let state = Arc::new(State {
        counts: Mutex::default(),
        stalled: AtomicBool::new(args.stall),
        unstall: Default::default(),
    });
    let http = TcpListener::bind(args.http).await?;
    let tcp = TcpListener::bind(args.tcp).await?;
    println!(
        r#"{{"http":"{}","tcp":"{}"}}"#,
        http.local_addr()?,
        tcp.local_addr()?
    );
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move { read_tcp(stream, s).await });
        }
    });
    loop {
        let (stream, _) = http.accept().await?;
        let _ = stream.set_nodelay(true);
        let s = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(s.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn wait_unstalled(state: &State) {
    while state.stalled.load(Ordering::Acquire) {
        let notified = state.unstall.notified();
        if !state.stalled.load(Ordering::Acquire) {
            break;
        }
        notified.await;
    }
}

async fn read_tcp(mut stream: tokio::net::TcpStream, state: Arc<State>) {
    let mut buf = vec![0u8; 256 << 10];
    let mut carry = 0usize;
    loop {
        wait_unstalled(&state).await;
        let n = match stream.read(&mut buf[carry..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let end = carry + n;
        // Count whole lines; keep the last partial line for the next read.
        let cut = memchr::memrchr(b'\n', &buf[..end]).map_or(0, |i| i + 1);
        {
            let mut c = state.counts.lock().await;
            c.bytes += n as u64;
            c.events_in(&buf[..cut]);
        }
        buf.copy_within(cut..end, 0);
        carry = end - cut;
        if carry == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |s: String| Ok(Response::new(Full::new(Bytes::from(s))));
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => {
            let c = state.counts.lock().await;
            return text(format!(
                r#"{{"requests":{},"bytes":{},"events":{},"unique":{},"duplicates":{},"max_seq":{}}}"#,
                c.requests, c.bytes, c.events, c.unique, c.duplicates, c.max_seq
            ));
        }
        (&Method::POST, "/reset") => {
            *state.counts.lock().await = Counts::default();
            return text("{}".into());
        }
        (&Method::POST, "/stall") => {
            state.stalled.store(true, Ordering::Release);
            return text("{}".into());
        }
        (&Method::POST, "/unstall") => {
            state.stalled.store(false, Ordering::Release);
            state.unstall.notify_waiters();
            return text("{}".into());
        }
        (&Method::GET, _) => return text("ok".into()),
        _ => {}
    }
    wait_unstalled(&state).await;
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return text("{}".into());
    };
    let mut c = state.counts.lock().await;
    c.requests += 1;
    c.bytes += body.len() as u64;
    c.events_in(&body);
    text("{}".into())
}
