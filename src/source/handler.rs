//! Handling of one webhook request: checks, body, decode, admission, answer.

use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::decode::{DecodeError, DecodeOptions, Decoded};
use crate::metrics::Metrics;
use crate::pipeline::{Batch, Listener, Origin, Pipeline};
use crate::ratelimit::RateLimit;
use crate::server::ClientAddr;

/// Uncompressed bodies larger than this are decoded on the blocking pool, so
/// that they do not hold up other connections on the same worker. Below it
/// (an API server's batch of 400 Metadata or mixed events is 0.4 to 2 MB)
/// the decode takes about a millisecond, short enough to do in place:
/// handing it to another thread and back costs two thread wake-ups per
/// request, and buys no parallelism on a forwarder held to one core.
const INLINE_DECODE_BYTES: usize = 4 << 20;

/// The same for gzip bodies, by their estimated decompressed size:
/// decompressing costs several times what decoding does.
const INLINE_GUNZIP_BYTES: usize = 256 << 10;

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
    /// 503s (overload, shutdown): one line per period.
    busy_log: RateLimit,
    /// Every other refusal: one line per period.
    refusal_log: RateLimit,
    /// The listener this handler answers for.
    listener: Listener,
}

/// Who sent a request, for the log line of a refusal: enough to find a stray
/// sender. Kept cheaply (shared buffers) and turned into text only when a
/// refusal is logged.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The peer's address, when the server recorded it ([`ClientAddr`]).
    pub addr: Option<SocketAddr>,
    /// The request target.
    pub uri: http::Uri,
    /// The `User-Agent` header.
    pub user_agent: Option<http::HeaderValue>,
}

impl Client {
    /// What `req` says of its sender.
    pub fn of<B>(req: &Request<B>) -> Self {
        Self {
            addr: req.extensions().get::<ClientAddr>().map(|c| c.0),
            uri: req.uri().clone(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        }
    }

    /// The path, at most 200 bytes.
    fn path(&self) -> &str {
        let path = self.uri.path();
        // A URI path is ASCII.
        path.get(..200).unwrap_or(path)
    }

    /// The `User-Agent` as text (lossy UTF-8, at most 200 bytes).
    fn agent(&self) -> String {
        self.user_agent
            .as_ref()
            .map(|v| String::from_utf8_lossy(&v.as_bytes()[..v.len().min(200)]).into_owned())
            .unwrap_or_default()
    }
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
        metrics.known_request_labels(
            RequestError::STATUSES,
            RequestError::REASONS,
            DecodeError::REASONS,
            &["event_too_large", "not_an_object"],
            &["invalid_utf8"],
        );
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
            busy_log: RateLimit::new(Duration::from_secs(10)),
            refusal_log: RateLimit::new(Duration::from_secs(10)),
            listener: Listener::Http,
        }
    }

    /// The same handler for requests that come in on `listener` (recorded
    /// in each batch's origin).
    pub fn for_listener(mut self, listener: Listener) -> Self {
        self.listener = listener;
        self
    }

    /// Answers one request. Never fails: every error becomes its HTTP answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let client = Client::of(&req);
        let result = self.accept(req).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(events) => {
                self.metrics.request(200, None, seconds);
                let body = format!(r#"{{"status":"accepted","events":{events}}}"#);
                json_response(StatusCode::OK, body.into_bytes())
            }
            Err(e) => {
                self.log(&client, &e);
                self.metrics
                    .request(e.status().as_u16(), Some(e.reason()), seconds);
                e.into_response(self.retry_after_secs)
            }
        }
    }

    /// Answers a request with `e` without looking at it, counted and logged
    /// like any refusal.
    pub fn refuse(&self, client: &Client, e: RequestError) -> Response<Full<Bytes>> {
        self.log(client, &e);
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
        let wire_bytes = wire.len() as u64;
        // The received bytes are kept only when they are gzip (a sink may
        // relay them as received); an uncompressed body is handed to the
        // decoder as its only reference, so that it is validated where it
        // lies rather than in a copy.
        let gzip_wire = gzip.then(|| wire.clone());
        let (body, decoded) = self.decode(wire, gzip).await?;
        let dropped = decoded.dropped.len() as u64;
        let dropped_ids = dropped_ids(&body, &decoded);
        let truncated = decoded.truncated as u64;
        let (not_objects, repaired) = (decoded.not_objects as u64, decoded.repaired as u64);
        let events = decoded.events.len();
        let origin = Origin {
            path_and_query,
            gzip_wire,
            listener: self.listener,
        };
        self.pipeline
            .admit(Batch::with_origin(body, decoded.events, origin))
            .await?;
        // Counted only once the request is accepted: a refused request is
        // re-sent by the API server and would be counted again.
        for (id, bytes) in dropped_ids {
            tracing::warn!(audit_id = %id, bytes, "dropping event over decode.max_event_bytes even after truncation");
        }
        if not_objects > 0 {
            tracing::warn!(
                items = not_objects,
                "dropping items that are not objects, so not audit events"
            );
        }
        if repaired > 0 {
            tracing::warn!(
                events = repaired,
                "replaced invalid UTF-8 with U+FFFD in events, as the API server's decoder does"
            );
        }
        self.metrics
            .dropped_before_fanout("event_too_large", dropped);
        self.metrics
            .dropped_before_fanout("not_an_object", not_objects);
        self.metrics.events_repaired("invalid_utf8", repaired);
        self.metrics.events_truncated.inc_by(truncated);
        self.metrics
            .events_received
            .inc_by(events as u64 + dropped + not_objects);
        self.metrics.bytes_received.inc_by(wire_bytes);
        Ok(events)
    }

    async fn decode(&self, wire: Bytes, gzip: bool) -> Result<(Bytes, Decoded), RequestError> {
        // The sinks' queues can change on a reload: a batch larger than the
        // smallest `block` queue is refused while it is decoded.
        let opts = DecodeOptions {
            max_events: self.pipeline.max_batch_events(),
            ..self.decode
        };
        let limit = self.max_decoded_bytes;
        // gzip commonly expands audit JSON about tenfold.
        let inline = if gzip {
            wire.len().saturating_mul(10) <= INLINE_GUNZIP_BYTES
        } else {
            wire.len() <= INLINE_DECODE_BYTES
        };
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

    fn log(&self, client: &Client, e: &RequestError) {
        let addr = client.addr.map(|a| a.to_string()).unwrap_or_default();
        let (path, agent) = (client.path(), client.agent());
        match e {
            RequestError::Refused(_) | RequestError::Busy(_) | RequestError::ShuttingDown => {
                if let Some(suppressed) = self.busy_log.allow() {
                    tracing::warn!(error = %e, client = %addr, path = %path, user_agent = %agent, suppressed, "refusing webhook request with 503");
                }
            }
            RequestError::BodyRead(_) => {
                tracing::debug!(error = %e, client = %addr, "client went away")
            }
            _ => {
                if let Some(suppressed) = self.refusal_log.allow() {
                    tracing::warn!(status = e.status().as_u16(), reason = e.reason(), error = %e, client = %addr, path = %path, user_agent = %agent, suppressed, "refusing webhook request");
                }
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
