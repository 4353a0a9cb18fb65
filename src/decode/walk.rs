//! Navigation over a validated JSON text by its structural offsets.
//!
//! A token is one entry of the structural list: a punctuation byte, the opening
//! quote of a string, or the first byte of a number or literal. The text has been
//! validated before a [`Walk`] is made, so brackets balance and every key is
//! followed by a colon; the methods still never index out of bounds.

use std::ops::Range;

pub(crate) use super::structure::is_ws;
use super::structure::{Index, trim_end};

/// A validated body: its bytes and the structure [`super::structure`] found.
pub(crate) struct Walk<'a> {
    body: &'a [u8],
    idx: &'a [u32],
    /// The first byte of each token.
    kinds: &'a [u8],
    /// Added to each entry of `idx` to make it an offset in `body`.
    base: usize,
    /// For each token that opens an object or array, the token after its value.
    next: &'a [u32],
    /// Whether any token has whitespace before it.
    any_ws: bool,
}

impl<'a> Walk<'a> {
    /// A walk over the body `body` whose structure is `ix`.
    pub(crate) fn new(body: &'a [u8], ix: &Index<'a>) -> Self {
        Self {
            body,
            idx: ix.idx,
            kinds: ix.kinds,
            base: ix.base,
            next: ix.next,
            any_ws: ix.any_ws,
        }
    }

    pub(crate) fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// One member of an object: its key token, its value token, and the token after
/// the value.
pub(crate) struct Member {
    pub(crate) key: usize,
    pub(crate) value: usize,
    pub(crate) next: usize,
}

impl<'a> Walk<'a> {
    #[inline(always)]
    pub(crate) fn pos(&self, tok: usize) -> usize {
        self.idx
            .get(tok)
            .map_or(self.body.len(), |&p| p as usize + self.base)
    }

    /// The first byte of token `tok`, or 0 past the last token.
    #[inline(always)]
    pub(crate) fn byte(&self, tok: usize) -> u8 {
        self.kinds.get(tok).copied().unwrap_or(0)
    }

    /// The token after the value that starts at `tok`.
    #[inline(always)]
    pub(crate) fn skip(&self, tok: usize) -> usize {
        if matches!(self.byte(tok), b'{' | b'[') {
            self.next.get(tok).map_or(tok + 1, |&n| n as usize)
        } else {
            tok + 1
        }
    }

    /// Bytes of the value made of tokens `tok..next`, without surrounding whitespace.
    pub(crate) fn value_range(&self, tok: usize, next: usize) -> Range<usize> {
        let start = self.pos(tok);
        let end = if matches!(self.byte(tok), b'{' | b'[') {
            self.pos(next - 1) + 1
        } else {
            self.trim_end(start, self.pos(next))
        };
        start..end
    }

    /// `end` moved back over whitespace, not before `start`.
    pub(crate) fn trim_end(&self, start: usize, end: usize) -> usize {
        trim_end(self.body, start, end)
    }

    /// The content of the string token `tok` (between its quotes, escapes as
    /// received), or `None` if `tok` is not a string.
    #[inline(always)]
    pub(crate) fn string(&self, tok: usize) -> Option<Range<usize>> {
        if self.byte(tok) != b'"' {
            return None;
        }
        let p = self.pos(tok);
        // The string's closing quote is the last byte before the next token
        // that is not whitespace.
        let next = self.pos(tok + 1);
        let end = if self.any_ws {
            self.trim_end(p, next)
        } else {
            next
        };
        (end >= p + 2).then(|| p + 1..end - 1)
    }

    /// The bytes of the key token `key` (escapes as received).
    #[inline(always)]
    fn key_at(&self, key: usize) -> &'a [u8] {
        self.string(key)
            .and_then(|r| self.body.get(r))
            .unwrap_or_default()
    }

    /// Calls `f` with the key bytes and the [`Member`] of each member of the
    /// object that starts at token `tok`, in order; nothing for another
    /// value.
    #[inline(always)]
    pub(crate) fn each_member(&self, tok: usize, mut f: impl FnMut(&'a [u8], Member)) {
        for m in self.members(tok) {
            f(self.key_at(m.key), m);
        }
    }

    /// The members of the object that starts at token `tok`.
    pub(crate) fn members(&self, tok: usize) -> impl Iterator<Item = Member> + '_ {
        let mut at = tok + 1;
        let mut done = self.byte(tok) != b'{';
        std::iter::from_fn(move || {
            if done || self.byte(at) != b'"' {
                return None;
            }
            let (key, value) = (at, at + 2);
            let next = self.skip(value);
            done = self.byte(next) != b',';
            at = next + 1;
            Some(Member { key, value, next })
        })
    }

    /// The elements of the array that starts at token `tok`, each as
    /// `(first token, token after it)`.
    pub(crate) fn elements(&self, tok: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut at = tok + 1;
        let mut done = self.byte(tok) != b'[';
        std::iter::from_fn(move || {
            if done || matches!(self.byte(at), b']' | 0) {
                return None;
            }
            let first = at;
            let next = self.skip(first);
            done = self.byte(next) != b',';
            at = next + 1;
            Some((first, next))
        })
    }

    /// Whether the key token of `m` is the string `key` written without escapes.
    ///
    /// `key` must not end with a backslash: then the quote after its bytes,
    /// if there is one, is the string's closing quote.
    pub(crate) fn key_is(&self, m: &Member, key: &[u8]) -> bool {
        let p = self.pos(m.key);
        self.body.get(p) == Some(&b'"')
            && self.body.get(p + 1..p + 1 + key.len()) == Some(key)
            && self.body.get(p + 1 + key.len()) == Some(&b'"')
    }

    /// Whether the key of `m` is `key` the way Go's `encoding/json` matches
    /// struct fields: escapes undone, ASCII case ignored (`Items`,
    /// `\u0069tems`). Used for the EventList's own keys.
    pub(crate) fn key_is_like_go(&self, m: &Member, key: &str) -> bool {
        let Some(r) = self.string(m.key) else {
            return false;
        };
        let raw = &self.body[r.clone()];
        if !raw.contains(&b'\\') {
            return raw.eq_ignore_ascii_case(key.as_bytes());
        }
        let quoted = &self.body[r.start - 1..r.end + 1];
        serde_json::from_slice::<String>(quoted).is_ok_and(|k| k.eq_ignore_ascii_case(key))
    }

    /// Whether the value made of tokens `tok..next` contains whitespace between
    /// its tokens. Whitespace between two tokens always sits just before the
    /// second one, and a byte just before a token is never inside a string.
    pub(crate) fn has_whitespace(&self, tok: usize, next: usize) -> bool {
        self.any_ws && (tok + 1..next).any(|t| is_ws(self.body[self.pos(t) - 1]))
    }

    /// Appends the tokens `tok..next` (ending at byte `end`) to `out` with the
    /// whitespace between them left out.
    pub(crate) fn write_compact(&self, tok: usize, next: usize, end: usize, out: &mut Vec<u8>) {
        for t in tok..next {
            let stop = if t + 1 < next { self.pos(t + 1) } else { end };
            let start = self.pos(t);
            out.extend_from_slice(&self.body[start..self.trim_end(start, stop)]);
        }
    }
}
