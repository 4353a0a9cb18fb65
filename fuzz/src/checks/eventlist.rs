//! Structure-aware EventLists: odd but valid JSON built from the fuzzer's bytes
//! with `arbitrary`, rendered with chosen whitespace, sent (maybe gzipped)
//! through the handler's unpack-and-decode. What comes out must be exactly the
//! items that went in, each as its compact text: numbers, escapes and key order
//! untouched.
//!
//! Covered on purpose: deep nesting (up to the forwarder's limit, and past it,
//! which must be refused), long strings, every string escape including
//! surrogate pairs, numbers far outside `f64` and `u64` range, `items` empty,
//! `null` or missing, and duplicate keys. When `items` appears more than once
//! the last one counts, as with Go's `encoding/json`.

use std::io::Write;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kube_audit_forwarder::decode::{DecodeError, DecodeOptions, MAX_DEPTH};
use kube_audit_forwarder::source::RequestError;
use kube_audit_forwarder::source::body::unpack;

use super::{assert_line, compact, parse};

/// An EventList.
#[derive(Debug, Arbitrary)]
pub struct List {
    /// Members before `items`.
    head: Vec<Member>,
    /// Each `items` member, in order; the last one counts; none means the key is
    /// missing.
    items: Vec<Option<Vec<Json>>>,
    /// Members between and after the `items` members.
    tail: Vec<Member>,
    /// Whether `kind` is written (it must be when `items` is missing).
    kind: bool,
    style: Style,
    bom: bool,
    gzip: bool,
    /// When set, one more item nested this many levels past the limit.
    too_deep: Option<u8>,
}

/// A member of the EventList other than `items`.
#[derive(Debug, Arbitrary)]
enum Member {
    ApiVersion(bool),
    Metadata(Vec<(Key, Json)>),
    Other(Key, Json),
}

/// How whitespace is laid between tokens.
#[derive(Debug, Arbitrary)]
enum Style {
    Compact,
    Pretty,
    /// Whitespace from this list, cycled, around every token.
    Odd(Vec<Ws>),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Ws {
    None,
    Space,
    Tab,
    Lf,
    Cr,
    CrLf,
    Many,
}

/// Any JSON value.
#[derive(Debug, Arbitrary)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// Digits (each byte mod 10) as an integer, maybe negative: past `u64`.
    Big(bool, Vec<u8>),
    /// `-?int(.frac)?(e[+-]?exp)?` with the exponent up to 65535.
    Float(Float),
    Str(Str),
    /// A string of one character repeated up to 65535 times.
    Long(char, u16),
    Array(Vec<Json>),
    Object(Vec<(Key, Json)>),
    /// The value wrapped in arrays and single-key objects, this many levels
    /// (cut to what the limit leaves).
    Deep(u16, Box<Json>),
}

/// A number in exponent or fraction form.
#[derive(Debug, Arbitrary)]
pub struct Float {
    neg: bool,
    int: u64,
    frac: Option<Vec<u8>>,
    exp: Option<(bool, Option<bool>, u16)>,
}

/// An object key: one of a few (to make duplicates likely) or any string.
#[derive(Debug, Arbitrary)]
pub enum Key {
    A,
    B,
    AuditId,
    Annotations,
    Any(Str),
}

/// A JSON string, piece by piece.
#[derive(Debug, Arbitrary)]
pub struct Str(Vec<Piece>);

/// One piece of a string.
#[derive(Debug, Arbitrary)]
pub enum Piece {
    /// A character, escaped if JSON requires it (quote, backslash, controls).
    Char(char),
    /// `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, chosen by the byte.
    Short(u8),
    /// `\uXXXX` of a code unit that is not a surrogate, in upper or lower case.
    Unicode(u16, bool),
    /// A surrogate pair `\uD8xx\uDCxx` for a character outside the BMP.
    Pair(u32),
}

/// Checks one structure-aware input.
pub fn check_bytes(data: &[u8]) {
    if let Ok(list) = List::arbitrary_take_rest(Unstructured::new(data)) {
        check(&list);
    }
}

