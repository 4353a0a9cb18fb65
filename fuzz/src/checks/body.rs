//! Any bytes as a webhook request body, through the same unpacking and decode
//! as the HTTP handler (`source::body::unpack`).
//!
//! The first byte of an input chooses how the rest is sent and with which
//! limits, so one corpus covers all of them:
//!
//! | bits | meaning |
//! | --- | --- |
//! | 0–1 | 0: as is; 1: the rest *is* a gzip stream; 2: the rest gzipped here; 3: the rest gzipped here as two members |
//! | 2 | `max_decoded_bytes` just under the body's size instead of the default |
//! | 3 | `max_events` from bits 4–6 (0 to 7) instead of the default |
//! | 7 | `max_event_bytes` of 64 plus 32 times bits 4–6, instead of no limit |

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use kube_audit_forwarder::config::{HttpSourceConfig, QueueConfig};
use kube_audit_forwarder::decode::{DecodeError, DecodeOptions, Decoded};
use kube_audit_forwarder::source::RequestError;
use kube_audit_forwarder::source::body::unpack;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::oracle::{self, Expect};
use super::{assert_line, compact, parse, parse_lenient};

/// One input, read from the fuzzer's bytes.
#[derive(Debug)]
pub struct Case {
    /// The bytes as they arrive on the wire.
    pub wire: Vec<u8>,
    /// Whether they are sent with `Content-Encoding: gzip`.
    pub gzip: bool,
    /// `max_decoded_bytes`.
    pub limit: u64,
    /// The decode limits.
    pub opts: DecodeOptions,
}

impl Case {
    /// Reads the mode byte and builds the wire bytes.
    pub fn new(data: &[u8]) -> Self {
        let (mode, rest) = data.split_first().map_or((0, data), |(m, r)| (*m, r));
        let gz = |parts: &[&[u8]]| {
            let mut out = Vec::new();
            for part in parts {
                let mut e = GzEncoder::new(Vec::new(), Compression::fast());
                e.write_all(part).expect("gzip into memory");
                out.extend(e.finish().expect("gzip into memory"));
            }
            out
        };
        let (wire, gzip) = match mode & 3 {
            0 => (rest.to_vec(), false),
            1 => (rest.to_vec(), true),
            2 => (gz(&[rest]), true),
            _ => {
                let (a, b) = rest.split_at(rest.len() / 2);
                (gz(&[a, b]), true)
            }
        };
        let defaults = HttpSourceConfig::default();
        let limit = if mode & 4 != 0 {
            (rest.len() as u64).saturating_sub(1).max(1)
        } else {
            defaults.max_decoded_bytes
        };
        let bits = usize::from((mode >> 4) & 7);
        let opts = DecodeOptions {
            max_events: if mode & 8 != 0 {
                bits
            } else {
                QueueConfig::default().capacity_events
            },
            max_event_bytes: if mode & 0x80 != 0 { 64 + 32 * bits } else { 0 },
        };
        Self {
            wire,
            gzip,
            limit,
            opts,
        }
    }

    /// What the handler would do with it.
    pub fn run(&self) -> Result<(Bytes, Decoded), RequestError> {
        unpack(
            Bytes::copy_from_slice(&self.wire),
            self.gzip,
            self.limit,
            &self.opts,
        )
    }

    /// The decompressed body, found independently of the handler, if the wire
    /// bytes are gzip; capped a little over the limit.
    pub fn plain(&self) -> Option<Vec<u8>> {
        if !self.gzip {
            return Some(self.wire.clone());
        }
        let mut out = Vec::new();
        MultiGzDecoder::new(&self.wire[..])
            .take(self.limit + 1)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    }
}

/// Runs and checks one input from the `decode` target.
pub fn check(data: &[u8]) {
    let case = Case::new(data);
    let result = case.run();
    check_result(&case, result);
}

/// Checks what the handler's unpack-and-decode returned for `case`.
pub fn check_result(case: &Case, result: Result<(Bytes, Decoded), RequestError>) {
    let plain = case.plain();
    let (body, decoded) = match result {
        Err(e) => return check_refusal(case, plain.as_deref(), e),
        Ok(ok) => ok,
    };
    let plain = plain.expect("an accepted body was gzip");
    let (fixed, repairs) = oracle::go_utf8(&plain);
    assert_eq!(
        &fixed[..],
        &body[..],
        "the body decoded is not the body sent (with invalid UTF-8 replaced as Go does)"
    );
    assert!(
        plain.len() as u64 <= case.limit,
        "body over max_decoded_bytes"
    );
    let events = &decoded.events;
    assert!(
        events.len() <= case.opts.max_events,
        "more events than max_events"
    );
    let out: usize = events.iter().map(|e| e.raw.len()).sum();
    assert!(
        out <= body.len(),
        "{out} bytes of events from a {} byte body",
        body.len()
    );
    for e in events {
        assert_line(&e.raw);
        for span in [
            e.meta.audit_id,
            e.meta.verb,
            e.meta.username,
            e.meta.namespace,
            e.meta.resource,
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                (span.start as usize + span.len as usize) <= body.len(),
                "routing field outside the body"
            );
        }
    }
    match oracle::split(&body) {
        Expect::Items(items, not_objects) => {
            assert_eq!(
                decoded.not_objects, not_objects,
                "items that are not objects"
            );
            // An item's text is a slice of the body: its offset is where it lies.
            let repaired = items
                .iter()
                .filter(|item| {
                    let from = item.as_ptr() as usize - body.as_ptr() as usize;
                    repairs
                        .iter()
                        .any(|&r| (from..from + item.len()).contains(&r))
                })
                .count();
            assert_eq!(
                decoded.repaired, repaired,
                "events with invalid UTF-8 replaced"
            );
            check_items(case, &items, &decoded)
        }
        other => panic!(
            "accepted {} events from a body that must be refused: {other:?}",
            events.len()
        ),
    }
}

