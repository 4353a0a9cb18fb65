//! The syslog encoding of 400-event batches against their decode, in one run:
//! the synthetic `metadata` and `mixed` traffic of `decode`, each batch
//! decoded, then every event given its RFC 5424 header (MSG the event's
//! JSON, as the `tcp` sink's write path asks per event), or encoded as CEF.
//!
//! `cargo bench --bench syslog`; throughput is in bytes of body. Compare
//! `syslog_json` and `syslog_cef` with `decode` of the same group: the JSON
//! lines encoding costs nothing per event (the event's bytes and a newline go
//! to the socket as they are).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kube_audit_forwarder::config::{SyslogConfig, SyslogFormat};
use kube_audit_forwarder::decode::{DecodeOptions, decode};
use kube_audit_forwarder::sink::encode::syslog::SyslogEncoder;
use kube_audit_forwarder::synth::{MIXED, Rng, SynthLevel, event_list};

fn bench(c: &mut Criterion) {
    let opts = DecodeOptions::default();
    let json = SyslogEncoder::with_hostname(&SyslogConfig::default(), "node-1");
    let cef = SyslogEncoder::with_hostname(
        &SyslogConfig {
            format: SyslogFormat::Cef,
            ..SyslogConfig::default()
        },
        "node-1",
    );
    let batches = [
        (
            "metadata",
            event_list(&mut Rng::new(42), 0, 400, &[SynthLevel::Metadata]),
        ),
        ("mixed", event_list(&mut Rng::new(42), 0, 400, &MIXED)),
    ];
    for (name, body) in batches {
        let body = Bytes::from(body);
        let events = decode(&body, &opts).unwrap().events;
        let mut group = c.benchmark_group(format!("syslog_400_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("decode", |b| {
            b.iter(|| decode(&body, &opts).unwrap().events.len())
        });
        for (label, enc) in [("syslog_json", &json), ("syslog_cef", &cef)] {
            let mut out = Vec::with_capacity(64 << 10);
            group.bench_function(label, |b| {
                b.iter(|| {
                    out.clear();
                    for e in &events {
                        enc.encode(e, &mut out).unwrap();
                    }
                    out.len()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
