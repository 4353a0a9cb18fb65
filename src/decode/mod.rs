//! Decoding of a webhook request body into events.
//!
//! Accepted bodies (see DESIGN.md, "tolerant input"):
//! - an `EventList` of `audit.k8s.io/v1` or `v1beta1`
//!   (<https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-EventList>):
//!   every element of `items` is an event, whatever its JSON type; `items` absent
//!   or `null` in an object whose `kind` is `EventList` is an empty list, as Go's
//!   decoder treats it;
//! - a single `Event` object (one that has `auditID`, `stage`, `level` or
//!   `requestURI`, or `kind: Event`);
//! - a JSON array of events;
//! - several of the above one after the other, separated by whitespace (JSON lines,
//!   LF or CRLF, blank lines allowed);
//! - any of these after a UTF-8 byte order mark, compact or pretty-printed.
//!
//! As Go's decoder does (and so the API server, which produced the events):
//! a `\u` escape of a lone surrogate is accepted and kept as written; invalid
//! UTF-8 is replaced by U+FFFD, one per bad byte, in the body that
//! [`decode_owned`] returns (the events it touched are counted in
//! [`Decoded::repaired`]). An element of `items` (or of a top-level array)
//! that is not an object is not an event: it is left out and counted in
//! [`Decoded::not_objects`], its neighbours kept.
//!
//! Each event leaves as the item's own bytes with the whitespace between tokens
//! removed: a slice of the body when the item is already compact (the API server
//! always sends compact JSON), otherwise one copy into a buffer shared by the batch.

mod event;
mod repair;
mod structure;
mod truncate;
mod walk;

use std::ops::Range;

use bytes::Bytes;

pub use event::{Event, EventMeta, Level, Span, Stage};
pub use structure::{JsonError, MAX_DEPTH};

use walk::Walk;

/// Limits applied while decoding one body.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Most events one body may hold; more is [`DecodeError::TooManyEvents`].
    pub max_events: usize,
    /// Largest event in bytes (compact form); 0 means no limit. A larger event is
    /// truncated as the API server's truncating backend does (its `requestObject`
    /// and `responseObject` removed, the annotation `audit.k8s.io/truncated: "true"`
    /// added) and dropped if still too large.
    pub max_event_bytes: usize,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_events: usize::MAX,
            max_event_bytes: 0,
        }
    }
}

/// Why a body was refused. Small and allocation-free; [`DecodeError::reason`] is
/// the bounded label used in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body holds nothing but whitespace.
    #[error("request body is empty")]
    Empty,
    /// The body is not JSON (RFC 8259).
    #[error("request body is not valid JSON: {} at byte {}", .0.what, .0.offset)]
    Json(JsonError),
    /// The body is not UTF-8 ([`decode`] only; [`decode_owned`] repairs it).
    #[error("request body is not valid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Offset of the first byte that is not UTF-8.
        offset: usize,
    },
    /// The body is JSON but neither an EventList nor an Event.
    #[error("request body is not an audit.k8s.io EventList or Event: {0}")]
    NotAnEventList(&'static str),
    /// The body holds more events than may be queued.
    #[error("request body holds {count} events, more than the {max} a request may carry")]
    TooManyEvents {
        /// Events found (counting stops just past the limit).
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// Every [`reason`](Self::reason).
    pub const REASONS: &[&str] = &[
        "empty_body",
        "invalid_json",
        "invalid_utf8",
        "not_an_event_list",
        "too_many_events",
    ];

    /// Bounded metric label: `empty_body`, `invalid_json`, `not_an_event_list` or
    /// `too_many_events`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty_body",
            Self::Json(_) => "invalid_json",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::NotAnEventList(_) => "not_an_event_list",
            Self::TooManyEvents { .. } => "too_many_events",
        }
    }
}

/// An event left out because it was larger than `max_event_bytes` even after
/// truncation.
#[derive(Debug, Clone, Copy)]
pub struct DroppedEvent {
    /// Its `auditID`, as a span of the body.
    pub audit_id: Option<Span>,
    /// Its size in bytes (compact form).
    pub bytes: usize,
}

/// The events of one body, in the order they appear.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The events to forward.
    pub events: Vec<Event>,
    /// How many of them were truncated for `max_event_bytes`.
    pub truncated: usize,
    /// Events left out for `max_event_bytes`.
    pub dropped: Vec<DroppedEvent>,
    /// Elements of `items` (or of a top-level array) left out because they
    /// are not objects, so not events.
    pub not_objects: usize,
    /// Events in which invalid UTF-8 was replaced by U+FFFD.
    pub repaired: usize,
}

