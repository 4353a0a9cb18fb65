//! An independent reference for what a body must decode to, written from the
//! rules in `src/decode/mod.rs`'s module documentation on top of serde_json
//! rather than simd-json: how invalid UTF-8 is repaired, which bodies are
//! refused, and the exact text of each item of an accepted one.

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::is_ws;

/// The forwarder's nesting limit (`decode::MAX_DEPTH`).
const MAX_DEPTH: usize = kube_audit_forwarder::decode::MAX_DEPTH;

/// What a body must decode to.
#[derive(Debug)]
pub(crate) enum Expect<'a> {
    /// Only whitespace (after an optional BOM).
    Empty,
    /// Not JSON, or JSON that is neither events nor an EventList.
    Refused(#[allow(dead_code, reason = "shown in failure messages")] &'static str),
    /// The texts of the items that are objects, in order, and how many items
    /// were left out for not being objects.
    Items(Vec<&'a str>, usize),
}

/// `body` as Go's decoder reads it: each byte that does not start a valid
/// UTF-8 sequence (Go's `utf8.DecodeRune` giving `RuneError` of size 1)
/// replaced by U+FFFD; with the offsets of the replacements. Written from
/// Go's table of valid sequences rather than with `std::str::from_utf8`.
pub(crate) fn go_utf8(body: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let cont = |i: usize, lo: u8, hi: u8| body.get(i).is_some_and(|b| (lo..=hi).contains(b));
    let (mut out, mut at, mut i) = (Vec::with_capacity(body.len()), Vec::new(), 0);
    while i < body.len() {
        let len = match body[i] {
            0x00..=0x7F => 1,
            0xC2..=0xDF if cont(i + 1, 0x80, 0xBF) => 2,
            0xE0 if cont(i + 1, 0xA0, 0xBF) && cont(i + 2, 0x80, 0xBF) => 3,
            0xE1..=0xEC | 0xEE..=0xEF if cont(i + 1, 0x80, 0xBF) && cont(i + 2, 0x80, 0xBF) => 3,
            0xED if cont(i + 1, 0x80, 0x9F) && cont(i + 2, 0x80, 0xBF) => 3,
            0xF0 if cont(i + 1, 0x90, 0xBF)
                && cont(i + 2, 0x80, 0xBF)
                && cont(i + 3, 0x80, 0xBF) =>
            {
                4
            }
            0xF1..=0xF3
                if cont(i + 1, 0x80, 0xBF)
                    && cont(i + 2, 0x80, 0xBF)
                    && cont(i + 3, 0x80, 0xBF) =>
            {
                4
            }
            0xF4 if cont(i + 1, 0x80, 0x8F)
                && cont(i + 2, 0x80, 0xBF)
                && cont(i + 3, 0x80, 0xBF) =>
            {
                4
            }
            _ => 0,
        };
        if len == 0 {
            at.push(out.len());
            out.extend_from_slice("\u{FFFD}".as_bytes());
            i += 1;
        } else {
            out.extend_from_slice(&body[i..i + len]);
            i += len;
        }
    }
    (out, at)
}

/// The reference split of `body`.
pub(crate) fn split(body: &[u8]) -> Expect<'_> {
    let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if text.iter().all(|&b| is_ws(b)) {
        return Expect::Empty;
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return Expect::Refused("not UTF-8");
    };
    if depth(text.as_bytes()) > MAX_DEPTH {
        return Expect::Refused("nested too deeply");
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let mut items = Vec::new();
    let mut not_objects = 0;
    // Skipping over a value checks the escapes but not that a `\u` surrogate
    // is paired, as Go's decoder accepts a lone one.
    for doc in de.into_iter::<&RawValue>() {
        let Ok(doc) = doc else {
            return Expect::Refused("not JSON");
        };
        if let Err(why) = document(doc.get(), &mut items, &mut not_objects) {
            return Expect::Refused(why);
        }
    }
    Expect::Items(items, not_objects)
}

/// The items of an array that are objects; the others counted in `not_objects`.
fn objects<'a>(text: &'a str, items: &mut Vec<&'a str>, not_objects: &mut usize) {
    for item in array(text) {
        if item.starts_with('{') {
            items.push(item);
        } else {
            *not_objects += 1;
        }
    }
}

