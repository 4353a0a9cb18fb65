//! Decode and split of a deterministic 400-event batch (the API server's default
//! `--audit-webhook-batch-max-size`), from a borrowed body (one copy into a
//! padded buffer) and from a body the decoder owns (the source's path,
//! validated in place), against serde_json doing the same split into borrowed
//! raw items as the baseline, and simd-json's stage 1 alone as the floor.
//!
//! `cargo bench --bench decode`; throughput is in bytes of body, and each batch
//! holds 400 events.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_forwarder::decode::{BODY_PADDING, DecodeOptions, decode, decode_owned};
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
        // The source's own path: a body read into a buffer the forwarder
        // owns, with room for simd-json's padding, is validated where it
        // lies (the copy into that buffer is the read itself, not timed).
        group.bench_function("simd_json_split_owned", |b| {
            b.iter_batched(
                || {
                    let mut buf = BytesMut::with_capacity(body.len() + BODY_PADDING);
                    buf.extend_from_slice(&body);
                    buf.freeze()
                },
                |owned| {
                    decode_owned(owned, &DecodeOptions::default())
                        .1
                        .unwrap()
                        .events
                        .len()
                },
                BatchSize::SmallInput,
            )
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
