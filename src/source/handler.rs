//! Handling of one webhook request: checks, body, decode, admission, answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body;
use super::error::{RequestError, json_response};
use crate::config::HttpSourceConfig;
use crate::decode::{DecodeOptions, Decoded};
use crate::metrics::Metrics;
use crate::pipeline::{Batch, Origin, Pipeline};

/// Bodies larger than this are decompressed and decoded on the blocking pool,
/// so that they do not hold up other connections on the same worker.
const INLINE_DECODE_BYTES: usize = 256 << 10;

/// What every request of one listener shares.
pub struct Handler {
    paths: Vec<String>,
    max_body_bytes: u64,
    max_decoded_bytes: u64,
    body_timeout: Duration,
    decode: DecodeOptions,
    retry_after_secs: u64,
    pipeline: Arc<Pipeline>,
    metrics: Metrics,
    draining: CancellationToken,
    refusal_log: RateLimit,
}

impl Handler {
    /// A handler for the listener configured by `cfg`, feeding `pipeline`.
    /// Requests are refused with 503 once `draining` is cancelled.
    pub fn new(
        cfg: &HttpSourceConfig,
        max_event_bytes: usize,
        retry_after_secs: u64,
        pipeline: Arc<Pipeline>,
        metrics: Metrics,
        draining: CancellationToken,
    ) -> Self {
        Self {
            paths: cfg.paths.iter().map(|p| normalize(p).to_owned()).collect(),
            max_body_bytes: cfg.max_body_bytes,
            max_decoded_bytes: cfg.max_decoded_bytes,
            body_timeout: Duration::from_secs(cfg.body_read_timeout_secs),
            decode: DecodeOptions {
                max_events: pipeline.max_batch_events(),
                max_event_bytes,
            },
            retry_after_secs,
            pipeline,
            metrics,
            draining,
            refusal_log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Answers one request. Never fails: every error becomes its HTTP answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let result = self.accept(req).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(events) => {
                self.metrics.request(200, None, seconds);
                let body = format!(r#"{{"status":"accepted","events":{events}}}"#);
                json_response(StatusCode::OK, body.into_bytes())
            }
            Err(e) => {
                self.log(&e);
                self.metrics
                    .request(e.status().as_u16(), Some(e.reason()), seconds);
                e.into_response(self.retry_after_secs)
            }
        }
    }

    /// Answers a request with `e` without looking at it, counted and logged
    /// like any refusal.
    pub fn refuse(&self, e: RequestError) -> Response<Full<Bytes>> {
        self.log(&e);
        self.metrics
            .request(e.status().as_u16(), Some(e.reason()), 0.0);
        e.into_response(self.retry_after_secs)
    }

    async fn accept(&self, req: Request<Incoming>) -> Result<usize, RequestError> {
        if self.draining.is_cancelled() {
            return Err(RequestError::ShuttingDown);
        }
        if req.method() != Method::POST {
            return Err(RequestError::MethodNotAllowed(req.method().clone()));
        }
        let path = normalize(req.uri().path());
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p == path) {
            return Err(RequestError::NotFound(path.to_owned()));
        }
        let gzip = content_encoding_is_gzip(req.headers())?;
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.as_str().to_owned());
        check_content_type(req.headers())?;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(size) = declared.filter(|&n| n > self.max_body_bytes) {
            return Err(RequestError::BodyTooLarge {
                size,
                limit: self.max_body_bytes,
            });
        }
        if let Some(size) = declared {
            // Refuse, before keeping any of it, what could not be queued. The
            // client is most likely still sending the body: it is read and
            // let go (up to the body limits), so that the client gets the 503
            // on a connection it can reuse rather than a reset one.
            if let Err(refusal) = self.pipeline.wait_for_room(size as usize).await {
                let body = req.into_body();
                if body::discard(body, self.max_body_bytes, self.body_timeout).await {
                    return Err(RequestError::Refused(refusal));
                }
                return Err(RequestError::Busy(refusal));
            }
        }
        let wire = body::read(
            req.into_body(),
            self.max_body_bytes,
            self.body_timeout,
            declared,
        )
        .await?;
        let (body, decoded) = self.decode(wire.clone(), gzip).await?;
        let dropped = decoded.dropped.len() as u64;
        let dropped_ids = dropped_ids(&body, &decoded);
        let truncated = decoded.truncated as u64;
        let events = decoded.events.len();
        let origin = Origin {
            path_and_query,
            gzip_wire: gzip.then(|| wire.clone()),
        };
        self.pipeline
            .admit(Batch::with_origin(body, decoded.events, origin))
            .await?;
        // Counted only once the request is accepted: a refused request is
        // re-sent by the API server and would be counted again.
        for (id, bytes) in dropped_ids {
            tracing::warn!(audit_id = %id, bytes, "dropping event over decode.max_event_bytes even after truncation");
        }
        self.metrics
            .dropped_before_fanout("event_too_large", dropped);
        self.metrics.events_truncated.inc_by(truncated);
        self.metrics.events_received.inc_by(events as u64 + dropped);
        self.metrics.bytes_received.inc_by(wire.len() as u64);
        Ok(events)
    }

    async fn decode(&self, wire: Bytes, gzip: bool) -> Result<(Bytes, Decoded), RequestError> {
        let (limit, opts) = (self.max_decoded_bytes, self.decode);
        // gzip commonly expands audit JSON about tenfold.
        let inline = wire.len() * if gzip { 10 } else { 1 } <= INLINE_DECODE_BYTES;
        let work = move || body::unpack(wire, gzip, limit, &opts);
        let result = if inline {
            work()
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        };
        if let Err(RequestError::Decode(e)) = &result {
            self.metrics.decode_error(e.reason());
        }
        result
    }

    fn log(&self, e: &RequestError) {
        match e {
            RequestError::Refused(_) | RequestError::Busy(_) | RequestError::ShuttingDown => {
                if let Some(suppressed) = self.refusal_log.allow() {
                    tracing::warn!(error = %e, suppressed, "refusing webhook request with 503");
                }
            }
            RequestError::BodyRead(_) => tracing::debug!(error = %e, "client went away"),
            _ => {
                tracing::warn!(status = e.status().as_u16(), reason = e.reason(), error = %e, "refusing webhook request")
            }
        }
    }
}

