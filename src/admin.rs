//! The metrics and health listener: `GET /metrics` (Prometheus text format
//! 0.0.4), `GET /healthz` (the process is serving) and `GET /readyz` (ready for
//! webhook traffic: listeners bound and not draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::metrics::Metrics;

/// Whether the forwarder takes webhook traffic.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets readiness.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Current readiness.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The handler of the metrics and health listener.
pub struct Admin {
    metrics: Metrics,
    ready: Readiness,
}

impl Admin {
    /// Serves `metrics`, and `/readyz` from `ready`.
    pub fn new(metrics: Metrics, ready: Readiness) -> Self {
        Self { metrics, ready }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match req.uri().path() {
            "/metrics" => {
                let mut resp = Response::new(Full::new(Bytes::from(self.metrics.render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.get() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting or draining\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz or /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl crate::server::Handle for Admin {
    async fn call(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.answer(&req)
    }
}
