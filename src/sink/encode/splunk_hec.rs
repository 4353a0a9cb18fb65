//! Splunk HTTP Event Collector bodies and answers
//! (<https://docs.splunk.com/Documentation/Splunk/latest/Data/FormateventsforHTTPEventCollector>,
//! <https://docs.splunk.com/Documentation/Splunk/latest/Data/TroubleshootHTTPEventCollector>).
//!
//! Each event becomes one envelope, the envelopes stacked in one body:
//! `{"time":<stageTimestamp as epoch seconds>,"host":…,"source":…,
//! "sourcetype":…,"index":…,"fields":{…},"event":<the event's own bytes>}`.
//! Absent settings are left out (Splunk then uses the token's defaults); an
//! event without a readable `stageTimestamp` gets no `time` (Splunk uses the
//! time it receives it).
//!
//! Every answer carries `{"text":…,"code":N}`; with indexer acknowledgement
//! a success also carries `"ackId"`, confirmed later through
//! `/services/collector/ack` (`{"acks":[id]}` → `{"acks":{"id":true}}`).

use serde::Deserialize;

use super::EventRef;
use super::timestamp::{Timestamp, top_level_strings};
use crate::config::SplunkHecConfig;

/// The `Content-Type` of a HEC body.
pub const CONTENT_TYPE: &str = "application/json";

/// The path, after the endpoint's own, that events are posted to.
pub const EVENT_PATH: &str = "/services/collector/event";

/// The path, after the endpoint's own, that acknowledgements are polled at.
pub const ACK_PATH: &str = "/services/collector/ack";

/// A built encoding: the envelope's fixed part.
#[derive(Debug, Clone)]
pub struct Hec {
    /// `"host":…,…,"event":`, ready to copy.
    fixed: Vec<u8>,
}

impl Hec {
    /// From the sink's `splunk_hec` settings.
    pub fn new(cfg: &SplunkHecConfig) -> Self {
        let mut fixed = Vec::new();
        let mut field = |name: &str, value: &serde_json::Value| {
            fixed.extend_from_slice(format!("\"{name}\":{value},").as_bytes());
        };
        for (name, value) in [
            ("host", &cfg.host),
            ("source", &cfg.source),
            ("sourcetype", &Some(cfg.sourcetype.clone())),
            ("index", &cfg.index),
        ] {
            if let Some(v) = value {
                field(name, &serde_json::Value::from(v.as_str()));
            }
        }
        if !cfg.fields.is_empty() {
            let map: serde_json::Map<String, serde_json::Value> = cfg
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().into()))
                .collect();
            field("fields", &serde_json::Value::Object(map));
        }
        fixed.extend_from_slice(b"\"event\":");
        Self { fixed }
    }

    /// Appends one envelope per event to `out`.
    pub(crate) fn encode(&self, events: &[EventRef], out: &mut Vec<u8>) {
        out.reserve(super::raw_len(events) + events.len() * (self.fixed.len() + 32));
        for e in events {
            let raw = &e.event().raw;
            out.push(b'{');
            let [ts] = top_level_strings(raw, [b"stageTimestamp"]);
            if let Some(t) = ts.and_then(Timestamp::parse) {
                out.extend_from_slice(b"\"time\":");
                t.write_epoch(out);
                out.push(b',');
            }
            out.extend_from_slice(&self.fixed);
            out.extend_from_slice(raw);
            out.push(b'}');
        }
    }
}

/// What a HEC answer says about the events of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Taken (code 0); with acknowledgement on, the `ackId` to confirm.
    Taken(Option<u64>),
    /// The events are refused for their content (codes 5, 6, 12, 13, 15):
    /// split to find them, then dead-letter.
    Refused,
    /// The token is missing, invalid or disabled (codes 1–4, or 401/403
    /// without a code): retried, never dead-lettered.
    Unauthorized,
    /// The collector is busy or failing (codes 8, 9, 18–20, or a 5xx), or
    /// the sink's settings are refused (index 7, channel 10/11, ack 14):
    /// retried.
    Retry,
}

#[derive(Deserialize)]
struct Answer {
    code: Option<i64>,
    #[serde(rename = "ackId")]
    ack_id: Option<u64>,
}

