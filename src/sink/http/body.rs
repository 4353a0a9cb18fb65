//! Request bodies of an HTTP sink: the encodings and gzip.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Compression, Encoding};
use crate::decode::Event;
use crate::pipeline::Batch;

/// One event of a queued batch, by reference.
#[derive(Clone)]
pub(crate) struct EventRef {
    pub(crate) batch: Arc<Batch>,
    pub(crate) index: usize,
}

impl EventRef {
    pub(crate) fn event(&self) -> &Event {
        &self.batch.events[self.index]
    }

    /// The event's `auditID` as text (empty when it has none), for logs.
    pub(crate) fn audit_id(&self) -> String {
        let span = self.event().meta.audit_id;
        span.map(|s| String::from_utf8_lossy(s.get(&self.batch.body)).into_owned())
            .unwrap_or_default()
    }
}

/// The body for `events` in `encoding`, compressed as configured. For
/// `passthrough` this is only used for parts of a rejected batch (an EventList
/// of them); a whole batch is sent as the request's own body.
pub(crate) fn encode(events: &[EventRef], encoding: Encoding, compression: Compression) -> Bytes {
    let size: usize = events
        .iter()
        .map(|e| e.event().raw.len() + 1)
        .sum::<usize>()
        + 2;
    let mut out = Vec::with_capacity(size);
    match encoding {
        Encoding::JsonArray => {
            out.push(b'[');
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&e.event().raw);
            }
            out.push(b']');
        }
        Encoding::Ndjson => {
            for e in events {
                out.extend_from_slice(&e.event().raw);
                out.push(b'\n');
            }
        }
        Encoding::Passthrough => {
            // Part of a rejected batch, sent again to find the bad events: an
            // EventList of the same version the API server sends.
            out.extend_from_slice(
                br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#,
            );
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&e.event().raw);
            }
            out.extend_from_slice(b"]}");
        }
    }
    compress(Bytes::from(out), compression)
}

/// `body` gzipped when `compression` says so.
pub(crate) fn compress(body: Bytes, compression: Compression) -> Bytes {
    match compression {
        Compression::AsReceived | Compression::None => body,
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(&body);
            Bytes::from(enc.finish().unwrap_or_default())
        }
    }
}

/// The `Content-Type` of a body in `encoding`.
pub(crate) fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Ndjson => "application/x-ndjson",
        Encoding::Passthrough | Encoding::JsonArray => "application/json",
    }
}
