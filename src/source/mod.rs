//! The HTTP source: receives the API server's webhook POSTs.

pub mod auth;
pub mod body;
pub mod error;
pub mod handler;
pub mod https;
pub mod plain;

pub use error::RequestError;
pub use handler::Handler;

impl crate::server::Handle for Handler {
    async fn call(
        self: std::sync::Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        self.handle(req).await
    }
}