/// Reads the answer to an event POST: its `status` and (bounded) body.
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    let code = answer.as_ref().and_then(|a| a.code);
    match (status, code) {
        (200..=299, None | Some(0)) => Verdict::Taken(answer.and_then(|a| a.ack_id)),
        (_, Some(1..=4)) | (401 | 403, _) => Verdict::Unauthorized,
        (_, Some(5 | 6 | 12 | 13 | 15)) => Verdict::Refused,
        // Without a code: a 400 is about the body, like the other HTTP encodings.
        (400 | 413, None) => Verdict::Refused,
        _ => Verdict::Retry,
    }
}

/// The `text` of an answer, for logs (at most 200 bytes).
pub fn text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Text {
        text: Option<String>,
        code: Option<i64>,
    }
    match serde_json::from_slice::<Text>(body) {
        Ok(Text { text, code }) => {
            let mut t = format!("{} (code {})", text.unwrap_or_default(), code.unwrap_or(-1));
            t.truncate(200);
            t
        }
        Err(_) => String::new(),
    }
}

/// The body of an acknowledgement poll for `ids`: `{"acks":[1,2]}`.
pub fn ack_request(ids: &[u64]) -> Vec<u8> {
    serde_json::json!({ "acks": ids }).to_string().into_bytes()
}

/// The ids an acknowledgement answer (`{"acks":{"1":true,"2":false}}`)
/// confirms; empty when it is not one.
pub fn acked(body: &[u8]) -> Vec<u64> {
    #[derive(Deserialize)]
    struct Acks {
        acks: std::collections::HashMap<String, bool>,
    }
    serde_json::from_slice::<Acks>(body)
        .map(|a| {
            a.acks
                .into_iter()
                .filter(|&(_, done)| done)
                .filter_map(|(id, _)| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A random channel GUID (RFC 9562 version 4 form), for `X-Splunk-Request-Channel`.
pub fn new_channel() -> String {
    let hex = |n: usize| -> String { (0..n).map(|_| fastrand::digit(16)).collect() };
    let variant = ['8', '9', 'a', 'b'][fastrand::usize(..4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        hex(8),
        hex(4),
        hex(3),
        hex(3),
        hex(12)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_troubleshooting_table_says() {
        let v = |status, body: &str| verdict(status, body.as_bytes());
        assert_eq!(
            v(200, r#"{"text":"Success","code":0}"#),
            Verdict::Taken(None)
        );
        assert_eq!(
            v(200, r#"{"text":"Success","code":0,"ackId":7}"#),
            Verdict::Taken(Some(7))
        );
        assert_eq!(
            v(503, r#"{"text":"Server is busy","code":9}"#),
            Verdict::Retry
        );
        assert_eq!(
            v(403, r#"{"text":"Invalid token","code":4}"#),
            Verdict::Unauthorized
        );
        assert_eq!(
            v(403, r#"{"text":"Token disabled","code":1}"#),
            Verdict::Unauthorized
        );
        assert_eq!(
            v(401, r#"{"text":"Token is required","code":2}"#),
            Verdict::Unauthorized
        );
        assert_eq!(
            v(
                400,
                r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#
            ),
            Verdict::Refused
        );
        assert_eq!(
            v(400, r#"{"text":"Event field is required","code":12}"#),
            Verdict::Refused
        );
        assert_eq!(
            v(400, r#"{"text":"Incorrect index","code":7}"#),
            Verdict::Retry
        );
        assert_eq!(
            v(400, r#"{"text":"Data channel is missing","code":10}"#),
            Verdict::Retry
        );
        assert_eq!(
            v(500, r#"{"text":"Internal server error","code":8}"#),
            Verdict::Retry
        );
        assert_eq!(v(502, "<html>bad gateway</html>"), Verdict::Retry);
    }

    #[test]
    fn acknowledgements_are_read_by_id() {
        assert_eq!(ack_request(&[1, 2]), br#"{"acks":[1,2]}"#);
        let mut got = acked(br#"{"acks":{"1":true,"2":false,"3":true}}"#);
        got.sort();
        assert_eq!(got, vec![1, 3]);
        assert!(acked(b"nope").is_empty());
        let c = new_channel();
        assert_eq!((c.len(), &c[14..15]), (36, "4"));
    }
}
