//! Decode and split of a deterministic 400-event batch (the API server's default
//! `--audit-webhook-batch-max-size`), against serde_json doing the same split
//! into borrowed raw items as the baseline, and simd-json's stage 1 alone as
//! the floor.
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
        // The floor for any decode built on simd-json: its stage 1 alone
        // (structure scan and UTF-8 validation), stopped at the first bracket
        // as `decode` does, without the copy into a padded buffer.
        group.bench_function("simd_json_stage1_only", |b| {
            let mut padded = body.to_vec();
            padded.resize(body.len() + simd_json::INPUT_PADDING, 0);
            let mut buffers = simd_json::Buffers::with_max_depth(body.len(), 0);
            b.iter(|| {
                let mut tape = simd_json::Tape::null();
                let r =
                    simd_json::fill_tape_padded(&mut padded, body.len(), &mut buffers, &mut tape);
                assert!(r.is_err(), "stage 2 stops at the first bracket");
                buffers.structural_indexes().len()
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
