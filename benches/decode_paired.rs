//! Decode against simd-json's stage 1 alone, timed in pairs: each round runs
//! stage 1 on a 400-event batch, then the decode of the same batch (from a
//! borrowed body, and from a body the decoder owns, as the source hands it
//! over), and keeps each time. On a shared machine whose load moves from one
//! second to the next, two criterion groups run seconds apart do not see the
//! same machine; rounds a millisecond apart do, so the ratio of their medians
//! holds where the absolute figures do not.
//!
//! `cargo bench --bench decode_paired [-- ROUNDS] [KIND]` (default 3,000
//! rounds per batch kind; KIND one of `metadata`, `mixed`,
//! `request_response`, default all). Prints, per batch kind, the median time of each step, its
//! throughput in GB/s (10^9 bytes of body per second) and its ratio to stage 1.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kube_audit_forwarder::decode::{BODY_PADDING, DecodeOptions, decode, decode_owned};
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, event_list};

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3_000);
    let only = std::env::args()
        .skip(1)
        .find(|a| a.parse::<usize>().is_err() && !a.starts_with('-'));
    use SynthLevel::*;
    let batches = [
        ("metadata", vec![Metadata]),
        ("mixed", MIXED.to_vec()),
        ("request_response", vec![RequestResponse]),
    ];
    println!("| batch | bytes | step | median µs | GB/s | × stage 1 time | throughput ÷ stage 1 |");
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: |");
    for (name, mix) in batches {
        if only.as_deref().is_some_and(|k| k != name) {
            continue;
        }
        let body = Bytes::from(event_list(&mut Rng::new(42), 0, 400, &mix));
        let opts = DecodeOptions::default();
        let mut padded = body.to_vec();
        padded.resize(body.len() + simd_json::INPUT_PADDING, 0);
        let mut buffers = simd_json::Buffers::with_max_depth(body.len(), 0);
        // Fewer rounds for the large batches, so each kind takes about as long.
        let n = (rounds * 400_000 / body.len()).clamp(50, rounds);
        let (mut stage1, mut copied, mut owned) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..n + n / 10 {
            let mut buf = BytesMut::with_capacity(body.len() + BODY_PADDING);
            buf.extend_from_slice(&body);
            let fresh = buf.freeze();

            let t = Instant::now();
            let mut tape = simd_json::Tape::null();
            let r = simd_json::fill_tape_padded(&mut padded, body.len(), &mut buffers, &mut tape);
            black_box((r.is_err(), buffers.structural_indexes().len()));
            let a = t.elapsed();

            let t = Instant::now();
            black_box(decode(&body, &opts).map(|d| d.events.len()).ok());
            let b = t.elapsed();

            let t = Instant::now();
            let (kept, decoded) = decode_owned(fresh, &opts);
            black_box(decoded.map(|d| d.events.len()).ok());
            let c = t.elapsed();
            // The body's buffer is freed outside the timing, as the source
            // keeps it until the sinks are done with its events.
            drop(kept);

            // The first tenth warms caches and the branch predictors.
            if round >= n / 10 {
                stage1.push(a);
                copied.push(b);
                owned.push(c);
            }
        }
        let s = median(&mut stage1).as_secs_f64();
        for (step, times) in [
            ("simd-json stage 1 alone", &mut stage1),
            ("decode, borrowed body (one copy)", &mut copied),
            ("decode, owned body (in place)", &mut owned),
        ] {
            let m = median(times).as_secs_f64();
            println!(
                "| {name} | {} | {step} | {:.1} | {:.2} | {:.2} | {:.2} |",
                body.len(),
                m * 1e6,
                body.len() as f64 / m / 1e9,
                m / s,
                s / m
            );
        }
    }
}
