//! An independent reference for what a body must decode to, written from the
//! rules in `src/decode/mod.rs`'s module documentation on top of serde_json
//! rather than simd-json: which bodies are refused, and the exact text of each
//! item of an accepted one.

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
    /// The items' own texts, in order.
    Items(Vec<&'a str>),
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
    for doc in de.into_iter::<&RawValue>() {
        let Ok(doc) = doc else {
            return Expect::Refused("not JSON");
        };
        // Skipping over a value does not check `\u` escapes for surrogates;
        // decoding it does.
        if super::parse(doc.get().as_bytes()).is_err() {
            return Expect::Refused("invalid string escape");
        }
        if let Err(why) = document(doc.get(), &mut items) {
            return Expect::Refused(why);
        }
    }
    Expect::Items(items)
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

fn document<'a>(doc: &'a str, items: &mut Vec<&'a str>) -> Result<(), &'static str> {
    match doc.as_bytes().first() {
        Some(b'[') => {
            items.extend(array(doc));
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
                    items.extend(array(l));
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
    /// serde_json lends a key straight from the text only when it has no escapes.
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = (String, bool);
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Key {
        type Value = (String, bool);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok((v.to_owned(), true))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok((v.to_owned(), false))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    (&mut de)
        .deserialize_map(Members)
        .expect("an object that serde_json already skipped over")
}
