//! Writes the seed corpora of the `decode` and `http_request` targets from the
//! test data (real audit events, reproducer bodies) and from
//! `kube_audit_forwarder::synth`:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus
//! ```
//!
//! Seeds are named after their content's hash, so running it again adds
//! nothing twice. `eventlist_roundtrip` needs none: its inputs are structure.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use kube_audit_forwarder::synth::{Rng, SynthLevel, event_list};

/// Bodies larger than this are left out: they slow the fuzzer and add no
/// structure the smaller ones lack.
const MAX_SEED: usize = 64 << 10;

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    let mut bodies = Vec::new();
    for dir in [data.join("corpus"), data.join("cases")] {
        collect(&dir, &mut bodies);
    }
    let mut rng = Rng::new(7);
    for n in [0, 1, 2, 5] {
        let mix = [SynthLevel::Metadata, SynthLevel::Request];
        bodies.push(event_list(&mut rng, 1, n, &mix));
    }
    bodies.push(event_list(&mut rng, 100, 1, &[SynthLevel::RequestResponse]));

    let decode = out.join("decode");
    let http = out.join("http_request");
    std::fs::create_dir_all(&decode).expect("create the decode corpus");
    std::fs::create_dir_all(&http).expect("create the http_request corpus");
    for (i, body) in bodies.iter().enumerate() {
        // The mode byte: see fuzz/src/checks/body.rs.
        write(&decode, &[&[0x00], body]);
        write(&decode, &[&[0x01], &gzip(body)]);
        if i % 3 == 0 {
            write(&decode, &[&[0x02], body]);
            write(&decode, &[&[0x0b | 0x20], body]);
            write(&decode, &[&[0x84 | 0x30], body]);
        }
        write(&http, &[&post("/post", &[], body)]);
        if i % 3 == 0 {
            let gz = gzip(body);
            write(
                &http,
                &[&post("/k8s-audit/", &["Content-Encoding: gzip"], &gz)],
            );
        }
    }
    let chunked = std::fs::read(data.join("cases/BH-05/body.chunked")).expect("BH-05 body");
    write(
        &http,
        &[
            b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            &chunked,
        ],
    );
    let small = br#"{"kind":"EventList","items":[{"auditID":"a"}]}"#;
    write(
        &http,
        &[
            &post("/post", &[], small),
            &post("/post", &["Expect: 100-continue"], small),
        ],
    );
    write(&http, &[b"GET /post HTTP/1.1\r\nHost: t\r\n\r\n"]);
    write(&http, &[b"HEAD / HTTP/1.0\r\n\r\n"]);
    write(&http, &[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]);
    write(&http, &[&post("/post", &["Content-Type: text/xml"], small)]);
    write(
        &http,
        &[&post("/post", &["Content-Length: 99999999"], small)],
    );
}

fn collect(dir: &Path, out: &mut Vec<Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            collect(&p, out);
        } else if [".json", ".ndjson", ".log"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            let bytes = std::fs::read(&p).expect("read test data");
            if bytes.len() <= MAX_SEED {
                out.push(bytes);
            }
        }
    }
}

fn post(path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path}?timeout=30s HTTP/1.1\r\nHost: forwarder.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        req.extend_from_slice(h.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    req
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(body).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// Writes the concatenation of `parts` under a name made from its content.
fn write(dir: &Path, parts: &[&[u8]]) {
    let seed: Vec<u8> = parts.concat();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &seed {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    std::fs::write(dir.join(format!("seed-{h:016x}")), seed).expect("write a seed");
}
