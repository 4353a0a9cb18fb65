//! Validation of one JSON text and the byte offsets of its structural tokens.
//!
//! simd-json does the work: its stage 1 finds every structural character
//! (`{ } [ ] : ,`, the opening quote of each string and the first byte of each
//! number or literal) and its stage 2 checks the grammar, the UTF-8 and the
//! escapes. The tape it builds is thrown away: what the rest of `decode` needs is
//! the list of structural offsets, which lets it slice items out of the request
//! body and find the fields it routes on without building a value tree.
//!
//! simd-json refuses numbers it cannot represent as `f64` (`1e400`), although they
//! are valid JSON (RFC 8259 §6 leaves range to implementations). Such a text is
//! validated again by serde_json, which skips numbers without converting them, and
//! its offsets and nesting depth are found by a plain byte scanner (serde_json
//! skips values without a depth limit, so [`MAX_DEPTH`] is enforced there).

use std::cell::RefCell;

use serde::Deserialize;
use serde::de::IgnoredAny;
use simd_json::{Buffers, INPUT_PADDING, Tape, fill_tape_padded};

/// Deepest nesting of arrays and objects accepted (simd-json's own default).
pub const MAX_DEPTH: usize = 1024;

/// Reused buffers larger than this are released after a parse, so that one big
/// request does not pin its memory on a worker thread for good.
const KEEP_BUFFER_BYTES: usize = 4 << 20;

/// Why a JSON text was refused: a small value, so the hot path does not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset (from the start of the request body) near which the fault lies.
    pub offset: usize,
    /// What is wrong, in a few words.
    pub what: &'static str,
}

struct Parser {
    buffers: Buffers,
    scratch: Vec<u8>,
    tape: Tape<'static>,
}

thread_local! {
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

/// Validates `text` as one JSON text and appends the offsets of its structural
/// tokens, each plus `base`, to `out`.
///
/// # Errors
///
/// A [`JsonError`] whose offset is relative to `base` when `text` is not exactly
/// one valid JSON text (RFC 8259) in UTF-8, or nests deeper than [`MAX_DEPTH`].
/// `out` then holds the offsets simd-json's stage 1 found before stage 2
/// refused the text, which show where the texts of a JSON-lines body begin.
pub(crate) fn index(text: &[u8], base: usize, out: &mut Vec<u32>) -> Result<(), JsonError> {
    PARSER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let parser = slot.get_or_insert_with(|| Parser {
            buffers: Buffers::new(64 << 10),
            scratch: Vec::new(),
            tape: Tape::null(),
        });
        let result = parser.index(text, base, out);
        if parser.scratch.capacity() > KEEP_BUFFER_BYTES {
            *slot = None;
        }
        result
    })
}

impl Parser {
    fn index(&mut self, text: &[u8], base: usize, out: &mut Vec<u32>) -> Result<(), JsonError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(text);
        self.scratch.resize(text.len() + INPUT_PADDING, 0);
        let mut tape = std::mem::replace(&mut self.tape, Tape::null()).reset();
        let parsed = fill_tape_padded(&mut self.scratch, text.len(), &mut self.buffers, &mut tape);
        self.tape = tape.reset();
        match parsed {
            Ok(()) => {
                let b = base as u32;
                out.extend(self.buffers.structural_indexes().iter().map(|&i| i + b));
                Ok(())
            }
            Err(e) => {
                let refused = if *e.error() == simd_json::ErrorType::InvalidNumber {
                    fallback(text, base, out)
                } else {
                    Err(JsonError {
                        offset: base + locate(text).unwrap_or(e.index().min(text.len())),
                        what: describe(e.error()),
                    })
                };
                if refused.is_err() {
                    let b = base as u32;
                    out.extend(self.buffers.structural_indexes().iter().map(|&i| i + b));
                }
                refused
            }
        }
    }
}

/// Where serde_json finds the fault in `text`, as a byte offset: simd-json
/// often reports offset 0. Only on the error path.
fn locate(text: &[u8]) -> Option<usize> {
    if let Err(e) = std::str::from_utf8(text) {
        return Some(e.valid_up_to());
    }
    let e = serde_json::from_slice::<IgnoredAny>(text).err()?;
    let line_start: usize = text
        .split_inclusive(|&b| b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(<[u8]>::len)
        .sum();
    Some((line_start + e.column().saturating_sub(1)).min(text.len()))
}

fn describe(kind: &simd_json::ErrorType) -> &'static str {
    use simd_json::ErrorType as E;
    match kind {
        E::Eof => "unexpected end of input",
        E::InvalidUtf8 => "invalid UTF-8",
        E::InvalidEscape | E::InvalidUnicodeEscape | E::InvalidUnicodeCodepoint => {
            "invalid string escape"
        }
        E::InvalidNumber | E::InvalidExponent => "invalid number",
        E::TrailingData => "data after the JSON value",
        E::DepthLimitExceeded => "nested too deeply",
        _ => "invalid JSON syntax",
    }
}

