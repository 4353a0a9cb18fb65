//! Validation of a body of JSON texts and the byte offsets of their structural
//! tokens, without building a value tree.
//!
//! simd-json's stage 1 does the byte-level work with SIMD: it validates the
//! UTF-8, finds every string (quotes not escaped by an odd run of backslashes),
//! refuses control characters inside strings, and lists the offset of every
//! structural character: `{ } [ ] : ,`, the opening quote of each string and
//! the first byte of each number or literal ([`Buffers::structural_indexes`]).
//! Its stage 2, which builds a tape with every string unescaped and every
//! number converted, is not what a forwarder needs: the events leave as the
//! bytes they arrived as. So stage 2 is stopped at its first bracket (a depth
//! limit of 0) and one pass over the structural offsets here checks the rest of
//! RFC 8259: the grammar (§2–5), the literals (§3) and the number syntax (§6;
//! the range is left to implementations, so `1e400` is accepted as Go's
//! `json.RawMessage` accepts it). The same pass matches every bracket, so
//! that skipping a value later costs one lookup, and notes where each JSON
//! text of a JSON-lines body ends. A last pass over the bytes checks the
//! string escapes (§7; a `\u` escape of a lone surrogate is valid grammar,
//! and Go's decoder accepts it, so it is accepted and kept as written).

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use serde::de::IgnoredAny;
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Tape, fill_tape_padded};
use wide::u8x16;

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

/// The structure of a validated body: its tokens and where its texts end.
pub(crate) struct Index<'a> {
    /// Offset of each structural token, relative to `base`.
    pub(crate) idx: &'a [u32],
    /// The first byte of each token, in the same order.
    pub(crate) kinds: &'a [u8],
    /// Added to every offset in `idx` to make it an offset in the body.
    pub(crate) base: usize,
    /// For each token that opens an object or array, the token after the
    /// value it starts (any value for other tokens; may be longer than `idx`).
    pub(crate) next: &'a [u32],
    /// The token after each JSON text, in order (the last is `idx.len()`).
    pub(crate) docs: &'a [u32],
    /// Whether whitespace sits before any token.
    pub(crate) any_ws: bool,
}

/// Space a buffer must have after the text for [`with_index_in_place`]: the
/// reads of simd-json's stage 1 run this far past the end (its
/// `INPUT_PADDING`).
pub(crate) const PADDING: usize = INPUT_PADDING;

/// A padded copy of the text, for texts that arrive borrowed.
#[derive(Default)]
struct Scratch {
    input: Vec<u8>,
    work: Work,
}

/// The buffers one validation fills, reused from one request to the next.
#[derive(Default)]
struct Work {
    buffers: Option<Buffers>,
    tape: Option<Tape<'static>>,
    kinds: Vec<u8>,
    next: Vec<u32>,
    stack: Vec<u32>,
    docs: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Validates `text` (which starts at byte `base` of the body) as one or more JSON
/// texts separated by optional whitespace, and hands its [`Index`] to `f`.
/// The text is copied once, into a padded buffer kept for the next call.
///
/// # Errors
///
/// `f` gets a [`JsonError`], with an offset in the body, when `text` is not a
/// sequence of valid JSON texts (RFC 8259) in UTF-8 or nests deeper than
/// [`MAX_DEPTH`].
pub(crate) fn with_index<R>(
    text: &[u8],
    base: usize,
    f: impl FnOnce(Result<Index<'_>, JsonError>) -> R,
) -> R {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let Scratch { input, work } = &mut *guard;
        input.clear();
        input.extend_from_slice(text);
        input.resize(text.len() + PADDING, 0);
        let out = f(work.index(input, text.len(), base));
        if text.len() > KEEP_BUFFER_BYTES {
            *guard = Scratch::default();
        }
        out
    })
}

