//! Elasticsearch/OpenSearch `_bulk` bodies and answers
//! (<https://www.elastic.co/docs/api/doc/elasticsearch/operation/operation-bulk>;
//! OpenSearch's `_bulk` is the same protocol).
//!
//! Each event becomes two NDJSON lines: a `create` action naming the index
//! (or data stream) and an `_id` made of the event's `auditID` and `stage`,
//! then the event's own bytes as the document source. `create` with a fixed
//! `_id` makes a re-sent event harmless: the second copy is answered 409
//! (`version_conflict_engine_exception`), which means it is already stored.
//! An event without an `auditID` gets no `_id` (the cluster makes one up, and
//! a re-send may duplicate it).
//!
//! The answer is `200` even when items failed: `{"errors":true,"items":[…]}`
//! with one `{"create":{"status":…,"error":{"type":…,"reason":…}}}` per
//! action, in request order. [`read_answer`] reads every item.

use serde::Deserialize;

use super::EventRef;
use super::timestamp::{Timestamp, top_level_strings};
use crate::config::ElasticsearchConfig;

/// The `Content-Type` of a bulk body.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The path and query, after the endpoint's own, that bulk requests go to:
/// `filter_path` (the common `filter_path` response option) keeps only what
/// is read of each item, a third of a full answer's bytes.
pub const PATH: &str = "/_bulk?filter_path=items.*.status,items.*.error.type,items.*.error.reason";

/// A built encoding: the index name pattern.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// The index name, JSON-string-escaped, with its `%` patterns.
    index: String,
    /// Whether the name has a date pattern.
    dated: bool,
}

impl Bulk {
    /// From the sink's `elasticsearch` settings (validated).
    pub fn new(cfg: &ElasticsearchConfig) -> Self {
        let quoted = serde_json::to_string(&cfg.index).unwrap_or_default();
        let index = quoted.trim_matches('"').to_owned();
        let dated = ["%Y", "%m", "%d", "%H"].iter().any(|p| index.contains(p));
        Self { index, dated }
    }

