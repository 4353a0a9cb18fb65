//! Writes a deterministic synthetic EventList to stdout: `synth_body N MIX`
//! where MIX is `metadata`, `mixed` or `request_response`.
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel::*, event_list};
use std::io::Write;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(400);
    let mix = match args.get(2).map(String::as_str) {
        Some("request_response") => vec![RequestResponse],
        Some("mixed") => MIXED.to_vec(),
        _ => vec![Metadata],
    };
    std::io::stdout()
        .write_all(&event_list(&mut Rng::new(42), 0, n, &mix))
        .unwrap();
}
