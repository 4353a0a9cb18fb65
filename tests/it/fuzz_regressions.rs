//! The fuzz targets' properties in the normal suite: every input saved under
//! `tests/data/fuzz-regressions/<target>/` (inputs that once failed) replayed
//! through the very checks the targets run, and proptest feeding the same
//! checks, so that a fresh clone's `cargo test` covers them without cargo-fuzz.

use std::path::Path;

use proptest::prelude::*;

// The checks live with the fuzz targets; `memory_bound` is only theirs.
#[allow(dead_code)]
#[path = "../../fuzz/src/checks/mod.rs"]
mod checks;

use checks::{body, eventlist, http, with_big_stack};

const TARGETS: [&str; 3] = ["decode", "eventlist_roundtrip", "http_request"];

fn check(target: &str, data: &[u8]) {
    match target {
        "decode" => body::check(data),
        "eventlist_roundtrip" => eventlist::check_bytes(data),
        "http_request" => http::check(data),
        _ => unreachable!("no fuzz target {target}"),
    }
}

#[test]
fn every_saved_fuzz_input_passes_its_targets_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut failed = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "md") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            replayed += 1;
            let run = std::panic::catch_unwind(|| with_big_stack(|| check(target, &data)));
            if run.is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz regressions fail again: {failed:#?}"
    );
    assert!(replayed > 0, "no saved fuzz input under {}", root.display());
}

/// Bytes that are JSON more often than chance: pieces of JSON and audit
/// tokens mixed with any byte.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            " ",
            "\n",
            "\r\n",
            "null",
            "1e400",
            "-0.5",
            "123456789012345678901234567890",
            "\"items\"",
            "\"Items\"",
            "\"it\\u0065ms\"",
            "\"kind\"",
            "\"EventList\"",
            "\"Event\"",
            "\"auditID\"",
            "\"a\\u00e9\\n\"",
            "\"\\ud800\"",
            "\"x\\udc00\\ud83d\\ude00\"",
            "{\"auditID\":\"a\"}",
            "\u{fffd}",
            "\"annotations\"",
            "\"requestObject\"",
            "\u{feff}",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_body_decodes_as_the_reference_says(mode in any::<u8>(), body in jsonish()) {
        let mut data = vec![mode];
        data.extend(body);
        body::check(&data);
    }

    #[test]
    fn any_structured_event_list_comes_out_item_for_item(
        data in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        with_big_stack(|| eventlist::check_bytes(&data));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_well_formed_answer(
        head in prop::sample::select(vec![
            "POST /post HTTP/1.1\r\nHost: t\r\n",
            "POST /k8s-audit HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\n",
            "POST /elsewhere HTTP/1.1\r\nHost: t\r\n",
            "PUT /post HTTP/1.1\r\nHost: t\r\n",
            "POST /post HTTP/1.1\r\nHost: t\r\nContent-Type: text/xml\r\n",
            "POST /post HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n",
        ]),
        declared in prop::option::of(0usize..300),
        body in jsonish(),
        again in any::<bool>(),
    ) {
        let mut req = head.as_bytes().to_vec();
        let len = declared.unwrap_or(body.len());
        req.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
        req.extend_from_slice(&body);
        if again {
            let second = req.clone();
            req.extend(second);
        }
        http::check(&req);
    }
}