/// Validates with serde_json (numbers are checked for syntax, not range) and finds
/// the structural offsets with a byte scanner.
fn fallback(text: &[u8], base: usize, out: &mut Vec<u32>) -> Result<(), JsonError> {
    let invalid = |what| JsonError { offset: base, what };
    let text_str = std::str::from_utf8(text).map_err(|e| JsonError {
        offset: base + e.valid_up_to(),
        what: "invalid UTF-8",
    })?;
    let mut de = serde_json::Deserializer::from_str(text_str);
    IgnoredAny::deserialize(&mut de).map_err(|_| invalid("invalid JSON syntax"))?;
    de.end().map_err(|_| invalid("data after the JSON value"))?;
    let from = out.len();
    if scan(text, base, out) > MAX_DEPTH {
        out.truncate(from);
        return Err(invalid("nested too deeply"));
    }
    Ok(())
}

/// Structural offsets of a text already known to be valid JSON, found byte by
/// byte: the same set that simd-json's stage 1 reports. Returns the deepest
/// nesting of arrays and objects, which serde_json's skipping does not limit.
fn scan(text: &[u8], base: usize, out: &mut Vec<u32>) -> usize {
    let (mut i, mut depth, mut deepest) = (0, 0usize, 0);
    while i < text.len() {
        match text[i] {
            b'{' | b'}' | b'[' | b']' | b':' | b',' => {
                match text[i] {
                    b'{' | b'[' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                out.push((base + i) as u32);
                i += 1;
            }
            b'"' => {
                out.push((base + i) as u32);
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                out.push((base + i) as u32);
                while i < text.len()
                    && !matches!(
                        text[i],
                        b'{' | b'}'
                            | b'['
                            | b']'
                            | b':'
                            | b','
                            | b'"'
                            | b' '
                            | b'\t'
                            | b'\n'
                            | b'\r'
                    )
                {
                    i += 1;
                }
            }
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(text: &str) -> Result<Vec<u32>, JsonError> {
        let mut out = Vec::new();
        index(text.as_bytes(), 0, &mut out).map(|()| out)
    }

    #[test]
    fn scanner_agrees_with_simd_json() {
        for text in [
            r#"{"a": [1, "x y", true ,null], "b":{}}"#,
            r#"[ "a\"b\\", -1.5e3 , {"k" : "v"} ]"#,
            r#"  "just a string"  "#,
        ] {
            let mut scanned = Vec::new();
            scan(text.as_bytes(), 0, &mut scanned);
            assert_eq!(offsets(text).unwrap(), scanned, "{text}");
        }
    }

    #[test]
    fn numbers_out_of_f64_range_are_valid_json() {
        assert_eq!(
            offsets(r#"{"n":1e400,"m":123456789012345678901234567890}"#).unwrap(),
            vec![0, 1, 4, 5, 10, 11, 14, 15, 45]
        );
        assert_eq!(offsets("[1e400,").unwrap_err().what, "invalid JSON syntax");
    }

    #[test]
    fn numbers_out_of_f64_range_do_not_lift_the_depth_limit() {
        // The number comes first, so simd-json refuses it before it sees the depth.
        let nested = |levels: usize, leaf: &str| {
            let inner = levels - 1;
            format!("[{leaf},{}{}]", "[".repeat(inner), "]".repeat(inner))
        };
        for leaf in ["1", "1e400"] {
            assert!(offsets(&nested(MAX_DEPTH, leaf)).is_ok(), "{leaf}");
            assert_eq!(
                offsets(&nested(MAX_DEPTH + 1, leaf)).unwrap_err().what,
                "nested too deeply",
                "{leaf}"
            );
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(
            offsets("{\"a\":\"x\ny\"}").unwrap_err().what,
            "invalid JSON syntax"
        );
        assert_eq!(offsets("[1] [2]").unwrap_err().what, "invalid JSON syntax");
        assert!(offsets("").is_err());
        assert!(offsets(&"[".repeat(MAX_DEPTH + 1)).is_err());
    }
}