/// Like [`with_index`] for a body held in `buf` (text from byte `base` on,
/// which must open an object or array), validated where it lies: `buf` is
/// grown by [`PADDING`] bytes (without a copy when it has the spare capacity),
/// then cut back and frozen, and `f` gets the frozen body with the index.
/// Returns the frozen body and what `f` returned.
///
/// # Errors
///
/// As [`with_index`].
pub(crate) fn with_index_in_place<R>(
    mut buf: BytesMut,
    base: usize,
    f: impl FnOnce(&Bytes, Result<Index<'_>, JsonError>) -> R,
) -> (Bytes, R) {
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let len = buf.len();
        buf.resize(len + PADDING, 0);
        // With an object or array first, stage 2 stops at that bracket, so
        // nothing is written into the text (see `Work::index`).
        let result = guard.work.index(&mut buf[base..], len - base, base);
        buf.truncate(len);
        let body = buf.freeze();
        let out = f(&body, result);
        // simd-json's buffers grow with the text, token list or not.
        if len > KEEP_BUFFER_BYTES {
            *guard = Scratch::default();
        }
        (body, out)
    })
}

impl Work {
    /// Validates `padded[..len]` (`padded` has [`PADDING`] more bytes, of any
    /// value). Stage 2 runs with a depth limit of 0, so for a text that opens
    /// with a bracket it stops there, having written nothing; a text that
    /// opens with a scalar goes through stage 2, which may unescape strings
    /// in place (such a text is refused by the caller anyway).
    fn index(
        &mut self,
        padded: &mut [u8],
        len: usize,
        base: usize,
    ) -> Result<Index<'_>, JsonError> {
        let fail = |offset: usize, what| JsonError {
            offset: base + offset,
            what,
        };
        if len > MAX_TEXT {
            return Err(fail(0, "request body too large to index"));
        }
        let buffers = self
            .buffers
            .get_or_insert_with(|| Buffers::with_max_depth(64 << 10, 0));
        let mut tape = self.tape.take().unwrap_or_else(Tape::null).reset();
        let parsed = fill_tape_padded(padded, len, buffers, &mut tape);
        let stage1_ok = match &parsed {
            Ok(()) => true,
            Err(e) => *e.error() == ErrorType::DepthLimitExceeded,
        };
        let stage1_error = parsed.err().map(|e| describe(e.error()));
        self.tape = Some(tape.reset());
        let text = &padded[..len];
        if !stage1_ok {
            let what = match std::str::from_utf8(text) {
                Err(_) => INVALID_UTF8,
                Ok(_) => stage1_error.unwrap_or("invalid JSON syntax"),
            };
            return Err(fail(locate(text).unwrap_or(len), what));
        }
        let idx = buffers.structural_indexes();
        let any_ws = token_kinds(text, idx, &mut self.kinds);
        validate(
            text,
            idx,
            &self.kinds,
            &mut self.next,
            &mut self.stack,
            &mut self.docs,
        )
        .and_then(|()| escapes(text))
        .map_err(|(offset, what)| fail(offset, what))?;
        Ok(Index {
            idx,
            kinds: &self.kinds,
            base,
            next: &self.next,
            docs: &self.docs,
            any_ws,
        })
    }
}

/// JSON whitespace (RFC 8259 §2).
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where the grammar is, between two tokens.
#[derive(Clone, Copy)]
enum State {
    /// A value starts at the next token.
    Value,
    /// A member (key, colon, value) of an object starts at the next token.
    Member,
    /// A value has just ended: next is `,`, a closing bracket, or (at the top
    /// level) the next text or the end.
    After,
}

/// The first bytes of the four tokens of a member `"key":"value",`.
const KEY_STRING_COMMA: u32 = u32::from_le_bytes(*b"\":\",");
/// The first bytes of the four tokens of a last member `"key":"value"}`.
const KEY_STRING_CLOSE: u32 = u32::from_le_bytes(*b"\":\"}");

const SYNTAX: &str = "invalid JSON syntax";
/// [`JsonError::what`] of a text that is not UTF-8.
pub(crate) const INVALID_UTF8: &str = "invalid UTF-8";
const END: &str = "unexpected end of input";

/// Marks a bracket on the grammar's stack as an object's (`{`); the rest of
/// the entry is the bracket's token number, below 2^31 since a text is
/// shorter than [`MAX_TEXT`].
const OBJECT: u32 = 1 << 31;

/// Longest text indexed, in bytes: token numbers and offsets fit in 31 bits.
pub(crate) const MAX_TEXT: usize = (1 << 31) - 1;