    /// Appends the actions and sources for `events` to `out`.
    pub(crate) fn encode(&self, events: &[EventRef], out: &mut Vec<u8>) {
        out.reserve(super::raw_len(events) + events.len() * (self.index.len() + 110));
        let mut now: Option<Timestamp> = None;
        for e in events {
            let raw = &e.event().raw;
            let [ts, stage] = top_level_strings(raw, [b"stageTimestamp", b"stage"]);
            out.extend_from_slice(br#"{"create":{"_index":""#);
            if self.dated {
                let t = ts
                    .and_then(Timestamp::parse)
                    .unwrap_or_else(|| *now.get_or_insert_with(Timestamp::now));
                self.write_index(t, out);
            } else {
                out.extend_from_slice(self.index.as_bytes());
            }
            out.push(b'"');
            let id = e.audit_id_raw();
            if !id.is_empty() {
                out.extend_from_slice(br#","_id":""#);
                out.extend_from_slice(id);
                out.push(b'-');
                out.extend_from_slice(stage.unwrap_or_default());
                out.push(b'"');
            }
            out.extend_from_slice(b"}}\n");
            out.extend_from_slice(raw);
            out.push(b'\n');
        }
    }

    fn write_index(&self, t: Timestamp, out: &mut Vec<u8>) {
        use std::io::Write;
        let (y, m, d, h) = t.utc();
        let mut rest = self.index.as_bytes();
        while let Some(at) = rest.iter().position(|&b| b == b'%') {
            out.extend_from_slice(&rest[..at]);
            // Writing into a Vec cannot fail.
            let _ = match rest.get(at + 1) {
                Some(b'Y') => write!(out, "{y:04}"),
                Some(b'm') => write!(out, "{m:02}"),
                Some(b'd') => write!(out, "{d:02}"),
                Some(b'H') => write!(out, "{h:02}"),
                _ => write!(out, "%"),
            };
            rest = rest.get(at + 2..).unwrap_or_default();
        }
        out.extend_from_slice(rest);
    }
}

/// What the cluster did with one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Stored now (`201`, or any 2xx).
    Stored,
    /// Already stored by an earlier request (`409` on `create`).
    AlreadyStored,
    /// Not stored for now: `429` (too many requests), a 5xx, or a refusal of
    /// the sink's credentials (401, 403); to be sent again.
    Retry(u16),
    /// Refused for its content (a 400 mapping error, say): never stored.
    Refused {
        /// The item's status.
        status: u16,
        /// `error.type` and `error.reason`.
        error: String,
    },
}

/// A bulk answer that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// Not the bulk answer's JSON.
    #[error("not a bulk answer: {0}")]
    Json(#[from] serde_json::Error),
    /// Another number of items than actions sent.
    #[error("the bulk answer has {got} items for {sent} actions")]
    Count {
        /// Items in the answer.
        got: usize,
        /// Actions sent.
        sent: usize,
    },
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, AnswerItem>>,
}

#[derive(Deserialize)]
struct AnswerItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Reads a 2xx bulk answer to `sent` actions: one [`Item`] per action, in order.
///
/// # Errors
///
/// [`AnswerError`] when `body` is not a bulk answer for `sent` actions.
pub fn read_answer(body: &[u8], sent: usize) -> Result<Vec<Item>, AnswerError> {
    let answer: Answer = serde_json::from_slice(body)?;
    if answer.items.len() != sent {
        return Err(AnswerError::Count {
            got: answer.items.len(),
            sent,
        });
    }
    let items = answer.items.into_iter().map(|action| {
        let Some(item) = action.into_values().next() else {
            return Item::Retry(0);
        };
        match item.status {
            200..=299 => Item::Stored,
            409 => Item::AlreadyStored,
            s @ (429 | 500..=599 | 401 | 403) => Item::Retry(s),
            status => Item::Refused {
                status,
                error: describe(item.error.as_ref()),
            },
        }
    });
    Ok(items.collect())
}

/// `type: reason` of an item's `error`.
fn describe(error: Option<&serde_json::Value>) -> String {
    let Some(e) = error else {
        return String::new();
    };
    let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let mut out = format!("{}: {}", text("type"), text("reason"));
    out.truncate(300);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_status_is_read() {
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"_index":"a","_id":"1","status":201,"result":"created"}},
            {"create":{"_index":"a","_id":"2","status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"create":{"_index":"a","_id":"3","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_index":"a","_id":"4","status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field"}}},
            {"create":{"_index":"a","_id":"5","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}]}"#;
        let items = read_answer(body, 5).unwrap();
        assert_eq!(
            items,
            vec![
                Item::Stored,
                Item::AlreadyStored,
                Item::Retry(429),
                Item::Refused {
                    status: 400,
                    error: "document_parsing_exception: failed to parse field".into()
                },
                Item::Retry(503),
            ]
        );
        assert!(matches!(
            read_answer(body, 4),
            Err(AnswerError::Count { got: 5, sent: 4 })
        ));
        assert!(read_answer(b"<html>", 1).is_err());
        // An answer cut down by filter_path reads the same.
        let filtered = br#"{"items":[{"create":{"status":201}},{"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"x"}}}]}"#;
        assert_eq!(
            read_answer(filtered, 2).unwrap(),
            vec![
                Item::Stored,
                Item::Refused {
                    status: 400,
                    error: "document_parsing_exception: x".into()
                }
            ]
        );
    }

    #[test]
    fn index_names_take_the_date_of_the_stage_timestamp() {
        let b = Bulk::new(&ElasticsearchConfig {
            index: "audit-%Y.%m.%d-%H%%".into(),
            ..ElasticsearchConfig::default()
        });
        let mut out = Vec::new();
        b.write_index(
            Timestamp::parse(b"2024-05-01T10:00:00.5Z").unwrap(),
            &mut out,
        );
        assert_eq!(out, b"audit-2024.05.01-10%");
    }
}
