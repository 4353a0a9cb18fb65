//! How long a sink outage a disk buffer of a given size rides out:
//! `buffer_sizing [EVENTS_PER_SEC]` (default 4000).
//!
//! Measures the average webhook body bytes per event of the load generator's
//! traffic (`audit-loadgen`: eight batches of 400 events from its default seed 42, for
//! `Metadata` events and for the mixed traffic of `synth::MIXED`), which is
//! what the disk buffer keeps of each request, then divides each size, less
//! one 64 MiB log file (the partly delivered oldest file still counts), by
//! the rate of bytes that traffic brings.
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, Template};

const GIB: f64 = (1u64 << 30) as f64;
const SEGMENT_BYTES: f64 = (64u64 << 20) as f64;
const SIZES_GIB: [u64; 4] = [1, 4, 10, 50];

fn main() {
    let rate: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000.0);
    println!("at {rate} events/s; minutes of outage until buffer.max_bytes is reached");
    print!("{:<9} {:>12} {:>8}", "traffic", "bytes/event", "MB/s");
    for gib in SIZES_GIB {
        print!(" {:>8}", format!("{gib} GiB"));
    }
    println!();
    for (name, mix) in [
        ("metadata", vec![SynthLevel::Metadata]),
        ("mixed", MIXED.to_vec()),
    ] {
        let mut rng = Rng::new(42);
        let (mut bytes, mut events) = (0, 0);
        for _ in 0..8 {
            let t = Template::new(&mut rng, 400, &mix);
            bytes += t.len();
            events += t.events();
        }
        let per_event = bytes as f64 / events as f64;
        let bytes_per_sec = rate * per_event;
        print!("{name:<9} {per_event:>12.1} {:>8.2}", bytes_per_sec / 1e6);
        for gib in SIZES_GIB {
            let minutes = (gib as f64 * GIB - SEGMENT_BYTES) / bytes_per_sec / 60.0;
            print!(" {minutes:>8.1}");
        }
        println!();
    }
}
