//! Encodings: how a sink places each event's own bytes in a destination's
//! envelope. Each file here is pure code, one envelope: it writes the bytes
//! the decoder kept for each event (never re-serialised) between the
//! envelope's own bytes, and leaves transport (requests, retries, TLS,
//! compression) to the sink that uses it.
//!
//! - [`passthrough`]: an `audit.k8s.io/v1` EventList (parts of a webhook batch).
//! - [`ndjson`]: JSON lines.
//! - [`json_array`]: one JSON array.
//! - [`elasticsearch`]: Elasticsearch/OpenSearch `_bulk` `create` actions.
//! - [`splunk_hec`]: Splunk HTTP Event Collector event envelopes.
//! - [`syslog`]: RFC 5424 syslog messages (JSON or CEF as MSG), framed for a stream.
//! - [`timestamp`]: `stageTimestamp` as epoch time and calendar date.

pub mod elasticsearch;
pub mod json_array;
pub mod ndjson;
pub mod passthrough;
pub mod splunk_hec;
pub mod syslog;
pub mod timestamp;

use std::sync::Arc;

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
        String::from_utf8_lossy(self.audit_id_raw()).into_owned()
    }

    /// The event's `auditID` as received: a JSON string's content, escapes
    /// kept; empty when it has none.
    pub(crate) fn audit_id_raw(&self) -> &[u8] {
        let span = self.event().meta.audit_id;
        span.map(|s| s.get(&self.batch.body)).unwrap_or_default()
    }
}

/// Bytes of the events' own JSON, for sizing a body up front.
pub(crate) fn raw_len(events: &[EventRef]) -> usize {
    events.iter().map(|e| e.event().raw.len()).sum()
}
