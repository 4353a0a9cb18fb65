//! `audit-loadgen`: a load generator that behaves like kube-apiserver's batch
//! audit webhook client (`plugin/pkg/audit/webhook`, see
//! shared reference notes): compact `audit.k8s.io/v1` EventLists POSTed with
//! `Content-Type: application/json` to `URL?timeout=30s`, over HTTP/1.1, or h2
//! over TLS with a client certificate.
//!
//! Open loop (`--batches-per-sec`, as the API server's throttle sends them,
//! latency measured from each batch's intended send time so that a slow
//! receiver cannot hide its delay: no coordinated omission) or closed loop
//! (`--concurrency N` senders, each sending as soon as the last answer came).
//! Events are deterministic for a seed and carry unique auditIDs (their first
//! eight hex digits are a sequence number) so a backend can check for loss and
//! duplicates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use kube_audit_forwarder::config::ClientTlsConfig;
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, Template};
use kube_audit_forwarder::tls::OutboundTls;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

/// Emulates kube-apiserver's audit webhook batches against a receiver.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// The receiver's webhook URL (the query `timeout=30s` is added).
    #[arg(long, default_value = "http://127.0.0.1:3000/post")]
    url: String,
    /// Events per batch (`--audit-webhook-batch-max-size`).
    #[arg(long, default_value_t = 400)]
    batch_events: usize,
    /// Event sizes: metadata (~1.1 KB), request (~4.5 KB), request-response
    /// (~30 KB), or mixed (6 metadata, 1 request, 1 request-response).
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    mix: Mix,
    /// Open loop: batches per second (the API server's default throttle is 10/s).
    #[arg(long, conflicts_with = "concurrency")]
    batches_per_sec: Option<f64>,
    /// Closed loop: this many senders, each waiting for its answer.
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many batches, if sooner.
    #[arg(long)]
    max_batches: Option<u64>,
    /// Seed of the synthetic events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First auditID sequence number (to keep runs apart at one backend).
    #[arg(long, default_value_t = 0)]
    first_seq: u64,
    /// Retries of a failed batch, with the API server's backoff (factor 1.5,
    /// jitter 0.2) from `--initial-backoff-ms`; 0 sends each batch once.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// First retry pause (the API server's `--audit-webhook-initial-backoff` is 10 s).
    #[arg(long, default_value_t = 10_000)]
    initial_backoff_ms: u64,
    /// Use h2 (over TLS: ALPN; over plain HTTP: prior knowledge).
    #[arg(long)]
    http2: bool,
    /// CA to verify an https:// receiver.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (mTLS), with `--key-file`.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// Client key.
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Most batches in flight in open-loop mode.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Mix {
    Metadata,
    Request,
    RequestResponse,
    Mixed,
}

impl Mix {
    fn levels(self) -> Vec<SynthLevel> {
        use SynthLevel::*;
        match self {
            Self::Metadata => vec![Metadata],
            Self::Request => vec![Request],
            Self::RequestResponse => vec![RequestResponse],
            Self::Mixed => MIXED.to_vec(),
        }
    }
}

/// What the run saw.
struct Stats {
    latency_us: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    batches_ok: u64,
    events_ok: u64,
    bytes_ok: u64,
    retries: u64,
}

struct Shared {
    client: reqwest::Client,
    url: String,
    templates: Vec<Template>,
    next_batch: AtomicU64,
    first_seq: u64,
    args: Args,
    stats: Mutex<Stats>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.batches_per_sec.is_none() && args.concurrency.is_none() {
        anyhow::bail!("give --batches-per-sec (open loop) or --concurrency (closed loop)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut rng = Rng::new(args.seed);
    let templates: Vec<Template> = (0..8)
        .map(|_| Template::new(&mut rng, args.batch_events, &args.mix.levels()))
        .collect();
    let tls_cfg = ClientTlsConfig {
        ca_file: args.ca_file.clone(),
        crt_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        ..ClientTlsConfig::default()
    };
    let alpn: &[&[u8]] = if args.http2 { &[b"h2"] } else { &[b"http/1.1"] };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(OutboundTls::load(&tls_cfg)?.client_config(alpn)?)
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true);
    builder = if args.http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    let url = if args.url.contains('?') {
        format!("{}&timeout=30s", args.url)
    } else {
        format!("{}?timeout=30s", args.url)
    };
    let shared = Arc::new(Shared {
        client: builder.build()?,
        url,
        templates,
        next_batch: AtomicU64::new(0),
        first_seq: args.first_seq,
        stats: Mutex::new(Stats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            statuses: BTreeMap::new(),
            batches_ok: 0,
            events_ok: 0,
            bytes_ok: 0,
            retries: 0,
        }),
        args: args.clone(),
    });
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration_secs);
    let progress = tokio::spawn(progress(shared.clone(), started));
    match (args.batches_per_sec, args.concurrency) {
        (Some(rate), _) => open_loop(shared.clone(), rate, end).await,
        (_, Some(n)) => closed_loop(shared.clone(), n, end).await,
        _ => unreachable!(),
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    report(&shared, elapsed).await
}

