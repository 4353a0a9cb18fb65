//! Byte-level navigation and splicing of JSON text that the decoder has
//! already validated (an event's `raw` bytes, or the JSON document inside a
//! `last-applied-configuration` string).
//!
//! Nothing is parsed into a tree: a value is located by its byte range, and a
//! change is an edit of a range, so every byte outside an edit (key order,
//! numbers, escapes) is kept. Every function returns `None` rather than
//! panicking on text that is not valid JSON.

use std::borrow::Cow;
use std::ops::Range;

/// Index of the first byte at or after `i` that is not JSON whitespace.
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// End (exclusive) of the string whose opening quote is at `i`. Most
/// strings of an event are short: a plain loop finds their end sooner than a
/// vector search could start, which takes over for long ones until the first
/// escape. A string with escapes is often full of them (JSON inside a string,
/// every quote escaped), so the plain loop finishes it.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let short = (i + 24).min(b.len());
    while j < short {
        match b[j] {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
    if b[k] == b'"' {
        return Some(k + 1);
    }
    j = k + 2;
    while let Some(&c) = b.get(j) {
        match c {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
    None
}

/// End (exclusive) of the object or array opening at `i`. Counting only the
/// container's own bracket pair is enough in valid JSON, once strings are
/// skipped.
fn container_end(b: &[u8], i: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while let Some(&c) = b.get(j) {
        if c == b'"' {
            j = string_end(b, j)?;
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(j + 1);
            }
        }
        j += 1;
    }
    None
}

/// End (exclusive) of the value starting at `i`.
pub(crate) fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' => container_end(b, i, b'{', b'}'),
        b'[' => container_end(b, i, b'[', b']'),
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// One member of an object.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The opening quote of the key.
    pub(crate) start: usize,
    /// The key's content, between its quotes, escapes as written.
    pub(crate) key: Range<usize>,
    /// The value.
    pub(crate) value: Range<usize>,
}

impl Member {
    /// Whether the key is `name` (keys with escapes never match).
    pub(crate) fn is(&self, b: &[u8], name: &[u8]) -> bool {
        b.get(self.key.clone()) == Some(name)
    }
}

/// The members of the object whose value range is `obj`, in order. Empty when
/// `obj` is not an object; stops at the first malformed member.
pub(crate) fn members(b: &[u8], obj: Range<usize>) -> Members<'_> {
    let at = match b.get(obj.start) {
        Some(b'{') => Some(obj.start + 1),
        _ => None,
    };
    Members { b, at }
}

/// Iterator of [`members`].
pub(crate) struct Members<'a> {
    b: &'a [u8],
    at: Option<usize>,
}

impl Iterator for Members<'_> {
    type Item = Member;

    fn next(&mut self) -> Option<Member> {
        let b = self.b;
        let i = skip_ws(b, self.at.take()?);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let colon = skip_ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return None;
        }
        let v = skip_ws(b, colon + 1);
        let v_end = value_end(b, v)?;
        let after = skip_ws(b, v_end);
        if b.get(after) == Some(&b',') {
            self.at = Some(after + 1);
        }
        Some(Member {
            start: i,
            key: i + 1..key_end - 1,
            value: v..v_end,
        })
    }
}

/// The value ranges of the elements of the array at `arr`; empty when it is
/// not an array.
pub(crate) fn elements(b: &[u8], arr: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    if b.get(arr.start) != Some(&b'[') {
        return out;
    }
    let mut i = skip_ws(b, arr.start + 1);
    while i < arr.end && b.get(i) != Some(&b']') {
        let Some(end) = value_end(b, i) else {
            break;
        };
        out.push(i..end);
        i = skip_ws(b, end);
        if b.get(i) == Some(&b',') {
            i = skip_ws(b, i + 1);
        } else {
            break;
        }
    }
    out
}

/// Calls `f` with the content of each string element of the JSON array
/// `arr` (its whole text), escapes resolved, until `f` returns `false`.
/// Elements that are not strings are passed over. Allocates only for a
/// string with escapes.
pub(crate) fn for_each_string<'a>(arr: &'a [u8], mut f: impl FnMut(Cow<'a, [u8]>) -> bool) {
    if arr.first() != Some(&b'[') {
        return;
    }
    let mut i = skip_ws(arr, 1);
    while let Some(&c) = arr.get(i) {
        if c == b']' {
            return;
        }
        // A string without escapes ends at the first quote after it opens:
        // one search finds both its end and that it needs no unescaping.
        let plain = (c == b'"')
            .then(|| memchr::memchr2(b'"', b'\\', &arr[i + 1..]))
            .flatten()
            .filter(|&k| arr[i + 1 + k] == b'"');
        let end = match plain {
            Some(k) => {
                if !f(Cow::Borrowed(&arr[i + 1..i + 1 + k])) {
                    return;
                }
                i + k + 2
            }
            None => {
                let Some(end) = value_end(arr, i) else {
                    return;
                };
                if c == b'"' {
                    let text = match str_at(arr, i..end) {
                        Some(s) => Cow::Owned(s.into_owned().into_bytes()),
                        None => Cow::Borrowed(&b""[..]),
                    };
                    if !f(text) {
                        return;
                    }
                }
                end
            }
        };
        i = skip_ws(arr, end);
        if arr.get(i) != Some(&b',') {
            return;
        }
        i = skip_ws(arr, i + 1);
    }
}

