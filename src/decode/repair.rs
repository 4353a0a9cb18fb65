//! Invalid UTF-8 in a body, replaced as Go's `encoding/json` replaces it when
//! it decodes a string: each byte that is not part of a valid UTF-8 sequence
//! becomes U+FFFD (`utf8.DecodeRune` returns `RuneError` with a size of 1).
//! The API server's own decoder would accept such an event, so one bad byte
//! must not cost the batch: the body is repaired, then decoded as usual. A
//! byte outside a string is a syntax error either way.

use bytes::BytesMut;

/// U+FFFD REPLACEMENT CHARACTER in UTF-8.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// `body` with each invalid byte replaced by U+FFFD, with `padding` bytes of
/// spare capacity, and the offset in it of each replacement (ascending);
/// `None` when `body` is valid UTF-8. The result is at most three times the
/// size of `body`.
pub(crate) fn repair(body: &[u8], padding: usize) -> Option<(BytesMut, Vec<usize>)> {
    let first = std::str::from_utf8(body).err()?;
    let mut out = BytesMut::with_capacity(body.len() + 2 * 16 + padding);
    let mut at = Vec::new();
    let mut rest = body;
    let mut error = Some(first);
    while let Some(e) = error {
        let good = e.valid_up_to();
        let bad = e.error_len().unwrap_or(rest.len() - good);
        out.extend_from_slice(&rest[..good]);
        for _ in 0..bad {
            at.push(out.len());
            out.extend_from_slice(REPLACEMENT);
        }
        rest = &rest[good + bad..];
        error = std::str::from_utf8(rest).err();
    }
    out.extend_from_slice(rest);
    Some((out, at))
}

/// How many of `at` (ascending offsets) lie in `range`.
pub(crate) fn count_in(at: &[usize], range: std::ops::Range<usize>) -> usize {
    let from = at.partition_point(|&p| p < range.start);
    let to = at.partition_point(|&p| p < range.end);
    to - from
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_invalid_byte_becomes_one_replacement_as_in_go() {
        let (out, at) = repair(b"a\xffb\xe2\x82c\xed\xa0\x80", 0).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}c\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        assert_eq!(at, [1, 5, 8, 12, 15, 18]);
        assert_eq!(count_in(&at, 0..5), 1);
        assert_eq!(count_in(&at, 5..12), 2);
        assert!(repair("é ok".as_bytes(), 0).is_none());
        let (out, _) = repair(b"ends in \xe2\x82", 0).unwrap();
        assert_eq!(&out[..], "ends in \u{FFFD}\u{FFFD}".as_bytes());
    }
}