/// Renders `list`, sends it through the handler's unpack-and-decode, and checks
/// that exactly its items come out.
pub fn check(list: &List) {
    let (body, want, too_deep) = list.render();
    let wire = if list.gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&body).expect("gzip into memory");
        e.finish().expect("gzip into memory")
    } else {
        body.clone()
    };
    let result = unpack(
        Bytes::from(wire),
        list.gzip,
        64 << 20,
        &DecodeOptions::default(),
    );
    if too_deep {
        match result {
            Err(RequestError::Decode(DecodeError::Json(e))) => {
                assert_eq!(e.what, "nested too deeply", "{e:?}");
                return;
            }
            other => panic!(
                "a body nested past the limit gave {:?}",
                other.map(|(_, d)| d.events.len())
            ),
        }
    }
    let (_, decoded) = match result {
        Ok(ok) => ok,
        Err(e) => panic!(
            "refused a valid EventList ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(2000)])
        ),
    };
    // Items that are not objects are not events: left out, and counted.
    let items = want.len();
    let want: Vec<&Vec<u8>> = want.iter().filter(|w| w.first() == Some(&b'{')).collect();
    assert_eq!(
        decoded.not_objects,
        items - want.len(),
        "items that are not objects"
    );
    let got: Vec<&[u8]> = decoded.events.iter().map(|e| &e.raw[..]).collect();
    assert_eq!(got.len(), want.len(), "events out vs items in");
    for (got, want) in got.iter().zip(want) {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(want),
            "an item changed on its way through"
        );
        let value = assert_line(got);
        assert_eq!(Some(value), parse(want).ok(), "same JSON value");
    }
}

/// Text being written, with the whitespace style and the depth so far.
struct Out<'a> {
    buf: Vec<u8>,
    style: &'a Style,
    turn: usize,
    indent: usize,
}

impl Out<'_> {
    fn ws(&mut self) {
        match self.style {
            Style::Compact | Style::Pretty => {}
            Style::Odd(list) if list.is_empty() => {}
            Style::Odd(list) => {
                let w = list[self.turn % list.len()];
                self.turn += 1;
                self.buf.extend_from_slice(match w {
                    Ws::None => b"",
                    Ws::Space => b" ",
                    Ws::Tab => b"\t",
                    Ws::Lf => b"\n",
                    Ws::Cr => b"\r",
                    Ws::CrLf => b"\r\n",
                    Ws::Many => b" \t\r\n  ",
                });
            }
        }
    }

    fn newline(&mut self) {
        if let Style::Pretty = self.style {
            self.buf.push(b'\n');
            self.buf
                .extend(std::iter::repeat_n(b' ', 2 * self.indent.min(40)));
        }
    }

    fn punct(&mut self, b: u8) {
        self.ws();
        self.buf.push(b);
        self.ws();
    }

    fn open(&mut self, b: u8) {
        self.punct(b);
        self.indent += 1;
        self.newline();
    }

    fn close(&mut self, b: u8) {
        self.indent -= 1;
        self.newline();
        self.punct(b);
    }

    fn comma(&mut self) {
        self.punct(b',');
        self.newline();
    }

    fn colon(&mut self) {
        self.punct(b':');
        if let Style::Pretty = self.style {
            self.buf.push(b' ');
        }
    }
}

