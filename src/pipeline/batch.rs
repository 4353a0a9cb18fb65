//! What one accepted webhook request becomes: its body and its events.

use bytes::Bytes;

use crate::decode::Event;

/// The events of one accepted request, shared by every sink queue.
#[derive(Debug)]
pub struct Batch {
    /// The request body as received (after decompression). Events that were
    /// already compact are slices of it; pass-through sinks can send it as is.
    pub body: Bytes,
    /// The events, in `items` order.
    pub events: Vec<Event>,
    retained_bytes: usize,
}

impl Batch {
    /// Makes a batch of `events` decoded from `body`.
    pub fn new(body: Bytes, events: Vec<Event>) -> Self {
        let outside_body: usize = events
            .iter()
            .filter(|e| !body.as_ptr_range().contains(&e.raw.as_ptr()))
            .map(|e| e.raw.len())
            .sum();
        let retained_bytes = body.len() + outside_body;
        Self {
            body,
            events,
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
