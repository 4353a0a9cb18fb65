//! One JSON array of the events (RFC 8259), `Content-Type: application/json`.

use super::EventRef;

/// The `Content-Type` of a JSON array body.
pub const CONTENT_TYPE: &str = "application/json";

/// Appends `[event,event,…]` to `out`.
pub(crate) fn encode(events: &[EventRef], out: &mut Vec<u8>) {
    out.reserve(super::raw_len(events) + events.len() + 2);
    out.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.event().raw);
    }
    out.push(b']');
}