impl List {
    /// The body, each item's compact text, and whether an item nested past
    /// the limit was written.
    pub fn render(&self) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
        let mut o = Out {
            buf: Vec::new(),
            style: &self.style,
            turn: 0,
            indent: 0,
        };
        if self.bom {
            o.buf.extend_from_slice(b"\xEF\xBB\xBF");
        }
        o.open(b'{');
        let mut first = true;
        let mut sep = |o: &mut Out<'_>| {
            if !std::mem::take(&mut first) {
                o.comma();
            }
        };
        if self.kind || self.items.is_empty() {
            sep(&mut o);
            o.buf.extend_from_slice(br#""kind""#);
            o.colon();
            o.buf.extend_from_slice(br#""EventList""#);
        }
        for m in &self.head {
            sep(&mut o);
            m.render(&mut o);
        }
        let mut want = Vec::new();
        let mut too_deep = false;
        for (n, items) in self.items.iter().enumerate() {
            let last = n + 1 == self.items.len();
            sep(&mut o);
            o.buf.extend_from_slice(br#""items""#);
            o.colon();
            let Some(items) = items else {
                o.buf.extend_from_slice(b"null");
                if last {
                    want.clear();
                }
                continue;
            };
            o.open(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    o.comma();
                }
                let from = o.buf.len();
                item.render(&mut o, 2);
                if last {
                    want.push(compact(&o.buf[from..]));
                }
            }
            if let (true, Some(extra)) = (last, self.too_deep) {
                if !items.is_empty() {
                    o.comma();
                }
                let levels = MAX_DEPTH + 1 + usize::from(extra);
                o.buf.extend(std::iter::repeat_n(b'[', levels));
                o.buf.extend(std::iter::repeat_n(b']', levels));
                too_deep = true;
            }
            o.close(b']');
        }
        for m in &self.tail {
            sep(&mut o);
            m.render(&mut o);
        }
        o.close(b'}');
        o.buf.push(b'\n');
        (o.buf, want, too_deep)
    }
}

