//! An `audit.k8s.io/v1` EventList
//! (<https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-EventList>),
//! as the API server's webhook sends it. A whole webhook batch is relayed in
//! its received bytes; this builds the body for a part of one (when a
//! rejected batch is split to find the refused events).

use super::EventRef;

/// The `Content-Type` of an EventList body.
pub const CONTENT_TYPE: &str = "application/json";

/// Appends an EventList holding `events` to `out`.
pub(crate) fn encode(events: &[EventRef], out: &mut Vec<u8>) {
    const HEAD: &[u8] =
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;
    out.reserve(super::raw_len(events) + events.len() + HEAD.len() + 2);
    out.extend_from_slice(HEAD);
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.event().raw);
    }
    out.extend_from_slice(b"]}");
}
