//! One audit event as it leaves the decoder: its bytes and the fields sinks and
//! routes look at.
//!
//! The fields come from the `audit.k8s.io/v1` `Event` type
//! (<https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Event>):
//! `level`, `stage`, `auditID`, `verb`, `user.username`, `objectRef.namespace`,
//! `objectRef.resource` and `responseStatus.code`, and what an audit policy
//! matches on (`user.groups`, `objectRef.apiGroup`, `subresource`, `name`,
//! `requestURI`). They are kept as spans of the request body, not copied.

use bytes::Bytes;

/// A byte range of the request body that holds a JSON string's content, between
/// its quotes and with its escapes as received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte in the request body.
    pub start: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Span {
    /// The bytes this span covers in `body` (the body the event was decoded from).
    /// Empty when the span does not lie inside `body`.
    pub fn get<'a>(&self, body: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        body.get(start..start + self.len as usize)
            .unwrap_or_default()
    }
}

/// `Event.level`: how much of the request the API server recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `Metadata`: user, verb, object reference, status; no bodies.
    Metadata,
    /// `Request`: also `requestObject`.
    Request,
    /// `RequestResponse`: also `responseObject`.
    RequestResponse,
    /// Any other string (`None` never reaches a webhook).
    Other,
}

/// `Event.stage`: the point in the handling of the request the event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `RequestReceived`: before the request is handled.
    RequestReceived,
    /// `ResponseStarted`: headers sent on a long-running request (watch, exec).
    ResponseStarted,
    /// `ResponseComplete`: the response body is done.
    ResponseComplete,
    /// `Panic`: the handler panicked.
    Panic,
    /// Any other string.
    Other,
}

impl Level {
    pub(crate) fn from_raw(raw: &[u8]) -> Self {
        match raw {
            b"Metadata" => Self::Metadata,
            b"Request" => Self::Request,
            b"RequestResponse" => Self::RequestResponse,
            _ => Self::Other,
        }
    }
}

impl Stage {
    pub(crate) fn from_raw(raw: &[u8]) -> Self {
        match raw {
            b"RequestReceived" => Self::RequestReceived,
            b"ResponseStarted" => Self::ResponseStarted,
            b"ResponseComplete" => Self::ResponseComplete,
            b"Panic" => Self::Panic,
            _ => Self::Other,
        }
    }
}

/// The routing fields of one event. A field the event lacks (or holds with
/// another JSON type than the schema's) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// `level`.
    pub level: Option<Level>,
    /// `stage`.
    pub stage: Option<Stage>,
    /// `responseStatus.code`, when it is an integer from 0 to 65535.
    pub code: Option<u16>,
    /// `auditID`.
    pub audit_id: Option<Span>,
    /// `verb`.
    pub verb: Option<Span>,
    /// `user.username`.
    pub username: Option<Span>,
    /// `objectRef.namespace`.
    pub namespace: Option<Span>,
    /// `objectRef.resource`.
    pub resource: Option<Span>,
    /// `objectRef.apiGroup`.
    pub api_group: Option<Span>,
    /// `objectRef.subresource`.
    pub subresource: Option<Span>,
    /// `objectRef.name`.
    pub name: Option<Span>,
    /// `requestURI`.
    pub request_uri: Option<Span>,
    /// `user.groups`: the whole array, brackets included (not a string's
    /// content like the other spans).
    pub groups: Option<Span>,
    /// Whether the event has an `objectRef` object (a resource request).
    pub has_object_ref: bool,
    /// Whether the event has `requestObject` or `responseObject`.
    pub has_bodies: bool,
}

/// One event, ready for a sink.
#[derive(Debug, Clone)]
pub struct Event {
    /// The item's own JSON bytes with insignificant whitespace removed: numbers,
    /// key order and string escapes exactly as received. A slice of the request
    /// body when the item was already compact. Never contains a raw newline.
    pub raw: Bytes,
    /// The fields read from it, as spans of the request body.
    pub meta: EventMeta,
}
