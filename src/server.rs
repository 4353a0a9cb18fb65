//! The HTTP server loop shared by the webhook listeners and the metrics
//! listener: accept with a connection limit, turn each TCP stream into the
//! stream to serve in the connection's own task (a TLS handshake, say, so that
//! a slow client holds up nobody else), serve it with hyper (HTTP/1.1 with
//! keep-alive; HTTP/2 by prior knowledge or ALPN), close connections that stay
//! idle, and on shutdown stop accepting and let in-flight requests finish
//! (HTTP/2 GOAWAY, RFC 9113 §6.8).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpSourceConfig;

/// The peer address of a request's connection, put in each request's
/// extensions by [`serve_with`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A connection's handler that puts the peer's address into each request's
/// extensions.
struct WithPeer<H>(Arc<H>, SocketAddr);

impl<H: Handle> Handle for WithPeer<H> {
    async fn call(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        req.extensions_mut().insert(ClientAddr(self.1));
        self.0.clone().call(req).await
    }
}

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Most connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request head once its first byte has
    /// arrived (HTTP/1.1), and to begin the first request on a new
    /// connection. The wait between requests is `idle_timeout`'s.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (HTTP/1.1) and header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Time a connection may stay open with no request in flight (HTTP/1.1
    /// keep-alive and HTTP/2 alike); `None` keeps it open.
    pub idle_timeout: Option<Duration>,
    /// Most HTTP/2 streams in flight on one connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113 §6.5.2).
    pub http2_max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive PINGs (RFC 9113 §6.7); `None` sends none.
    pub http2_keep_alive_interval: Option<Duration>,
    /// Time to wait for a PING's answer before closing the connection.
    pub http2_keep_alive_timeout: Duration,
}

impl ServeOptions {
    /// The options `source.http` gives (both webhook listeners use them).
    pub fn from_http(cfg: &HttpSourceConfig) -> Self {
        Self {
            max_connections: cfg.max_connections,
            header_read_timeout: Duration::from_secs(cfg.header_read_timeout_secs),
            max_header_bytes: cfg.max_header_bytes,
            idle_timeout: Some(Duration::from_secs(cfg.idle_timeout_secs)),
            http2_max_concurrent_streams: cfg.http2_max_concurrent_streams,
            http2_keep_alive_interval: match cfg.http2_keep_alive_interval_secs {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            http2_keep_alive_timeout: Duration::from_secs(cfg.http2_keep_alive_timeout_secs),
        }
    }
}

/// A request handler: any async function from request to response.
pub trait Handle: Send + Sync + 'static {
    /// Answers one request.
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Turns an accepted TCP connection into the stream to serve and its handler,
/// in the connection's own task; `None` drops the connection.
pub trait Accept: Send + Sync + 'static {
    /// The stream served (TCP itself, or TLS over it).
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The handler of this connection's requests.
    type Handler: Handle;
    /// Prepares one connection.
    fn accept(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, Arc<Self::Handler>)>> + Send;
}

/// Plain TCP: every connection served as it is, by the same handler.
pub struct Plain<H>(pub Arc<H>);

impl<H: Handle> Accept for Plain<H> {
    type Io = TcpStream;
    type Handler = H;

    async fn accept(self: Arc<Self>, tcp: TcpStream, _: SocketAddr) -> Option<(TcpStream, Arc<H>)> {
        Some((tcp, self.0.clone()))
    }
}

/// Serves `listener` over plain TCP until `shutdown` is cancelled; see
/// [`serve_with`].
pub async fn serve<H: Handle>(
    listener: TcpListener,
    name: &'static str,
    opts: ServeOptions,
    handler: Arc<H>,
    open: IntGauge,
    shutdown: CancellationToken,
) {
    serve_with(
        listener,
        name,
        opts,
        Arc::new(Plain(handler)),
        open,
        shutdown,
    )
    .await;
}

