//! Properties of the decode and of the HTTP edge, asserted by panicking.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/`) and by the main test
//! suite, which includes this folder by path: it uses nothing but the forwarder
//! library and crates the forwarder's own tests already depend on.
//!
//! - [`body`]: any bytes as a request body, with and without gzip;
//! - [`eventlist`]: structure-aware EventLists whose items must come out exactly;
//! - [`http`]: any bytes on a connection to the HTTP source.

pub mod body;
pub mod eventlist;
pub mod http;
mod oracle;

/// Most bytes of live allocations that decoding a body of `len` bytes may add,
/// beyond what was allocated before: the parser's reusable buffers, simd-json's
/// tape (one node per value), the structural offsets (two copies of four bytes
/// per token) and the events with their routing fields (about 100 bytes each,
/// an event being as small as two bytes of body, `1,`).
pub fn memory_bound(len: usize) -> usize {
    (4 << 20) + 128 * len
}

/// JSON whitespace (RFC 8259 §2).
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `text` (one valid JSON value) with the whitespace outside strings removed:
/// what the forwarder must write for an item, byte for byte. Written without
/// the decoder's structural index, by following string quotes and escapes.
fn compact(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if is_ws(b) {
            continue;
        }
        out.push(b);
    }
    out
}

/// Parses one JSON text with no depth limit (the forwarder allows 1024 levels;
/// serde_json's default stops at 128). Numbers keep their decimal text.
fn parse(text: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let v = serde_json::Value::deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// [`parse`] of a text whose `\u` escapes of lone surrogates are first each
/// written `\uFFFD`, as Go decodes them: serde_json refuses a lone surrogate,
/// which is valid JSON grammar and which Go's decoder (and so the forwarder)
/// accepts. The same as [`parse`] for every text serde_json accepts.
fn parse_lenient(text: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    let unit = |i: usize| {
        text.get(i + 2..i + 6)
            .filter(|_| text.get(i..i + 2) == Some(b"\\u"))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut i) = (false, 0);
    while i < text.len() {
        let b = text[i];
        if in_string && b == b'\\' {
            let paired = unit(i).is_some_and(|u| (0xD800..=0xDBFF).contains(&u))
                && unit(i + 6).is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
            if paired {
                out.extend_from_slice(&text[i..i + 12]);
                i += 12;
            } else if unit(i).is_some_and(|u| (0xD800..=0xDFFF).contains(&u)) {
                out.extend_from_slice(b"\\uFFFD");
                i += 6;
            } else {
                out.extend_from_slice(&text[i..(i + 2).min(text.len())]);
                i += 2;
            }
            continue;
        }
        if b == b'"' {
            in_string = !in_string;
        }
        out.push(b);
        i += 1;
    }
    parse(&out)
}

/// Asserts what every event line must be: UTF-8, one JSON value (lone
/// surrogate escapes allowed), no raw newline or carriage return, so that a
/// JSON-lines sink writes it as one line.
fn assert_line(raw: &[u8]) -> serde_json::Value {
    assert!(
        std::str::from_utf8(raw).is_ok(),
        "event is not UTF-8: {raw:?}"
    );
    assert!(
        !raw.contains(&b'\n') && !raw.contains(&b'\r'),
        "event holds a raw line break: {raw:?}"
    );
    parse_lenient(raw).unwrap_or_else(|e| {
        panic!(
            "event is not one JSON value ({e}): {:?}",
            String::from_utf8_lossy(raw)
        )
    })
}

/// Runs `f` on a thread with a large stack, as deep JSON needs when checked
/// with serde_json, and passes its panic on.
pub fn with_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, f)
            .expect("spawn a checking thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