/// Fills `kinds` with the first byte of each token of `text` (its kind: a
/// bracket, `:`, `,`, `"` for a string, the first byte of a number or
/// literal) and returns whether whitespace sits just before any token but
/// the first. In a text that passes the grammar the byte before a token is a
/// bracket, a colon, a comma, a closing quote, the last byte of a number or
/// literal, or whitespace, and only whitespace is at or below `b' '`. One
/// tight pass of independent loads, eight tokens at a time, so that the
/// grammar then reads one dense byte per token.
#[inline(never)]
fn token_kinds(text: &[u8], idx: &[u32], kinds: &mut Vec<u8>) -> bool {
    kinds.clear();
    kinds.reserve(idx.len());
    let byte = |p: usize| text.get(p).copied().unwrap_or(0);
    let Some((&first, rest)) = idx.split_first() else {
        return false;
    };
    kinds.push(byte(first as usize));
    // The lowest byte found just before a token; every token after the
    // first starts past offset 0.
    let mut low = u8::MAX;
    let mut chunks = rest.chunks_exact(8);
    for chunk in &mut chunks {
        let mut k = [0u8; 8];
        for (k, &p) in k.iter_mut().zip(chunk) {
            let p = p as usize;
            *k = byte(p);
            low = low.min(byte(p.wrapping_sub(1)));
        }
        kinds.extend_from_slice(&k);
    }
    for &p in chunks.remainder() {
        let p = p as usize;
        kinds.push(byte(p));
        low = low.min(byte(p.wrapping_sub(1)));
    }
    low <= b' '
}

