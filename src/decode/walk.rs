//! Navigation over a validated JSON text by its structural offsets.
//!
//! A token is one entry of the structural list: a punctuation byte, the opening
//! quote of a string, or the first byte of a number or literal. The text has been
//! validated before a [`Walk`] is made, so brackets balance and every key is
//! followed by a colon; the methods still never index out of bounds.

use std::ops::Range;

/// JSON whitespace (RFC 8259 §2).
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A validated JSON text: the body and the structural offsets of the text's tokens.
pub(crate) struct Walk<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) idx: &'a [u32],
    /// One past the last byte of the text.
    pub(crate) end: usize,
}

/// One member of an object: its key token, its value token, and the token after
/// the value.
pub(crate) struct Member {
    pub(crate) key: usize,
    pub(crate) value: usize,
    pub(crate) next: usize,
}

impl<'a> Walk<'a> {
    pub(crate) fn len(&self) -> usize {
        self.idx.len()
    }

    pub(crate) fn pos(&self, tok: usize) -> usize {
        self.idx.get(tok).map_or(self.end, |&p| p as usize)
    }

    pub(crate) fn byte(&self, tok: usize) -> u8 {
        self.body.get(self.pos(tok)).copied().unwrap_or(0)
    }

    /// The token after the value that starts at `tok`.
    pub(crate) fn skip(&self, tok: usize) -> usize {
        if !matches!(self.byte(tok), b'{' | b'[') {
            return tok + 1;
        }
        let mut depth = 0usize;
        for t in tok..self.len() {
            match self.byte(t) {
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return t + 1;
                    }
                }
                _ => {}
            }
        }
        self.len()
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
    pub(crate) fn trim_end(&self, start: usize, mut end: usize) -> usize {
        while end > start && is_ws(self.body[end - 1]) {
            end -= 1;
        }
        end
    }

    /// The content of the string token `tok` (between its quotes, escapes as
    /// received), or `None` if `tok` is not a string.
    pub(crate) fn string(&self, tok: usize) -> Option<Range<usize>> {
        if self.byte(tok) != b'"' {
            return None;
        }
        let r = self.value_range(tok, tok + 1);
        (r.len() >= 2).then(|| r.start + 1..r.end - 1)
    }

    /// The members of the object that starts at token `tok`.
    pub(crate) fn members(&self, tok: usize) -> impl Iterator<Item = Member> + '_ {
        let mut at = tok + 1;
        let mut done = self.byte(tok) != b'{';
        std::iter::from_fn(move || {
            if done || at >= self.len() || self.byte(at) != b'"' {
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
            if done || at >= self.len() || self.byte(at) == b']' {
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
    pub(crate) fn key_is(&self, m: &Member, key: &[u8]) -> bool {
        self.string(m.key).is_some_and(|r| &self.body[r] == key)
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
        (tok + 1..next).any(|t| is_ws(self.body[self.pos(t) - 1]))
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
