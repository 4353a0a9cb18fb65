//! Request bodies of an HTTP sink: the configured encoding (from
//! [`crate::sink::encode`]) and gzip.

use std::io::Write;

use bytes::Bytes;

use crate::config::{Compression, Encoding, HttpSinkConfig};
use crate::sink::encode::{EventRef, elasticsearch, json_array, ndjson, passthrough, splunk_hec};

/// What a sink's requests carry.
pub(crate) enum Format {
    /// Webhook batches as received; parts of them as EventLists.
    Passthrough,
    /// JSON lines.
    Ndjson,
    /// A JSON array.
    JsonArray,
    /// Elasticsearch/OpenSearch `_bulk` actions.
    Bulk(elasticsearch::Bulk),
    /// Splunk HEC envelopes.
    Hec(splunk_hec::Hec),
}

impl Format {
    pub(crate) fn new(cfg: &HttpSinkConfig) -> Self {
        match cfg.encoding {
            Encoding::Passthrough => Self::Passthrough,
            Encoding::Ndjson => Self::Ndjson,
            Encoding::JsonArray => Self::JsonArray,
            Encoding::Elasticsearch => Self::Bulk(elasticsearch::Bulk::new(&cfg.elasticsearch)),
            Encoding::SplunkHec => Self::Hec(splunk_hec::Hec::new(&cfg.splunk_hec)),
        }
    }

    /// The `Content-Type` of a body.
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Self::Passthrough => passthrough::CONTENT_TYPE,
            Self::Ndjson => ndjson::CONTENT_TYPE,
            Self::JsonArray => json_array::CONTENT_TYPE,
            Self::Bulk(_) => elasticsearch::CONTENT_TYPE,
            Self::Hec(_) => splunk_hec::CONTENT_TYPE,
        }
    }

    /// The path appended to each endpoint URL, for the destination APIs.
    pub(crate) fn path(&self) -> Option<&'static str> {
        match self {
            Self::Bulk(_) => Some(elasticsearch::PATH),
            Self::Hec(_) => Some(splunk_hec::EVENT_PATH),
            _ => None,
        }
    }

    /// Whether the answer's body is read (the destinations say per event or
    /// in a code what became of the events).
    pub(crate) fn reads_answers(&self) -> bool {
        matches!(self, Self::Bulk(_) | Self::Hec(_))
    }

    /// The body for `events`, compressed as configured. For `passthrough`
    /// this is only used for parts of a rejected batch (an EventList of
    /// them); a whole batch is sent as the request's own body.
    pub(crate) fn encode(&self, events: &[EventRef], compression: Compression) -> Bytes {
        let mut out = Vec::new();
        match self {
            Self::Passthrough => passthrough::encode(events, &mut out),
            Self::Ndjson => ndjson::encode(events, &mut out),
            Self::JsonArray => json_array::encode(events, &mut out),
            Self::Bulk(b) => b.encode(events, &mut out),
            Self::Hec(h) => h.encode(events, &mut out),
        }
        compress(Bytes::from(out), compression)
    }
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