/// Checks the tokens `idx` of `text` (already through simd-json's stage 1),
/// whose first bytes are `kinds`, against the JSON grammar; fills `next`
/// (the token after each value, for the tokens that open an object or array)
/// and `docs` (the token after each text). Returns the offset and nature of
/// the first fault.
///
/// The loop follows the shape of the data rather than one token at a time: the
/// members of an object whose values are strings, the bulk of an audit event,
/// are checked key, colon, value and comma with one comparison of their kinds;
/// an object that is a member's value is entered, and left for the enclosing
/// object's next member, and an array of strings that is a member's value is
/// stepped over, without going through the general states.
/// Strings need no look here: stage 1 found each closed and free of control
/// characters, and [`escapes`] checks their escapes after the grammar.
#[inline(never)]
fn validate(
    text: &[u8],
    idx: &[u32],
    kinds: &[u8],
    next: &mut Vec<u32>,
    stack: &mut Vec<u32>,
    docs: &mut Vec<u32>,
) -> Result<(), (usize, &'static str)> {
    let n = idx.len();
    // Only the entries of opening tokens are read, and the grammar writes
    // each one before it accepts the text: the rest may hold anything, so the
    // buffer is grown but not cleared.
    if next.len() < n {
        next.resize(n, 0);
    }
    stack.clear();
    docs.clear();
    // Kind of token `t`; past the last token, 0.
    let kind = |t: usize| kinds.get(t).copied().unwrap_or(0);
    // Where token `t` starts; past the last token, the end of the text.
    let start_of = |t: usize| idx.get(t).map_or(text.len(), |&p| p as usize);
    let fault = |t: usize| {
        let p = start_of(t);
        if p >= text.len() {
            (p, END)
        } else {
            (p, SYNTAX)
        }
    };
    // For an array whose elements, from token `u` on, are all strings (one
    // at least): the token after its closing bracket.
    let strings_then_close = |mut u: usize| {
        while kind(u) == b'"' && kind(u + 1) == b',' {
            u += 2;
        }
        (kind(u) == b'"' && kind(u + 1) == b']').then_some(u + 2)
    };
    let mut t = 0;
    let mut state = State::Value;
    loop {
        match state {
            State::Value => {
                let c = kind(t);
                match c {
                    b'{' | b'[' => {
                        if stack.len() >= MAX_DEPTH {
                            return Err((start_of(t), "nested too deeply"));
                        }
                        if kind(t + 1) == c + 2 {
                            // `{}` or `[]` (`}` is `{` + 2, `]` is `[` + 2).
                            next[t] = t as u32 + 2;
                            t += 2;
                            state = State::After;
                        } else if c == b'{' {
                            stack.push(t as u32 | OBJECT);
                            t += 1;
                            state = State::Member;
                        } else {
                            stack.push(t as u32);
                            t += 1;
                        }
                        continue;
                    }
                    // The strings of an array (`"a","b"`), two tokens at a
                    // time.
                    b'"' if stack.last().is_some_and(|&open| open & OBJECT == 0)
                        && kind(t + 1) == b',' =>
                    {
                        t += 2;
                        continue;
                    }
                    _ => scalar(text, start_of(t), c, start_of(t + 1))?,
                }
                t += 1;
                state = State::After;
            }
            State::Member => loop {
                // The bulk of an audit event: `"key":"value",` (or `}` to
                // close).
                if let Some(&[k0, k1, k2, k3]) = kinds.get(t..t + 4) {
                    let word = u32::from_le_bytes([k0, k1, k2, k3]);
                    if word == KEY_STRING_COMMA {
                        t += 4;
                        continue;
                    }
                    // Closed here as well as by the `}` arm below: sending
                    // this case through that arm cost 4 % of the decode's
                    // time on Metadata batches (paired bench).
                    if word == KEY_STRING_CLOSE {
                        let open = stack.pop().unwrap_or_default() & !OBJECT;
                        next[open as usize] = t as u32 + 4;
                        t += 4;
                        // The next member of the enclosing object, if that
                        // is what follows.
                        if kind(t) == b',' && stack.last().is_some_and(|&o| o & OBJECT != 0) {
                            t += 1;
                            continue;
                        }
                        state = State::After;
                        break;
                    }
                }
                if kind(t) != b'"' {
                    return Err(fault(t));
                }
                if kind(t + 1) != b':' {
                    return Err(fault(t + 1));
                }
                let e = kind(t + 2);
                // An object that is not empty: its members follow.
                if e == b'{' && kind(t + 3) != b'}' {
                    if stack.len() >= MAX_DEPTH {
                        return Err((start_of(t + 2), "nested too deeply"));
                    }
                    stack.push((t + 2) as u32 | OBJECT);
                    t += 3;
                    continue;
                }
                if e == b'['
                    && let Some(end) = strings_then_close(t + 3)
                {
                    if stack.len() >= MAX_DEPTH {
                        return Err((start_of(t + 2), "nested too deeply"));
                    }
                    next[t + 2] = end as u32;
                    t = end;
                } else if matches!(e, b'{' | b'[') {
                    t += 2;
                    state = State::Value;
                    break;
                } else {
                    scalar(text, start_of(t + 2), e, start_of(t + 3))?;
                    t += 3;
                }
                match kind(t) {
                    b',' => t += 1,
                    b'}' => {
                        let open = stack.pop().unwrap_or_default() & !OBJECT;
                        next[open as usize] = t as u32 + 1;
                        t += 1;
                        if kind(t) == b',' && stack.last().is_some_and(|&o| o & OBJECT != 0) {
                            t += 1;
                            continue;
                        }
                        state = State::After;
                        break;
                    }
                    _ => return Err(fault(t)),
                }
            },
            State::After => {
                let Some(&open) = stack.last() else {
                    docs.push(t as u32);
                    if t >= n {
                        return Ok(());
                    }
                    state = State::Value;
                    continue;
                };
                let object = open & OBJECT != 0;
                match kind(t) {
                    b',' => {
                        state = if object { State::Member } else { State::Value };
                    }
                    b'}' if object => {
                        stack.pop();
                        next[(open & !OBJECT) as usize] = t as u32 + 1;
                    }
                    b']' if !object => {
                        stack.pop();
                        next[open as usize] = t as u32 + 1;
                    }
                    _ => return Err(fault(t)),
                }
                t += 1;
            }
        }
    }
}

/// Checks the scalar token at `p` whose first byte is `c`; the next token
/// starts at `end`.
#[inline(always)]
fn scalar(text: &[u8], p: usize, c: u8, end: usize) -> Result<(), (usize, &'static str)> {
    match c {
        // Stage 1 found the string closed and free of control characters;
        // its escapes are checked by `escapes`.
        b'"' => Ok(()),
        b'-' | b'0'..=b'9' => {
            if is_number(&text[p..trim_end(text, p, end)]) {
                Ok(())
            } else {
                Err((p, "invalid number"))
            }
        }
        b't' | b'f' | b'n' => {
            if matches!(
                &text[p..trim_end(text, p, end)],
                b"true" | b"false" | b"null"
            ) {
                Ok(())
            } else {
                Err((p, SYNTAX))
            }
        }
        _ if p >= text.len() => Err((p, END)),
        _ => Err((p, SYNTAX)),
    }
}