impl Member {
    fn render(&self, o: &mut Out<'_>) {
        match self {
            Self::ApiVersion(beta) => {
                o.buf.extend_from_slice(br#""apiVersion""#);
                o.colon();
                o.buf.extend_from_slice(if *beta {
                    br#""audit.k8s.io/v1beta1""#
                } else {
                    br#""audit.k8s.io/v1""#
                });
            }
            Self::Metadata(members) => {
                o.buf.extend_from_slice(br#""metadata""#);
                o.colon();
                object(o, members, 1);
            }
            Self::Other(key, value) => {
                key.render_top(o);
                o.colon();
                value.render(o, 1);
            }
        }
    }
}

fn object(o: &mut Out<'_>, members: &[(Key, Json)], depth: usize) {
    o.open(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            o.comma();
        }
        k.render(o);
        o.colon();
        v.render(o, depth + 1);
    }
    o.close(b'}');
}

impl Json {
    /// Writes the value, which sits inside `depth` arrays and objects.
    fn render(&self, o: &mut Out<'_>, depth: usize) {
        match self {
            Self::Null => o.buf.extend_from_slice(b"null"),
            Self::Bool(b) => o.buf.extend_from_slice(if *b { b"true" } else { b"false" }),
            Self::Int(i) => o.buf.extend_from_slice(i.to_string().as_bytes()),
            Self::UInt(u) => o.buf.extend_from_slice(u.to_string().as_bytes()),
            Self::Big(neg, digits) => {
                if *neg {
                    o.buf.push(b'-');
                }
                o.buf.push(b'1');
                o.buf.extend(digits.iter().map(|d| b'0' + d % 10));
            }
            Self::Float(f) => f.render(o),
            Self::Str(s) => s.render(o),
            Self::Long(c, n) => {
                let s = Str(vec![Piece::Char(*c)]);
                let mut one = Out {
                    buf: Vec::new(),
                    style: &Style::Compact,
                    turn: 0,
                    indent: 0,
                };
                s.render(&mut one);
                let inner = &one.buf[1..one.buf.len() - 1];
                o.buf.push(b'"');
                for _ in 0..*n {
                    o.buf.extend_from_slice(inner);
                }
                o.buf.push(b'"');
            }
            Self::Array(items) if depth < MAX_DEPTH => {
                o.open(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        o.comma();
                    }
                    v.render(o, depth + 1);
                }
                o.close(b']');
            }
            Self::Object(members) if depth < MAX_DEPTH => object(o, members, depth),
            Self::Deep(n, inner) => {
                // Leave one level for `inner` itself.
                let levels = usize::from(*n).min(MAX_DEPTH.saturating_sub(depth + 1));
                for l in 0..levels {
                    if l % 2 == 0 {
                        o.open(b'[');
                    } else {
                        o.open(b'{');
                        o.buf.extend_from_slice(br#""k""#);
                        o.colon();
                    }
                }
                inner.render(o, depth + levels);
                for l in (0..levels).rev() {
                    o.close(if l % 2 == 0 { b']' } else { b'}' });
                }
            }
            // No room left under the limit.
            Self::Array(_) | Self::Object(_) => o.buf.extend_from_slice(b"0"),
        }
    }
}

impl Float {
    fn render(&self, o: &mut Out<'_>) {
        if self.neg {
            o.buf.push(b'-');
        }
        o.buf.extend_from_slice(self.int.to_string().as_bytes());
        if let Some(frac) = &self.frac {
            o.buf.push(b'.');
            o.buf.push(b'0' + frac.first().map_or(0, |d| d % 10));
            o.buf.extend(frac.iter().skip(1).map(|d| b'0' + d % 10));
        }
        if let Some((upper, sign, exp)) = self.exp {
            o.buf.push(if upper { b'E' } else { b'e' });
            match sign {
                Some(true) => o.buf.push(b'+'),
                Some(false) => o.buf.push(b'-'),
                None => {}
            }
            o.buf.extend_from_slice(exp.to_string().as_bytes());
        }
    }
}

impl Key {
    fn render(&self, o: &mut Out<'_>) {
        match self {
            Self::A => o.buf.extend_from_slice(br#""a""#),
            Self::B => o.buf.extend_from_slice(br#""b""#),
            Self::AuditId => o.buf.extend_from_slice(br#""auditID""#),
            Self::Annotations => o.buf.extend_from_slice(br#""annotations""#),
            Self::Any(s) => s.render(o),
        }
    }

    /// A key of the EventList itself: never one that decodes to `items` or
    /// `kind` (how those are matched when escaped or in another case is not
    /// what this target checks).
    fn render_top(&self, o: &mut Out<'_>) {
        let from = o.buf.len();
        self.render(o);
        let key = parse(&o.buf[from..])
            .ok()
            .and_then(|v| v.as_str().map(str::to_ascii_lowercase));
        if matches!(key.as_deref(), Some("items" | "kind")) {
            o.buf.insert(from + 1, b'x');
        }
    }
}

impl Str {
    fn render(&self, o: &mut Out<'_>) {
        o.buf.push(b'"');
        for p in &self.0 {
            match *p {
                Piece::Char(c) => match c {
                    '"' => o.buf.extend_from_slice(br#"\""#),
                    '\\' => o.buf.extend_from_slice(br"\\"),
                    c if (c as u32) < 0x20 => {
                        o.buf
                            .extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
                    }
                    c => {
                        let mut tmp = [0u8; 4];
                        o.buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                    }
                },
                Piece::Short(b) => {
                    let all: [&[u8]; 8] = [
                        br#"\""#, br"\\", br"\/", br"\b", br"\f", br"\n", br"\r", br"\t",
                    ];
                    o.buf.extend_from_slice(all[usize::from(b % 8)]);
                }
                Piece::Unicode(u, upper) => {
                    let u = if (0xD800..0xE000).contains(&u) {
                        u - 0x800
                    } else {
                        u
                    };
                    let text = if upper {
                        format!("\\u{u:04X}")
                    } else {
                        format!("\\u{u:04x}")
                    };
                    o.buf.extend_from_slice(text.as_bytes());
                }
                Piece::Pair(c) => {
                    let c = 0x10000 + c % 0x100000;
                    let (hi, lo) = (0xD800 + ((c - 0x10000) >> 10), 0xDC00 + (c & 0x3FF));
                    o.buf
                        .extend_from_slice(format!("\\u{hi:04x}\\u{lo:04X}").as_bytes());
                }
            }
        }
        o.buf.push(b'"');
    }
}