/// Sends batch number `k` (with retries) and records the answer; latency from `since`.
async fn send(shared: &Shared, k: u64, since: Instant) {
    let template = &shared.templates[(k % shared.templates.len() as u64) as usize];
    let events = template.events() as u64;
    let body = bytes::Bytes::from(template.stamp(shared.first_seq + k * events));
    let len = body.len() as u64;
    let mut attempt = 0;
    let mut backoff = Duration::from_millis(shared.args.initial_backoff_ms);
    loop {
        let answer = shared
            .client
            .post(&shared.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, */*")
            .body(body.clone())
            .send()
            .await;
        let (status, retry_after) = match answer {
            Ok(resp) => {
                let s = resp.status();
                let ra = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let _ = resp.bytes().await;
                (
                    s.as_u16().to_string(),
                    ra.filter(|_| s.as_u16() == 429 || s.is_server_error()),
                )
            }
            Err(e) if e.is_timeout() => ("timeout".to_owned(), None),
            Err(_) => ("error".to_owned(), None),
        };
        let ok = status.starts_with('2');
        let mut st = shared.stats.lock().await;
        *st.statuses.entry(status).or_default() += 1;
        if ok || attempt >= shared.args.retries {
            let micros = since.elapsed().as_micros().max(1) as u64;
            let _ = st.latency_us.record(micros.min(120_000_000));
            if ok {
                st.batches_ok += 1;
                st.events_ok += events;
                st.bytes_ok += len;
            }
            return;
        }
        st.retries += 1;
        drop(st);
        attempt += 1;
        let pause = retry_after.map(Duration::from_secs).unwrap_or_else(|| {
            let p = backoff.mul_f64(1.0 + 0.2 * fastrand::f64());
            backoff = backoff.mul_f64(1.5);
            p
        });
        tokio::time::sleep(pause).await;
    }
}

async fn open_loop(shared: Arc<Shared>, rate: f64, end: Instant) {
    let start = Instant::now();
    let limit = Arc::new(Semaphore::new(shared.args.max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0u64.. {
        if shared.args.max_batches.is_some_and(|m| k >= m) {
            break;
        }
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let s = shared.clone();
        tasks.spawn(async move {
            send(&s, k, intended).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(shared: Arc<Shared>, n: usize, end: Instant) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let s = shared.clone();
        tasks.spawn(async move {
            while Instant::now() < end {
                let k = s.next_batch.fetch_add(1, Ordering::Relaxed);
                if s.args.max_batches.is_some_and(|m| k >= m) {
                    break;
                }
                send(&s, k, Instant::now()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn progress(shared: Arc<Shared>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let st = shared.stats.lock().await;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{secs:6.1}s  {:8.1} batches/s  {:9.0} events/s  {:7.1} MB/s  p99 {:.2} ms  {:?}",
            st.batches_ok as f64 / secs,
            st.events_ok as f64 / secs,
            st.bytes_ok as f64 / secs / 1e6,
            st.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            st.statuses
        );
    }
}

async fn report(shared: &Shared, elapsed: f64) -> anyhow::Result<()> {
    let st = shared.stats.lock().await;
    let ms = |q: f64| st.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let mode = match (shared.args.batches_per_sec, shared.args.concurrency) {
        (Some(r), _) => format!("open loop, {r} batches/s"),
        (_, Some(n)) => format!("closed loop, concurrency {n}"),
        _ => String::new(),
    };
    let first = shared.first_seq;
    let events_per_batch = shared.templates[0].events() as u64;
    let sent_batches = shared.next_batch.load(Ordering::Relaxed);
    let result = serde_json::json!({
        "mode": mode,
        "url": shared.args.url,
        "mix": format!("{:?}", shared.args.mix),
        "batch_events": events_per_batch,
        "batch_bytes": shared.templates[0].len(),
        "elapsed_secs": elapsed,
        "batches_ok": st.batches_ok,
        "events_ok": st.events_ok,
        "bytes_ok": st.bytes_ok,
        "batches_per_sec": st.batches_ok as f64 / elapsed,
        "events_per_sec": st.events_ok as f64 / elapsed,
        "mb_per_sec": st.bytes_ok as f64 / elapsed / 1e6,
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": st.latency_us.max() as f64 / 1000.0, "count": st.latency_us.len() },
        "statuses": st.statuses,
        "retries": st.retries,
        "first_seq": first,
        "closed_loop_batches_started": sent_batches,
    });
    println!(
        "{mode}, {} events/batch ({} bytes), {:.1} s",
        events_per_batch,
        shared.templates[0].len(),
        elapsed
    );
    println!(
        "{:>12} {:>12} {:>10} {:>10} {:>10} {:>10}  statuses",
        "batches/s", "events/s", "MB/s", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:>12.1} {:>12.0} {:>10.1} {:>10.2} {:>10.2} {:>10.2}  {:?}",
        st.batches_ok as f64 / elapsed,
        st.events_ok as f64 / elapsed,
        st.bytes_ok as f64 / elapsed / 1e6,
        ms(0.5),
        ms(0.99),
        st.latency_us.max() as f64 / 1000.0,
        st.statuses
    );
    if let Some(path) = &shared.args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(())
}