/// Where an event's bytes are: a range of the body, or of the buffer shared
/// by the events that are not (frozen when the batch is done).
enum Place {
    Body(Range<usize>),
    Owned(Range<usize>),
}

struct Builder<'o> {
    opts: &'o DecodeOptions,
    body: &'o Bytes,
    /// The events so far; those whose bytes are in `owned` get them in
    /// [`Builder::finish`], once it is frozen, and are listed in `pending`.
    /// Built in place rather than collected at the end, in a list a
    /// delivered batch gave back (`pipeline::recycle`): for a 400-event
    /// batch (about 70 KB) a fresh list was page faults on every request.
    events: Vec<Event>,
    /// Index in `events` and range in `owned` of each event not taken from
    /// the body.
    pending: Vec<(usize, Range<usize>)>,
    owned: Vec<u8>,
    truncated: usize,
    dropped: Vec<DroppedEvent>,
    not_objects: usize,
    /// Offsets of the U+FFFD put in place of invalid UTF-8 (ascending).
    repairs: &'o [usize],
    repaired: usize,
}

/// Splits `body` into events. The body is copied once into a buffer that
/// simd-json can read past the end of; [`decode_owned`] avoids that copy.
///
/// # Errors
///
/// [`DecodeError`] when the body is empty, not JSON, not an EventList/Event, or
/// holds more than `opts.max_events` events. Nothing is returned for a refused
/// body: a request is accepted whole or not at all.
pub fn decode(body: &Bytes, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    decode_copied(body, first_token(body)?, opts, &[])
}

/// [`decode`] of a body whose text starts at `start`; `repairs` as in
/// [`Builder`].
fn decode_copied(
    body: &Bytes,
    start: usize,
    opts: &DecodeOptions,
    repairs: &[usize],
) -> Result<Decoded, DecodeError> {
    structure::with_index(&body[start..], start, |ix| split(body, ix, opts, repairs))
}

/// Space to leave free after a body in its buffer so that [`decode_owned`]
/// validates it where it lies (simd-json's input padding).
pub const BODY_PADDING: usize = structure::PADDING;

/// Like [`decode`], for a body the caller hands over: when it is the only
/// reference to its buffer (as a body just read from a socket or gunzipped
/// is), the body is validated where it lies, without a copy, using
/// [`BODY_PADDING`] bytes of spare capacity (the buffer is grown if it has
/// none). A body that is not UTF-8 is repaired first, each invalid byte
/// replaced by U+FFFD as Go's decoder does, in a copy. Returns the body
/// (the events are slices of it, the routing fields spans of it) with the
/// result.
///
/// # Errors
///
/// As [`decode`]; [`DecodeError::InvalidUtf8`] only for a body that is not
/// valid JSON with its invalid bytes replaced either (the refusal names the
/// bytes, not the syntax).
pub fn decode_owned(body: Bytes, opts: &DecodeOptions) -> (Bytes, Result<Decoded, DecodeError>) {
    let (body, result) = decode_owned_with(body, opts, &[]);
    if !matches!(result, Err(DecodeError::InvalidUtf8 { .. })) {
        return (body, result);
    }
    match repair::repair(&body, BODY_PADDING) {
        Some((fixed, at)) => decode_owned_with(fixed.freeze(), opts, &at),
        None => (body, result),
    }
}

/// [`decode_owned`] without the repair; `repairs` as in [`Builder`].
fn decode_owned_with(
    body: Bytes,
    opts: &DecodeOptions,
    repairs: &[usize],
) -> (Bytes, Result<Decoded, DecodeError>) {
    let start = match first_token(&body) {
        Ok(start) => start,
        Err(e) => return (body, Err(e)),
    };
    // A text that opens with a scalar goes through simd-json's stage 2, which
    // unescapes in place: that one is validated in a copy.
    if !matches!(body[start], b'{' | b'[') {
        let result = decode_copied(&body, start, opts, repairs);
        return (body, result);
    }
    match body.try_into_mut() {
        Ok(buf) => {
            structure::with_index_in_place(buf, start, |body, ix| split(body, ix, opts, repairs))
        }
        Err(body) => {
            let result = decode_copied(&body, start, opts, repairs);
            (body, result)
        }
    }
}