/// Each item comes out as its own bytes less whitespace; with `max_event_bytes`,
/// an item over the limit comes out truncated as the API server does, or not
/// at all (reported as dropped).
fn check_items(case: &Case, items: &[&str], decoded: &Decoded) {
    let limit = case.opts.max_event_bytes;
    let mut out = decoded.events.iter();
    let (mut truncated, mut dropped) = (0, 0);
    for item in items {
        let want = compact(item.as_bytes());
        if limit == 0 || want.len() <= limit {
            let got = out.next().expect("an item is missing from the output");
            assert_eq!(
                String::from_utf8_lossy(&got.raw),
                String::from_utf8_lossy(&want),
                "an item changed on its way through"
            );
            assert_eq!(
                parse_lenient(&got.raw).ok(),
                parse_lenient(item.as_bytes()).ok()
            );
            continue;
        }
        let shortened = truncated_value(item);
        let next = out.clone().next();
        match (shortened, next) {
            (Some(v), Some(got)) if parse_lenient(&got.raw).ok().as_ref() == Some(&v) => {
                assert!(
                    got.raw.len() <= limit,
                    "truncated event still over the limit"
                );
                out.next();
                truncated += 1;
            }
            _ => dropped += 1,
        }
    }
    assert!(out.next().is_none(), "more events out than items in");
    assert_eq!(decoded.truncated, truncated, "truncated count");
    assert_eq!(decoded.dropped.len(), dropped, "dropped count");
}

/// The value kube-apiserver's truncating backend makes of an event object:
/// `requestObject` and `responseObject` removed, the annotation
/// `audit.k8s.io/truncated: "true"` added. `None` when it cannot be truncated
/// (not an object, or `annotations` neither an object nor `null`). Keys match
/// as written, as the decoder matches them; a repeated key's last value counts
/// when the result is read.
fn truncated_value(item: &str) -> Option<Value> {
    const MARK: &str = "audit.k8s.io/truncated";
    if !item.starts_with('{') {
        return None;
    }
    let value = |raw: &RawValue| parse_lenient(raw.get().as_bytes()).expect("valid JSON");
    let mut obj = Map::new();
    let mut annotated = false;
    for (key, plain, raw) in oracle::members(item) {
        match (plain, key.as_str()) {
            (true, "requestObject" | "responseObject") => {}
            (true, "annotations") => {
                annotated = true;
                let mut notes = Map::new();
                notes.insert(MARK.into(), "true".into());
                match raw.get().as_bytes().first() {
                    Some(b'n') => {}
                    Some(b'{') => {
                        for (k, p, v) in oracle::members(raw.get()) {
                            if !(p && k == MARK) {
                                notes.insert(k, value(v));
                            }
                        }
                    }
                    _ => return None,
                }
                obj.insert(key, notes.into());
            }
            _ => {
                obj.insert(key, value(raw));
            }
        }
    }
    if !annotated {
        let mut notes = Map::new();
        notes.insert(MARK.into(), "true".into());
        obj.insert("annotations".into(), notes.into());
    }
    Some(obj.into())
}

/// A refused body: a 4xx answer with a reason and a JSON error body, for a
/// reason the reference agrees with.
fn check_refusal(case: &Case, plain: Option<&[u8]>, e: RequestError) {
    agrees_with_reference(case, plain, &e);
    let status = e.status().as_u16();
    assert!(matches!(status, 400 | 413), "refused with {status}: {e}");
    let reason = e.reason();
    let resp = e.into_response(1);
    assert_eq!(resp.status().as_u16(), status);
    let json = parse(&full_body(resp)).expect("the error body is JSON");
    assert_eq!(json["reason"], reason);
    assert!(json["error"].as_str().is_some_and(|s| !s.is_empty()));
}

fn agrees_with_reference(case: &Case, plain: Option<&[u8]>, e: &RequestError) {
    let Some(plain) = plain else {
        assert!(
            matches!(e, RequestError::InvalidGzip(_)),
            "not gzip, refused as {e:?}"
        );
        return;
    };
    if plain.len() as u64 > case.limit {
        assert!(
            matches!(e, RequestError::DecodedTooLarge { .. }),
            "over the limit, refused as {e:?}"
        );
        return;
    }
    let RequestError::Decode(d) = e else {
        panic!("a body within limits refused as {e:?}");
    };
    let (fixed, _) = oracle::go_utf8(plain);
    match (oracle::split(&fixed), d) {
        (Expect::Empty, DecodeError::Empty)
        | (Expect::Refused(_), DecodeError::Json(_) | DecodeError::NotAnEventList(_)) => {}
        // A body refused anyway may be refused for its invalid UTF-8 first
        // (a text that opens with a scalar is checked whole before it is
        // repaired).
        (Expect::Refused(_), DecodeError::InvalidUtf8 { .. }) if fixed != plain => {}
        // Counting stops at the limit, possibly before a later fault is seen.
        (Expect::Items(items, _), DecodeError::TooManyEvents { count, max })
            if items.len() > *max && count > max => {}
        (Expect::Refused(_), DecodeError::TooManyEvents { .. }) => {}
        (want, got) => panic!(
            "refused as {got:?} ({}), the reference says {want:?}",
            got.reason()
        ),
    }
}

/// The bytes of a `Full` body, which is ready at once.
fn full_body(resp: http::Response<http_body_util::Full<Bytes>>) -> Bytes {
    use http_body_util::BodyExt;
    use std::future::Future;
    let mut fut = std::pin::pin!(resp.into_body().collect());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
        _ => unreachable!("a Full body is ready at once"),
    }
}