/// Serves `listener` until `shutdown` is cancelled, then stops accepting and
/// returns once every open connection has finished its in-flight requests.
/// Each connection is prepared by `acceptor` in its own task. `open` counts
/// the open connections (those being prepared included).
pub async fn serve_with<A: Accept>(
    listener: TcpListener,
    name: &'static str,
    opts: ServeOptions,
    acceptor: Arc<A>,
    open: IntGauge,
    shutdown: CancellationToken,
) {
    let builder = Arc::new(builder(&opts));
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let tasks = TaskTracker::new();
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
        let (builder, acceptor, open, shutdown) = (
            builder.clone(),
            acceptor.clone(),
            open.clone(),
            shutdown.clone(),
        );
        open.inc();
        tasks.spawn(async move {
            let prepared = tokio::select! {
                p = acceptor.accept(stream, peer) => p,
                () = shutdown.cancelled() => None,
            };
            if let Some((io, handler)) = prepared {
                let handler = Arc::new(WithPeer(handler, peer));
                let served =
                    serve_connection(&builder, io, handler, &opts, &shutdown).await;
                if let Err(e) = served {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                }
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    tracing::info!(
        listener = name,
        open = tasks.len(),
        "stopped accepting; finishing in-flight requests"
    );
    tasks.wait().await;
}

/// The hyper connection builder for `opts`. hyper's own HTTP/1.1 header
/// timer is off: it also runs while a keep-alive connection waits for its
/// next request, which would close idle connections long before
/// `idle_timeout`; [`serve_connection`] times request heads itself.
pub fn builder(opts: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes as u32)
        .max_concurrent_streams(opts.http2_max_concurrent_streams)
        .keep_alive_interval(opts.http2_keep_alive_interval)
        .keep_alive_timeout(opts.http2_keep_alive_timeout);
    b
}

/// Serves one connection over any byte stream (plain TCP or TLS) until it
/// closes. When `shutdown` is cancelled, or no request has been in flight for
/// `opts.idle_timeout`, the connection is shut down gracefully: requests in
/// flight finish, HTTP/2 gets a GOAWAY. A connection that has not begun a
/// request within `opts.header_read_timeout` of being served is closed, so
/// sockets that never send a byte cannot hold the connection limit; so is an
/// HTTP/1.1 connection whose request head, once its first byte has arrived,
/// is not complete within `opts.header_read_timeout`.
///
/// # Errors
///
/// hyper's error when the connection fails (a client going away mid-request).
pub async fn serve_connection<I, H>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    handler: Arc<H>,
    opts: &ServeOptions,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handle,
{
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        let h2 = req.version() == http::Version::HTTP_2;
        let busy = tracked.begin(h2);
        async move {
            let mut resp = h.call(req).await;
            drop(busy);
            if h2 {
                // Connection-specific headers do not exist in HTTP/2 (RFC 9113
                // §8.2.2); hyper would drop it with a warning.
                resp.headers_mut().remove(http::header::CONNECTION);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = shutdown.cancelled() => {}
        () = activity.idle(opts.idle_timeout) => tracing::debug!("closing an idle connection"),
        () = activity.no_request_within(opts.header_read_timeout) => {
            tracing::debug!("closing a connection that sent no request");
            return Ok(());
        }
        () = activity.head_overdue(opts.header_read_timeout) => {
            tracing::debug!("closing a connection whose request head did not arrive in time");
            return Ok(());
        }
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Requests in flight on one connection, when the last one ended, and when
/// the bytes of a request head not yet complete began to arrive.
struct Activity {
    in_flight: AtomicUsize,
    began_any: AtomicBool,
    /// The connection speaks HTTP/2, whose frames between requests are no
    /// request head.
    http2: AtomicBool,
    last_done: Mutex<Instant>,
    /// First byte of a request head that hyper has not yet handed over.
    head_since: Mutex<Option<Instant>>,
    head_started: Notify,
}

/// One request in flight; its drop marks the end.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_done.lock().expect("not poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            began_any: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            last_done: Mutex::new(Instant::now()),
            head_since: Mutex::new(None),
            head_started: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>, http2: bool) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.began_any.store(true, Ordering::Release);
        if http2 {
            self.http2.store(true, Ordering::Release);
        }
        *self.head_since.lock().expect("not poisoned") = None;
        Busy(self.clone())
    }

    /// Bytes were read from the client. With no request in flight on an
    /// HTTP/1.1 connection they are the start of the next request head
    /// (the handler reads each body to its end before answering).
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.http2.load(Ordering::Acquire) {
            return;
        }
        let mut since = self.head_since.lock().expect("not poisoned");
        if since.is_none() {
            *since = Some(Instant::now());
            self.head_started.notify_one();
        }
    }

    /// Resolves once a request head has been arriving for `timeout` without
    /// being complete.
    async fn head_overdue(&self, timeout: Duration) {
        loop {
            let since = *self.head_since.lock().expect("not poisoned");
            match since {
                None => self.head_started.notified().await,
                Some(t) if Instant::now() >= t + timeout => return,
                Some(t) => tokio::time::sleep_until(t + timeout).await,
            }
        }
    }

    /// Resolves if no request has begun `timeout` from now; otherwise never.
    async fn no_request_within(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.began_any.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let deadline = *self.last_done.lock().expect("not poisoned") + timeout;
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(timeout).await;
            } else if Instant::now() >= deadline {
                return;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// The served stream, telling [`Activity`] when bytes arrive.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
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