/// Offset of the first byte after a leading byte order mark and whitespace.
fn first_token(body: &[u8]) -> Result<usize, DecodeError> {
    let start = if body.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let start = start
        + body[start..]
            .iter()
            .take_while(|&&b| walk::is_ws(b))
            .count();
    if start == body.len() {
        return Err(DecodeError::Empty);
    }
    Ok(start)
}

/// The events of `body`, whose structure is `ix`.
fn split(
    body: &Bytes,
    ix: Result<structure::Index<'_>, JsonError>,
    opts: &DecodeOptions,
    repairs: &[usize],
) -> Result<Decoded, DecodeError> {
    let ix = ix.map_err(|e| match e.what {
        structure::INVALID_UTF8 => DecodeError::InvalidUtf8 { offset: e.offset },
        _ => DecodeError::Json(e),
    })?;
    let mut b = Builder {
        opts,
        body,
        events: crate::pipeline::recycle::take_events(),
        pending: Vec::new(),
        owned: Vec::new(),
        truncated: 0,
        dropped: Vec::new(),
        not_objects: 0,
        repairs,
        repaired: 0,
    };
    let w = Walk::new(body, &ix);
    let mut root = 0;
    for &end in ix.docs {
        b.document(&w, root)?;
        root = end as usize;
    }
    Ok(b.finish())
}

impl Builder<'_> {
    /// Takes the events of the JSON text that starts at token `root`.
    fn document(&mut self, w: &Walk<'_>, root: usize) -> Result<(), DecodeError> {
        match w.byte(root) {
            b'[' => self.items(w, root),
            b'{' => {
                let mut items = None;
                let mut kind = None;
                let mut looks_like_event = false;
                let mut records = false;
                for m in w.members(root) {
                    if w.key_is_like_go(&m, "items") {
                        items = Some(m.value);
                    } else if w.key_is_like_go(&m, "kind") {
                        kind = w.string(m.value).map(|r| &w.body()[r]);
                    } else if w.key_is(&m, b"records") {
                        records = true;
                    } else if ["auditID", "stage", "level", "requestURI"]
                        .iter()
                        .any(|k| w.key_is(&m, k.as_bytes()))
                    {
                        looks_like_event = true;
                    }
                }
                match (items, kind) {
                    (Some(tok), _) if w.byte(tok) == b'[' => self.items(w, tok),
                    (Some(tok), _) if w.byte(tok) == b'n' => Ok(()),
                    (Some(_), _) => Err(DecodeError::NotAnEventList("`items` is not an array")),
                    (None, Some(b"EventList")) => Ok(()),
                    (None, Some(b"Event")) => self.event(w, root, w.skip(root)),
                    (None, _) if looks_like_event => self.event(w, root, w.skip(root)),
                    (None, _) if records => Err(DecodeError::NotAnEventList(
                        "an Azure diagnostic-settings envelope (`records`); send the events it wraps instead",
                    )),
                    (None, _) => Err(DecodeError::NotAnEventList(
                        "an object with neither `items` nor the fields of an Event",
                    )),
                }
            }
            _ => Err(DecodeError::NotAnEventList(
                "a JSON string, number or literal",
            )),
        }
    }

    /// Takes the objects of the array at token `array` as events; other
    /// elements are counted and left out.
    fn items(&mut self, w: &Walk<'_>, array: usize) -> Result<(), DecodeError> {
        let max = self.opts.max_events;
        let objects = w
            .elements(array)
            .filter(|&(tok, _)| w.byte(tok) == b'{')
            .take(max.saturating_add(1))
            .count();
        let count = self.events.len() + objects;
        if count > max {
            return Err(DecodeError::TooManyEvents { count, max });
        }
        self.events.reserve(objects);
        for (tok, next) in w.elements(array) {
            if w.byte(tok) == b'{' {
                self.event(w, tok, next)?;
            } else {
                self.not_objects += 1;
            }
        }
        Ok(())
    }

    fn event(&mut self, w: &Walk<'_>, tok: usize, next: usize) -> Result<(), DecodeError> {
        if self.events.len() >= self.opts.max_events {
            return Err(DecodeError::TooManyEvents {
                count: self.events.len() + 1,
                max: self.opts.max_events,
            });
        }
        let range = w.value_range(tok, next);
        if repair::count_in(self.repairs, range.clone()) > 0 {
            self.repaired += 1;
        }
        let meta = read_meta(w, tok);
        let place = if w.has_whitespace(tok, next) {
            let from = self.owned.len();
            w.write_compact(tok, next, range.end, &mut self.owned);
            Place::Owned(from..self.owned.len())
        } else {
            Place::Body(range.clone())
        };
        let size = match &place {
            Place::Body(r) | Place::Owned(r) => r.len(),
        };
        let limit = self.opts.max_event_bytes;
        if limit == 0 || size <= limit {
            self.push(place, meta);
            return Ok(());
        }
        if let Place::Owned(r) = &place {
            self.owned.truncate(r.start);
        }
        let from = self.owned.len();
        if truncate::write_truncated(w, tok, &mut self.owned) && self.owned.len() - from <= limit {
            self.truncated += 1;
            self.push(Place::Owned(from..self.owned.len()), meta);
        } else {
            self.owned.truncate(from);
            self.dropped.push(DroppedEvent {
                audit_id: meta.audit_id,
                bytes: size,
            });
        }
        Ok(())
    }

    fn push(&mut self, place: Place, meta: EventMeta) {
        let raw = match place {
            Place::Body(r) => self.body.slice(r),
            Place::Owned(r) => {
                self.pending.push((self.events.len(), r));
                Bytes::new()
            }
        };
        self.events.push(Event { raw, meta });
    }

    fn finish(self) -> Decoded {
        let mut events = self.events;
        if !self.pending.is_empty() {
            let owned = Bytes::from(self.owned);
            for (i, r) in self.pending {
                if let Some(e) = events.get_mut(i) {
                    e.raw = owned.slice(r);
                }
            }
        }
        Decoded {
            events,
            truncated: self.truncated,
            dropped: self.dropped,
            not_objects: self.not_objects,
            repaired: self.repaired,
        }
    }
}