/// Deepest nesting of arrays and objects in a text, brackets inside strings
/// left out.
fn depth(text: &[u8]) -> usize {
    let (mut d, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn document<'a>(
    doc: &'a str,
    items: &mut Vec<&'a str>,
    not_objects: &mut usize,
) -> Result<(), &'static str> {
    match doc.as_bytes().first() {
        Some(b'[') => {
            objects(doc, items, not_objects);
            Ok(())
        }
        Some(b'{') => {
            let mut list = None;
            let mut kind = None;
            let mut event = false;
            for (key, plain, value) in members(doc) {
                // The EventList's own keys match as Go's encoding/json matches
                // struct fields (escapes undone, ASCII case ignored: `Items`,
                // `it\u0065ms`); the Event fields that mark a bare Event match
                // only as written.
                if key.eq_ignore_ascii_case("items") {
                    list = Some(value.get());
                } else if key.eq_ignore_ascii_case("kind") {
                    kind = string_as_written(value.get());
                } else if plain
                    && matches!(key.as_str(), "auditID" | "stage" | "level" | "requestURI")
                {
                    event = true;
                }
            }
            match (list, kind) {
                (Some(l), _) if l.starts_with('[') => {
                    objects(l, items, not_objects);
                    Ok(())
                }
                (Some("null"), _) | (None, Some("EventList")) => Ok(()),
                (Some(_), _) => Err("items is not an array"),
                (None, Some("Event")) => {
                    items.push(doc);
                    Ok(())
                }
                (None, _) if event => {
                    items.push(doc);
                    Ok(())
                }
                (None, _) => Err("neither an EventList nor an Event"),
            }
        }
        _ => Err("a JSON string, number or literal"),
    }
}

/// The content of a JSON string as written, escapes kept; `None` if not a string.
fn string_as_written(raw: &str) -> Option<&str> {
    raw.strip_prefix('"')?.strip_suffix('"')
}

fn array(text: &str) -> Vec<&str> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    Vec::<&RawValue>::deserialize(&mut de)
        .expect("an array that serde_json already skipped over")
        .into_iter()
        .map(RawValue::get)
        .collect()
}

/// The members of an object in order, duplicates kept: key (unescaped),
/// whether the key was written without escapes, value text.
pub(crate) fn members(text: &str) -> Vec<(String, bool, &RawValue)> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, bool, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((key, plain)) = map.next_key_seed(Key)? {
                out.push((key, plain, map.next_value()?));
            }
            Ok(out)
        }
    }
    /// A key taken as its raw text, so that one holding a lone surrogate
    /// escape (valid JSON, which serde_json will not decode into a string)
    /// is read too: such an escape stands for U+FFFD here, as Go decodes
    /// it. Plain means written without escapes.
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = (String, bool);
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let raw = <&RawValue>::deserialize(d)?.get();
            let plain = !raw.contains('\\');
            let key = serde_json::from_str::<String>(raw).unwrap_or_else(|_| {
                serde_json::from_str(&lone_surrogates_replaced(raw)).unwrap_or_default()
            });
            Ok((key, plain))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    (&mut de)
        .deserialize_map(Members)
        .expect("an object that serde_json already skipped over")
}

/// `text` with each `\\uD800`–`\\uDFFF` escape that is not part of a pair
/// replaced by `\\uFFFD` (same length).
fn lone_surrogates_replaced(text: &str) -> String {
    let b = text.as_bytes();
    let hex = |i: usize| -> Option<u16> {
        let h = std::str::from_utf8(b.get(i..i + 4)?).ok()?;
        u16::from_str_radix(h, 16).ok()
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'u')
            && let Some(u) = hex(i + 2)
        {
            let high = (0xD800..0xDC00).contains(&u);
            let paired = high
                && b.get(i + 6) == Some(&b'\\')
                && b.get(i + 7) == Some(&b'u')
                && hex(i + 8).is_some_and(|l| (0xDC00..0xE000).contains(&l));
            if paired {
                out.push_str(&text[i..i + 12]);
                i += 12;
            } else if (0xD800..0xE000).contains(&u) {
                out.push_str("\\ufffd");
                i += 6;
            } else {
                out.push_str(&text[i..i + 6]);
                i += 6;
            }
            continue;
        }
        if b[i] == b'\\' {
            // Any other escape: copied with the character after it.
            let n = text[i + 1..].chars().next().map_or(0, char::len_utf8);
            out.push_str(&text[i..i + 1 + n]);
            i += 1 + n;
            continue;
        }
        let n = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + n]);
        i += n;
    }
    out
}