/// The auditIDs (as text) and sizes of the first few dropped events, for logs.
fn dropped_ids(body: &Bytes, decoded: &Decoded) -> Vec<(String, usize)> {
    let id = |d: &crate::decode::DroppedEvent| {
        d.audit_id
            .map(|s| String::from_utf8_lossy(s.get(body)).into_owned())
            .unwrap_or_default()
    };
    decoded
        .dropped
        .iter()
        .take(5)
        .map(|d| (id(d), d.bytes))
        .collect()
}

/// A path without its trailing slash (`/` stays `/`).
fn normalize(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// `Ok(true)` for gzip, `Ok(false)` for none or identity.
fn content_encoding_is_gzip(headers: &http::HeaderMap) -> Result<bool, RequestError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(false),
        "gzip" | "x-gzip" => Ok(true),
        _ => Err(RequestError::UnsupportedEncoding(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        )),
    }
}

/// Accepts a missing `Content-Type` and any JSON or JSON-lines media type
/// (RFC 9110 §8.3.1: case-insensitive, parameters after `;`); a `charset` other
/// than UTF-8 (or its subset US-ASCII) is refused.
fn check_content_type(headers: &http::HeaderMap) -> Result<(), RequestError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let refuse = || {
        RequestError::UnsupportedMediaType(String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let text = value.to_str().map_err(|_| refuse())?.to_ascii_lowercase();
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim();
    let json = matches!(
        media,
        "" | "application/json"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/jsonlines"
            | "text/plain"
            | "application/octet-stream"
            // curl's default for --data-binary; the body is checked as JSON anyway.
            | "application/x-www-form-urlencoded"
            | "*/*"
    ) || (media.starts_with("application/") && media.ends_with("+json"));
    if !json {
        return Err(refuse());
    }
    for param in parts {
        let Some((name, val)) = param.split_once('=') else {
            continue;
        };
        if name.trim() == "charset"
            && !matches!(val.trim().trim_matches('"'), "utf-8" | "utf8" | "us-ascii")
        {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Lets a log line through at most once per period, counting the ones held back.
struct RateLimit {
    period_ms: u64,
    epoch: std::time::Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new(period: Duration) -> Self {
        let epoch = std::time::Instant::now();
        Self {
            period_ms: period.as_millis() as u64,
            epoch,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(value: &str) -> Result<(), RequestError> {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_TYPE, value.parse().unwrap());
        check_content_type(&h)
    }

    #[test]
    fn content_type_follows_the_media_type_grammar() {
        assert!(ct("application/json; charset=utf-8").is_ok());
        assert!(ct("Application/JSON ;Charset=\"UTF-8\"").is_ok());
        assert!(ct("application/x-ndjson").is_ok());
        assert!(ct("application/merge-patch+json").is_ok());
        assert!(ct("application/json; charset=iso-8859-1").is_err());
        assert!(ct("application/x-protobuf").is_err());
        assert!(check_content_type(&http::HeaderMap::new()).is_ok());
    }

    #[test]
    fn paths_ignore_a_trailing_slash() {
        assert_eq!(normalize("/post/"), "/post");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
    }
}
