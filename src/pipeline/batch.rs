//! What one accepted webhook request becomes: its body and its events.

use bytes::Bytes;

use crate::decode::Event;

/// What the source knew of a request beyond its events: what a pass-through
/// sink needs to relay it as received, and what a disk buffer keeps of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The request target's path and query as received, e.g.
    /// `/post?timeout=30s` (RFC 9110 §7.1); empty when unknown.
    pub path_and_query: String,
    /// The body as received on the wire when it came with
    /// `Content-Encoding: gzip`; `None` when it came uncompressed (then
    /// [`Batch::body`] is the wire body).
    pub gzip_wire: Option<Bytes>,
    /// The listener the request came in on.
    pub listener: Listener,
}

/// A webhook listener (`source.http` or `source.https`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Listener {
    /// The plain HTTP listener.
    #[default]
    Http,
    /// The HTTPS listener.
    Https,
}

/// The events of one accepted request, shared by every sink queue.
#[derive(Debug)]
pub struct Batch {
    /// The request body as received (after decompression). Events that were
    /// already compact are slices of it; pass-through sinks can send it as is.
    pub body: Bytes,
    /// The events, in `items` order.
    pub events: Vec<Event>,
    /// The request it came in.
    pub origin: Origin,
    retained_bytes: usize,
}

impl Batch {
    /// Makes a batch of `events` decoded from `body`, of a request whose
    /// origin is unknown.
    pub fn new(body: Bytes, events: Vec<Event>) -> Self {
        Self::with_origin(body, events, Origin::default())
    }

    /// Makes a batch of `events` decoded from `body`, received as `origin`
    /// says.
    pub fn with_origin(body: Bytes, events: Vec<Event>, origin: Origin) -> Self {
        let outside_body: usize = events
            .iter()
            .filter(|e| !body.as_ptr_range().contains(&e.raw.as_ptr()))
            .map(|e| e.raw.len())
            .sum();
        let wire = origin.gzip_wire.as_ref().map_or(0, Bytes::len);
        let retained_bytes = body.len() + outside_body + wire + origin.path_and_query.len();
        Self {
            body,
            events,
            origin,
            retained_bytes,
        }
    }

    /// Bytes of memory the batch holds: the body plus any events re-encoded
    /// outside it. This is what a queue's `capacity_bytes` counts.
    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// Bytes of the events themselves, without framing.
    pub fn event_bytes(&self) -> usize {
        self.events.iter().map(|e| e.raw.len()).sum()
    }
}

impl Drop for Batch {
    /// Gives the list of events, and the body's buffer once nothing else
    /// holds it (the events are slices of it), back for a later request.
    fn drop(&mut self) {
        super::recycle::give_back_events(std::mem::take(&mut self.events));
        if self.body.len() >= super::recycle::MIN_BUFFER_BYTES
            && let Ok(buf) = std::mem::take(&mut self.body).try_into_mut()
        {
            super::recycle::give_back(buf);
        }
    }
}
