//! The HTTP server loop shared by the webhook listener and the metrics
//! listener: accept with a connection limit, serve each connection with hyper
//! (HTTP/1.1 with keep-alive; HTTP/2 by prior knowledge), and on shutdown stop
//! accepting and let in-flight requests finish (`hyper_util::server::graceful`).
//!
//! [`serve_connection`] takes any byte stream, so a TLS listener hands it its
//! decrypted streams the same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Most connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send the request headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (HTTP/1.1) and header list (HTTP/2).
    pub max_header_bytes: usize,
}

/// A request handler: any async function from request to response.
pub trait Handle: Send + Sync + 'static {
    /// Answers one request.
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting and
/// returns once every open connection has finished its in-flight requests.
/// `open` counts the open connections.
pub async fn serve<H: Handle>(
    listener: TcpListener,
    name: &'static str,
    opts: ServeOptions,
    handler: Arc<H>,
    open: IntGauge,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(&opts));
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(listener = name, error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = serve_connection(&builder, stream, handler.clone(), &graceful);
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        listener = name,
        open = graceful.count(),
        "stopped accepting; finishing in-flight requests"
    );
    graceful.shutdown().await;
}

/// The hyper connection builder for `opts`.
pub fn builder(opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes as u32);
    b
}

/// Serves one connection over any byte stream (plain TCP or TLS), under
/// `graceful`'s watch. The future ends when the connection closes.
pub fn serve_connection<I, H>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    handler: Arc<H>,
    graceful: &GracefulShutdown,
) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handle,
{
    let service = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h.call(req).await) }
    });
    graceful.watch(
        builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned(),
    )
}

/// Binds `address`, naming it in the error.
///
/// # Errors
///
/// The bind error, with the address.
pub async fn bind(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to listen for {what} on {address}"))
}
