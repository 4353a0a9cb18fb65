//! JSON lines: each event's bytes followed by `\n`
//! (<https://github.com/ndjson/ndjson-spec>), `Content-Type:
//! application/x-ndjson`.

use super::EventRef;

/// The `Content-Type` of an NDJSON body.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Appends `events` to `out`, one per line.
pub(crate) fn encode(events: &[EventRef], out: &mut Vec<u8>) {
    out.reserve(super::raw_len(events) + events.len());
    for e in events {
        out.extend_from_slice(&e.event().raw);
        out.push(b'\n');
    }
}