/// Checks every escape of `text` (RFC 8259 §7), a text that has passed the
/// grammar: a backslash outside a string is part of a number or literal
/// token, which the grammar refuses, so every backslash left is in a string,
/// and stage 1 paired the backslashes of each run the way this scan does
/// (`\\` is one escape). The backslashes are found 64 bytes at a time as a
/// bit mask (16-byte vector comparisons, `wide`), so a text with many short
/// escapes costs a few instructions per escape rather than a search each.
/// The last chunk, shorter, goes through the same mask. Returns the offset of
/// the first invalid escape.
#[inline(never)]
fn escapes(text: &[u8]) -> Result<(), (usize, &'static str)> {
    /// Bit `j` set where `chunk[j]` is a backslash (`chunk` is 64 bytes long
    /// but for the last).
    fn backslashes(chunk: &[u8]) -> u64 {
        let mut lanes = chunk.chunks_exact(16);
        let mut m = 0;
        let mut shift = 0;
        for lane in &mut lanes {
            let v = u8x16::new(<[u8; 16]>::try_from(lane).unwrap_or_default());
            m |= u64::from(v.simd_eq(u8x16::splat(b'\\')).to_bitmask()) << shift;
            shift += 16;
        }
        for (j, &b) in lanes.remainder().iter().enumerate() {
            m |= u64::from(b == b'\\') << (shift + j);
        }
        m
    }
    // The first byte not yet consumed by an escape: the second backslash of
    // `\\` is not an escape of its own.
    let mut from = 0;
    let mut check = |at: usize| {
        if at >= from {
            from = at + escape_len(text, at).ok_or((at, "invalid string escape"))?;
        }
        Ok(())
    };
    let mut chunks = text.chunks_exact(64);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut m = backslashes(chunk);
        while m != 0 {
            check(base + m.trailing_zeros() as usize)?;
            m &= m - 1;
        }
        base += 64;
    }
    let mut m = backslashes(chunks.remainder());
    while m != 0 {
        check(base + m.trailing_zeros() as usize)?;
        m &= m - 1;
    }
    Ok(())
}

/// `end` moved back over whitespace, not before `start`.
pub(crate) fn trim_end(text: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && is_ws(text[end - 1]) {
        end -= 1;
    }
    end
}

/// Length of the escape sequence at `at` (a backslash), or `None` if it is
/// not a valid escape: one of `\" \\ \/ \b \f \n \r \t`, or `\uXXXX` (a
/// surrogate too, paired or not, as RFC 8259 §7 and Go's decoder allow). A
/// `\u` escape cannot reach past its string: a quote is not a hex digit.
fn escape_len(text: &[u8], at: usize) -> Option<usize> {
    match text.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(2),
        b'u' => hex4(text, at + 2).map(|_| 6),
        _ => None,
    }
}

/// The four hex digits at `at`.
fn hex4(text: &[u8], at: usize) -> Option<u32> {
    text.get(at..at + 4)?.iter().try_fold(0u32, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(d))
    })
}

/// Whether `s` is a JSON number (RFC 8259 §6):
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_number(s: &[u8]) -> bool {
    let digits = |mut i: usize| {
        let from = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    i = match s.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i).unwrap_or(i),
        _ => return false,
    };
    if s.get(i) == Some(&b'.') {
        let Some(j) = digits(i + 1) else {
            return false;
        };
        i = j;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let Some(j) = digits(i) else {
            return false;
        };
        i = j;
    }
    i == s.len()
}

/// Where serde_json finds the fault in `text`, as a byte offset: simd-json's
/// stage 1 does not say where. Only on the error path.
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