/// The value of member `name` of the object at `obj`.
pub(crate) fn get(b: &[u8], obj: Range<usize>, name: &[u8]) -> Option<Range<usize>> {
    members(b, obj).find(|m| m.is(b, name)).map(|m| m.value)
}

/// The value at `path` (member names) below the object at `obj`.
pub(crate) fn get_path(b: &[u8], obj: Range<usize>, path: &[&[u8]]) -> Option<Range<usize>> {
    path.iter().try_fold(obj, |at, name| get(b, at, name))
}

/// The text of the string value at `r` (escapes resolved); `None` when it is
/// not a string.
pub(crate) fn str_at(b: &[u8], r: Range<usize>) -> Option<Cow<'_, str>> {
    let quoted = b.get(r)?;
    let inner = quoted.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(quoted)
        .ok()
        .map(Cow::Owned)
}

/// A replacement of a byte range (an insertion when the range is empty).
#[derive(Debug, Clone)]
pub(crate) struct Edit {
    pub(crate) range: Range<usize>,
    pub(crate) with: Vec<u8>,
}

/// Writes `b[from..to]` with `edits` applied to `out`. Edits must lie in
/// `from..to`; they are applied in order of position, and one that overlaps an
/// earlier one (a redaction inside a value already replaced whole) is
/// skipped. Returns how many were applied.
pub(crate) fn splice(
    b: &[u8],
    from: usize,
    to: usize,
    edits: &mut [Edit],
    out: &mut Vec<u8>,
) -> usize {
    edits.sort_by(|x, y| {
        x.range
            .start
            .cmp(&y.range.start)
            .then(y.range.end.cmp(&x.range.end))
    });
    let mut at = from;
    let mut applied = 0;
    for e in edits.iter() {
        if e.range.start < at || e.range.end > to || e.range.start > e.range.end {
            continue;
        }
        out.extend_from_slice(&b[at..e.range.start]);
        out.extend_from_slice(&e.with);
        at = e.range.end;
        applied += 1;
    }
    out.extend_from_slice(b.get(at..to).unwrap_or_default());
    applied
}

/// `s` as a JSON string with its quotes.
pub(crate) fn quote(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_values_are_found_with_nested_strings_and_brackets() {
        let b = br#"{"a":"x\"}]","b":{"c":[1,{"d":"}"}]},"e":-1.5e3 , "f" : null}"#;
        let m: Vec<_> = members(b, 0..b.len()).collect();
        let keys: Vec<_> = m.iter().map(|m| &b[m.key.clone()]).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"e", b"f"]);
        assert_eq!(&b[m[1].value.clone()], br#"{"c":[1,{"d":"}"}]}"#);
        assert_eq!(&b[m[2].value.clone()], b"-1.5e3");
        assert_eq!(
            get_path(b, 0..b.len(), &[b"b", b"c"]).map(|r| &b[r]),
            Some(&br#"[1,{"d":"}"}]"#[..])
        );
        let arr = get_path(b, 0..b.len(), &[b"b", b"c"]).unwrap();
        assert_eq!(elements(b, arr).len(), 2);
        assert_eq!(str_at(b, m[0].value.clone()).as_deref(), Some("x\"}]"));
    }

    #[test]
    fn malformed_text_ends_the_walk_without_panicking() {
        for b in [
            &b"{\"a\""[..],
            b"{\"a\":",
            b"{\"a\":\"x",
            b"[1,",
            b"{",
            b"\"\\",
        ] {
            let _ = members(b, 0..b.len()).count();
            let _ = elements(b, 0..b.len());
            let _ = value_end(b, 0);
        }
    }

    #[test]
    fn overlapping_edits_keep_the_outer_one() {
        let b = br#"{"a":{"b":1}}"#;
        let mut edits = vec![
            Edit {
                range: 10..11,
                with: b"2".to_vec(),
            },
            Edit {
                range: 5..12,
                with: b"0".to_vec(),
            },
        ];
        let mut out = Vec::new();
        assert_eq!(splice(b, 0, b.len(), &mut edits, &mut out), 1);
        assert_eq!(out, br#"{"a":0}"#);
    }
}
