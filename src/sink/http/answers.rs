//! What a 2xx answer says about each event, for the destinations that say
//! more than their status: Elasticsearch's `_bulk` (a status per item) and
//! Splunk HEC with indexer acknowledgement (an `ackId` to confirm later).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::body::Format;
use super::{HttpSink, append_path, error_chain, read_body};
use crate::sink::encode::elasticsearch::{self, Item};
use crate::sink::encode::{EventRef, splunk_hec};
use crate::sink::retry::Backoff;

impl HttpSink {
    /// Settles a part its endpoint `endpoint` answered 2xx with `answer`:
    /// counts what is delivered, dead-letters what is refused, and returns
    /// what is to be sent again (after a pause), if anything.
    pub(super) async fn accepted(
        &self,
        part: Vec<EventRef>,
        raw_bytes: usize,
        endpoint: usize,
        answer: Bytes,
        backoff: &mut Backoff,
    ) -> Option<Vec<EventRef>> {
        match &self.format {
            Format::Bulk(_) => self.bulk_items(part, endpoint, &answer, backoff).await,
            Format::Hec(_) if self.hec_ack.is_some() => {
                self.hec_acknowledged(part, raw_bytes, endpoint, &answer, backoff)
                    .await
            }
            _ => {
                self.delivered(part.len(), raw_bytes);
                None
            }
        }
    }

    /// Reads every item of a bulk answer: stored and already stored (409)
    /// items are delivered, 429/5xx items are sent again, items refused for
    /// their content are dead-lettered.
    async fn bulk_items(
        &self,
        part: Vec<EventRef>,
        endpoint: usize,
        answer: &[u8],
        backoff: &mut Backoff,
    ) -> Option<Vec<EventRef>> {
        let items = match elasticsearch::read_answer(answer, part.len()) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, events = part.len(), "unreadable bulk answer; sending the events again");
                return self.again(part, "bad_response", backoff).await;
            }
        };
        let (mut stored, mut stored_bytes, mut duplicates) = (0, 0, 0);
        let mut retry = Vec::new();
        let mut worst_retry = 0;
        let mut refused: BTreeMap<u16, (Vec<EventRef>, String)> = BTreeMap::new();
        for (event, item) in part.into_iter().zip(items) {
            match item {
                Item::Stored | Item::AlreadyStored => {
                    duplicates += usize::from(item == Item::AlreadyStored);
                    stored += 1;
                    stored_bytes += event.event().raw.len() + 1;
                }
                Item::Retry(status) => {
                    // Credentials first: they are what an operator must fix.
                    worst_retry = match (worst_retry, status) {
                        (401 | 403, _) => worst_retry,
                        (_, 401 | 403) => status,
                        _ => worst_retry.max(status),
                    };
                    retry.push(event);
                }
                Item::Refused { status, error } => {
                    let group = refused.entry(status).or_insert_with(|| (Vec::new(), error));
                    group.0.push(event);
                }
            }
        }
        if duplicates > 0 {
            tracing::debug!(sink = %self.name, events = duplicates, "events already stored (409), counted as delivered");
        }
        self.delivered(stored, stored_bytes);
        for (status, (events, error)) in refused {
            tracing::error!(sink = %self.name, status, error = %error, events = events.len(), "bulk items refused for their content");
            self.dead_letter(&events, status).await;
        }
        if retry.is_empty() {
            backoff.reset();
            return None;
        }
        tracing::debug!(sink = %self.name, status = worst_retry, events = retry.len(), "bulk items not stored for now; sending them again");
        let reason = match worst_retry {
            401 | 403 => {
                let label = &self.endpoints.list[endpoint].label;
                self.log_unauthorized(label, worst_retry);
                "unauthorized"
            }
            500.. => "http_5xx",
            _ => "http_4xx",
        };
        self.again(retry, reason, backoff).await
    }

    /// Counts a failed attempt for `events` and pauses before they go again.
    async fn again(
        &self,
        events: Vec<EventRef>,
        reason: &str,
        backoff: &mut Backoff,
    ) -> Option<Vec<EventRef>> {
        self.metrics.error(reason, events.len() as u64);
        self.metrics.retries.inc();
        tokio::time::sleep(backoff.next_delay()).await;
        Some(events)
    }

    /// Waits for HEC's indexer acknowledgement of a part, polling
    /// `/services/collector/ack` on the endpoint that took it; the part is
    /// delivered once acknowledged, and sent again when no acknowledgement
    /// comes within `ack_timeout_secs`.
    async fn hec_acknowledged(
        &self,
        part: Vec<EventRef>,
        raw_bytes: usize,
        endpoint: usize,
        answer: &[u8],
        backoff: &mut Backoff,
    ) -> Option<Vec<EventRef>> {
        let Some(cfg) = &self.hec_ack else {
            return None;
        };
        let splunk_hec::Verdict::Taken(Some(id)) = splunk_hec::verdict(200, answer) else {
            tracing::error!(sink = %self.name, "HEC answered without an ackId: is indexer acknowledgement enabled on the token? sending the events again");
            return self.again(part, "bad_response", backoff).await;
        };
        let deadline = Instant::now() + Duration::from_secs(cfg.ack_timeout_secs);
        let interval = Duration::from_millis(cfg.ack_interval_ms);
        let url = append_path(&self.endpoints.list[endpoint].url, splunk_hec::ACK_PATH);
        let poll = Bytes::from(splunk_hec::ack_request(&[id]));
        while Instant::now() < deadline {
            tokio::time::sleep(interval).await;
            let answer = self.clients[endpoint]
                .post(url.clone())
                .headers(http::HeaderMap::clone(&self.headers.get()))
                .body(poll.clone())
                .send()
                .await;
            match answer {
                Ok(mut resp) if resp.status().is_success() => {
                    let body = read_body(&mut resp, 1 << 20).await.unwrap_or_default();
                    if splunk_hec::acked(&body).contains(&id) {
                        backoff.reset();
                        self.delivered(part.len(), raw_bytes);
                        return None;
                    }
                }
                Ok(resp) => {
                    tracing::debug!(sink = %self.name, status = resp.status().as_u16(), "acknowledgement poll refused")
                }
                Err(e) => {
                    tracing::debug!(sink = %self.name, error = %error_chain(&e), "acknowledgement poll failed")
                }
            }
        }
        tracing::warn!(sink = %self.name, ack_id = id, events = part.len(), timeout_secs = cfg.ack_timeout_secs, "no indexer acknowledgement in time; sending the events again");
        self.again(part, "ack_timeout", backoff).await
    }
}