fn describe(kind: &ErrorType) -> &'static str {
    use simd_json::ErrorType as E;
    match kind {
        E::Eof => "unexpected end of input",
        E::InvalidUtf8 => INVALID_UTF8,
        E::InvalidEscape | E::InvalidUnicodeEscape | E::InvalidUnicodeCodepoint => {
            "invalid string escape"
        }
        E::InvalidNumber | E::InvalidExponent => "invalid number",
        E::TrailingData => "data after the JSON value",
        _ => "invalid JSON syntax",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(text: &str) -> Result<Vec<u32>, JsonError> {
        with_index(text.as_bytes(), 0, |r| r.map(|ix| ix.idx.to_vec()))
    }

    fn docs(text: &str) -> Result<Vec<u32>, JsonError> {
        with_index(text.as_bytes(), 0, |r| r.map(|ix| ix.docs.to_vec()))
    }

    fn refusal(text: &str) -> &'static str {
        offsets(text).unwrap_err().what
    }

    #[test]
    fn valid_texts_and_their_tokens() {
        assert_eq!(
            offsets(r#"{"a": [1, "x y", true ,null], "b":{}}"#).unwrap(),
            vec![
                0, 1, 4, 6, 7, 8, 10, 15, 17, 22, 23, 27, 28, 30, 33, 34, 35, 36
            ]
        );
        for ok in [
            r#"[ "a\"b\\", -1.5e3 , {"k" : "v"} ]"#,
            r#"  "just a string"  "#,
            r#"["\u00e9\ud83d\ude00\/\b\f\n\r\t", 0, -0.0e-0, 1E+9, 10]"#,
            r#"["\ud800", "\udc00", "\ud800\u0041", "\udbff\udbff", "x\ude00"]"#,
            "[[],{},[{}],\"\"]",
        ] {
            assert!(offsets(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn numbers_out_of_f64_range_are_valid_json() {
        assert_eq!(
            offsets(r#"{"n":1e400,"m":123456789012345678901234567890}"#).unwrap(),
            vec![0, 1, 4, 5, 10, 11, 14, 15, 45]
        );
        assert_eq!(refusal("[1e400,"), "unexpected end of input");
    }

    #[test]
    fn the_depth_limit_holds_whatever_comes_first() {
        let nested = |levels: usize, leaf: &str| {
            let inner = levels - 1;
            format!("[{leaf},{}{}]", "[".repeat(inner), "]".repeat(inner))
        };
        for leaf in ["1", "1e400", "\"x\""] {
            assert!(offsets(&nested(MAX_DEPTH, leaf)).is_ok(), "{leaf}");
            assert_eq!(refusal(&nested(MAX_DEPTH + 1, leaf)), "nested too deeply");
        }
        assert_eq!(refusal(&"[".repeat(MAX_DEPTH + 1)), "nested too deeply");
        // Objects as members of objects, then a member after each close.
        let members = |levels: usize| {
            let inner = levels - 1;
            format!(
                "{{\"a\":1,{}\"b\":\"c\"{}}}",
                "\"k\":{".repeat(inner),
                "},\"z\":2".repeat(inner)
            )
        };
        assert!(offsets(&members(MAX_DEPTH)).is_ok());
        assert_eq!(refusal(&members(MAX_DEPTH + 1)), "nested too deeply");
        // An array of strings as the innermost member's value: one level more.
        let array_in = |levels: usize| members(levels).replace(r#""b":"c""#, r#""b":["c","d"]"#);
        assert!(offsets(&array_in(MAX_DEPTH - 1)).is_ok());
        assert_eq!(refusal(&array_in(MAX_DEPTH)), "nested too deeply");
        assert_eq!(members(3), r#"{"a":1,"k":{"k":{"b":"c"},"z":2},"z":2}"#);
        assert_eq!(offsets(&members(3)).map(|o| o.len()), Ok(25));
    }

    #[test]
    fn texts_one_after_the_other_are_each_noted() {
        assert_eq!(docs("{\"a\":1}\n[2]\r\n\n{}").unwrap(), vec![5, 8, 10]);
        assert_eq!(docs("[1][2]").unwrap(), vec![3, 6]);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        for (text, what) in [
            ("{\"a\":\"x\ny\"}", "invalid JSON syntax"),
            ("", "unexpected end of input"),
            ("[1,]", "invalid JSON syntax"),
            ("[1 2]", "invalid JSON syntax"),
            ("{\"a\" 1}", "invalid JSON syntax"),
            ("{\"a\":1,}", "invalid JSON syntax"),
            ("{1:2}", "invalid JSON syntax"),
            ("[1}", "invalid JSON syntax"),
            ("{\"a\":1]", "invalid JSON syntax"),
            ("]", "invalid JSON syntax"),
            ("[tru]", "invalid JSON syntax"),
            ("[nulll]", "invalid JSON syntax"),
            ("[01]", "invalid number"),
            ("[1.]", "invalid number"),
            ("[.5]", "invalid JSON syntax"),
            ("[1e]", "invalid number"),
            ("[-]", "invalid number"),
            ("[+1]", "invalid JSON syntax"),
            ("[\"\\x\"]", "invalid string escape"),
            ("[\"\\u12\"]", "invalid string escape"),
            ("[\"\\u12g4\"]", "invalid string escape"),
            ("[\"x\"\"y\"]", "invalid JSON syntax"),
            ("[\"x\"y]", "invalid JSON syntax"),
            ("[1]]", "invalid JSON syntax"),
            ("[\\]", "invalid JSON syntax"),
            ("{\"a\":[}", "invalid JSON syntax"),
            ("{\"a\"x:1}", "invalid JSON syntax"),
            ("{\"a\":\"b\"c}", "invalid JSON syntax"),
            ("[\"a\"  x]", "invalid JSON syntax"),
            ("[1,\u{1}2]", "invalid JSON syntax"),
            ("[\u{e9}]", "invalid JSON syntax"),
            ("[1\\]", "invalid number"),
            ("{\"a\\\":1}", "invalid JSON syntax"),
            // Arrays of strings and objects as members' values.
            ("{\"a\":[\"x\",]}", "invalid JSON syntax"),
            ("{\"a\":[\"x\" \"y\"]}", "invalid JSON syntax"),
            ("{\"a\":[\"x\",\"y\"],}", "invalid JSON syntax"),
            ("{\"a\":[\"x\",\"y\"]]", "invalid JSON syntax"),
            ("{\"a\":[\"x\",\"y\"}", "invalid JSON syntax"),
            ("{\"a\":[\"x\"", "unexpected end of input"),
            ("{\"a\":{\"b\":\"c\"},}", "invalid JSON syntax"),
            ("{\"a\":{\"b\":\"c\"}]", "invalid JSON syntax"),
            ("{\"a\":{\"b\":1}", "unexpected end of input"),
        ] {
            assert_eq!(
                offsets(text).map(|_| ()).unwrap_err().what,
                what,
                "{text:?}"
            );
        }
    }

    #[test]
    fn escapes_are_checked_wherever_they_fall_in_the_scan() {
        // Each escape (valid or not) at every offset across two 64-byte
        // blocks of the backslash scan, after runs of escaped backslashes:
        // accepted exactly when serde_json accepts the same text.
        let escapes = [
            r"\n",
            r"\\",
            r"\\\\",
            r#"\""#,
            r"\u00e9",
            r"\uD83D\uDE00",
            r"\q",
            r"\u12",
            r"\u12g4",
            r"\\\q",
            r"\/",
            r"\\\u0041",
        ];
        for pad in 0..140 {
            for esc in escapes {
                let text = format!(r#"{{"k":["{}{esc}x","\\"],"v":"{esc}"}}"#, "a".repeat(pad));
                let expected = serde_json::from_str::<IgnoredAny>(&text).is_ok();
                let got = offsets(&text);
                assert_eq!(got.is_ok(), expected, "{text}: {got:?}");
                if let Err(e) = got {
                    assert_eq!(e.what, "invalid string escape", "{text}");
                    assert_eq!(text.as_bytes()[e.offset], b'\\', "{text}");
                }
            }
        }
    }

    #[test]
    fn faults_are_found_where_they_are() {
        let at = |text: &str| offsets(text).unwrap_err().offset;
        assert_eq!(at("[1,\n  tru]"), 6);
        assert_eq!(at("{\"a\":\"\\q\"}"), 6);
        assert_eq!(at("[1,2"), 4);
        assert_eq!(at("{\"a\":[\"x\",\"y\" 1],\"b\":2}"), 14);
        assert_eq!(at("{\"a\":{\"k\":\"v\"},\"b\":[\"x\"],3}"), 25);
    }
}
