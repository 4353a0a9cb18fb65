//! Decode and split of a deterministic 400-event batch (the API server's default
//! `--audit-webhook-batch-max-size`), against serde_json doing the same split
//! into borrowed raw items as the baseline.
//!
//! `cargo bench --bench decode`; throughput is in bytes of body, and each batch
//! holds 400 events.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_forwarder::decode::{DecodeOptions, decode};
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, event_list};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct BorrowedList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

fn bench(c: &mut Criterion) {
    use SynthLevel::*;
    let batches = [
        ("metadata", vec![Metadata]),
        ("mixed", MIXED.to_vec()),
        ("request_response", vec![RequestResponse]),
    ];
    for (name, mix) in batches {
        let body = Bytes::from(event_list(&mut Rng::new(42), 0, 400, &mix));
        let mut group = c.benchmark_group(format!("decode_400_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("simd_json_split", |b| {
            b.iter(|| {
                decode(&body, &DecodeOptions::default())
                    .unwrap()
                    .events
                    .len()
            })
        });
        group.bench_function("serde_json_raw_items", |b| {
            b.iter(|| {
                serde_json::from_slice::<BorrowedList<'_>>(&body)
                    .unwrap()
                    .items
                    .len()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