/// Reads the routing fields of the event whose value starts at token `tok`.
/// Keys are matched as written, without escapes (the API server writes them
/// so).
#[inline(never)]
fn read_meta(w: &Walk<'_>, tok: usize) -> EventMeta {
    let span = |t: usize| {
        w.string(t).map(|r| Span {
            start: r.start as u32,
            len: r.len() as u32,
        })
    };
    let mut meta = EventMeta::default();
    w.each_member(tok, |key, m| match key {
        b"level" => meta.level = span(m.value).map(|s| Level::from_raw(s.get(w.body()))),
        b"stage" => meta.stage = span(m.value).map(|s| Stage::from_raw(s.get(w.body()))),
        b"auditID" => meta.audit_id = span(m.value),
        b"verb" => meta.verb = span(m.value),
        b"requestURI" => meta.request_uri = span(m.value),
        b"user" => w.each_member(m.value, |key, u| match key {
            b"username" => meta.username = span(u.value),
            b"groups" if w.byte(u.value) == b'[' => {
                let r = w.value_range(u.value, u.next);
                meta.groups = Some(Span {
                    start: r.start as u32,
                    len: r.len() as u32,
                });
            }
            _ => {}
        }),
        b"objectRef" => {
            meta.has_object_ref = w.byte(m.value) == b'{';
            w.each_member(m.value, |key, o| {
                let slot = match key {
                    b"namespace" => &mut meta.namespace,
                    b"name" => &mut meta.name,
                    b"resource" => &mut meta.resource,
                    b"apiGroup" => &mut meta.api_group,
                    b"subresource" => &mut meta.subresource,
                    _ => return,
                };
                *slot = span(o.value);
            });
        }
        b"requestObject" | b"responseObject" => {
            meta.has_bodies |= !matches!(w.byte(m.value), b'n');
        }
        b"responseStatus" => w.each_member(m.value, |key, s| {
            if key == b"code" {
                meta.code = status_code(&w.body()[w.value_range(s.value, s.next)]);
            }
        }),
        _ => {}
    });
    meta
}

/// `responseStatus.code` from its JSON text: an integer from 0 to 65535
/// written in plain digits (a validated number has no leading zeros), else
/// `None` (a fraction, an exponent, a sign, a string, another type).
fn status_code(raw: &[u8]) -> Option<u16> {
    if raw.is_empty() || raw.len() > 5 {
        return None;
    }
    raw.iter()
        .try_fold(0u32, |v, &b| {
            b.is_ascii_digit().then(|| v * 10 + u32::from(b - b'0'))
        })
        .and_then(|v| u16::try_from(v).ok())
}

#[cfg(test)]
mod tests;
