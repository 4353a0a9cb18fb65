//! Every way a webhook request can fail, and the one function that maps each to
//! its HTTP answer (DESIGN.md, "status codes"): a status, a bounded `reason`
//! for metrics, and a short JSON body `{"error": "...", "reason": "..."}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::decode::DecodeError;
use crate::pipeline::Refusal;

/// Why a request was not accepted. Nothing of it was queued.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The forwarder is draining.
    #[error("the forwarder is shutting down")]
    ShuttingDown,
    /// Neither a verified client certificate nor the bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Not a POST.
    #[error("method {0} is not allowed; the audit webhook uses POST")]
    MethodNotAllowed(http::Method),
    /// Not one of the configured paths.
    #[error("no webhook at path {0}")]
    NotFound(String),
    /// A `Content-Encoding` other than gzip or identity.
    #[error("Content-Encoding {0:?} is not supported; use gzip or none")]
    UnsupportedEncoding(String),
    /// A `Content-Type` that is not JSON, or a charset other than UTF-8.
    #[error("Content-Type {0:?} is not supported; send application/json in UTF-8")]
    UnsupportedMediaType(String),
    /// `Content-Length`, or the bytes read, over `max_body_bytes`.
    #[error(
        "request body of {size} bytes is over the limit of {limit} bytes (source.http.max_body_bytes)"
    )]
    BodyTooLarge {
        /// Declared or observed size (observed: at least this).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The body after gzip is undone is over `max_decoded_bytes`.
    #[error("request body is over {limit} bytes once decompressed (source.http.max_decoded_bytes)")]
    DecodedTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body did not arrive within `body_read_timeout_secs`.
    #[error("request body did not arrive within {0} s (source.http.body_read_timeout_secs)")]
    BodyTimeout(u64),
    /// The connection failed while the body was read.
    #[error("failed to read the request body: {0}")]
    BodyRead(hyper::Error),
    /// `Content-Encoding: gzip` but the body is not gzip.
    #[error("request body is not valid gzip: {0}")]
    InvalidGzip(std::io::Error),
    /// The body is not an audit EventList or Event.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The pipeline did not take the batch.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The queues had no room before the body was read, and the body could
    /// not be read to its end (over the limits or too slow): it was left
    /// unread and the connection is closed.
    #[error("{0}; the request body was not read")]
    Busy(Refusal),
}

impl RequestError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ShuttingDown
            | Self::Refused(Refusal::Full { .. } | Refusal::Closed | Refusal::Buffer(_))
            | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::UnsupportedEncoding(_) | Self::UnsupportedMediaType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::BodyTooLarge { .. }
            | Self::DecodedTooLarge { .. }
            | Self::Decode(DecodeError::TooManyEvents { .. })
            | Self::Refused(Refusal::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) | Self::InvalidGzip(_) | Self::Decode(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Every status code an answer can have, 200 included.
    pub const STATUSES: &[u16] = &[200, 400, 401, 404, 405, 408, 413, 415, 503];

    /// Every [`reason`](Self::reason) but the decoder's
    /// ([`DecodeError::REASONS`]).
    pub const REASONS: &[&str] = &[
        "shutting_down",
        "queue_full",
        "unauthenticated",
        "method_not_allowed",
        "not_found",
        "unsupported_encoding",
        "unsupported_media_type",
        "body_too_large",
        "body_timeout",
        "body_read",
        "invalid_gzip",
        "batch_too_large",
    ];

    /// Bounded label for `audit_forwarder_requests_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ShuttingDown | Self::Refused(Refusal::Closed) | Self::Busy(Refusal::Closed) => {
                "shutting_down"
            }
            Self::Busy(r) => r.reason(),
            Self::Unauthenticated(_) => "unauthenticated",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::NotFound(_) => "not_found",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge { .. } | Self::DecodedTooLarge { .. } => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyRead(_) => "body_read",
            Self::InvalidGzip(_) => "invalid_gzip",
            Self::Decode(e) => e.reason(),
            Self::Refused(r) => r.reason(),
        }
    }

    /// Whether the request body may still be unread, so the connection must not
    /// be reused.
    fn body_unread(&self) -> bool {
        matches!(
            self,
            Self::ShuttingDown
                | Self::Unauthenticated(_)
                | Self::MethodNotAllowed(_)
                | Self::NotFound(_)
                | Self::UnsupportedEncoding(_)
                | Self::UnsupportedMediaType(_)
                | Self::BodyTooLarge { .. }
                | Self::BodyTimeout(_)
                | Self::BodyRead(_)
                | Self::Busy(_)
        )
    }

    /// The answer to send: status, JSON body, `Retry-After` on 503, `Allow` on
    /// 405, and `Connection: close` when the body was not read.
    pub fn into_response(self, retry_after_secs: u64) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string(), "reason": self.reason() });
        let mut resp = json_response(status, serde_json::to_vec(&body).unwrap_or_default());
        let headers = resp.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if self.body_unread() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
