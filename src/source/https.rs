//! The HTTPS listener: the shared [`crate::server`] loop with a TLS
//! handshake (bounded by `handshake_timeout_secs`) run in each connection's own
//! task, then the same [`Handler`] as the plain listener behind a per-connection
//! [`Gate`]. Failed handshakes are counted by bounded reason in
//! `audit_forwarder_tls_handshake_errors_total{listener="https"}` and logged
//! without secrets. The certificate files, and the bearer token file, are
//! watched and reloaded without a restart (see [`crate::tls::watch`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use rustls::CertificateError;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::Handler;
use super::auth::{Gate, TokenFile};
use crate::config::{ClientAuth, HttpsSourceConfig};
use crate::metrics::TlsMetrics;
use crate::server::{self, Accept, ServeOptions};
use crate::tls::ServerTls;
use crate::tls::watch::{self, FileWatcher, Trigger};

/// The listener's label in metrics and logs.
pub const LISTENER: &str = "https";

/// How often the files are re-read in case a change event was missed.
const RECHECK: Duration = Duration::from_secs(60);
/// Re-checks between two expiry warnings (hourly).
const WARN_EVERY_RECHECKS: u64 = 60;

/// Loads the certificates and serves `listener` (bound to `cfg.address`)
/// until `shutdown` is cancelled. Returns the bound address and the serving
/// task.
///
/// # Errors
///
/// A certificate, key, CA or token file that does not load (the error names
/// the key and the file), or a directory that cannot be watched.
pub async fn start(
    listener: tokio::net::TcpListener,
    cfg: &HttpsSourceConfig,
    opts: ServeOptions,
    handler: Arc<Handler>,
    metrics: TlsMetrics,
    open: IntGauge,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let tls = Arc::new(ServerTls::load(cfg, metrics.clone())?);
    let token = TokenFile::from_config(&cfg.bearer_token_file)?;
    let addr = listener.local_addr()?;
    let watcher = watch_files(tls.clone(), token.clone())?;
    metrics.listener(LISTENER);
    let acceptor = Arc::new(TlsAccept {
        tls,
        handler,
        open_without_cert: token.is_none() && cfg.client_auth == ClientAuth::None,
        token,
        timeout: Duration::from_secs(cfg.handshake_timeout_secs),
        metrics,
    });
    let task = tokio::spawn(async move {
        server::serve_with(listener, LISTENER, opts, acceptor, open, shutdown).await;
        drop(watcher);
    });
    Ok((addr, task))
}

/// Reloads the TLS files and the token when they change.
fn watch_files(
    tls: Arc<ServerTls>,
    token: Option<Arc<TokenFile>>,
) -> Result<FileWatcher, crate::tls::TlsError> {
    let mut files = tls.files();
    files.extend(token.iter().map(|t| t.path().to_owned()));
    let rechecks = AtomicU64::new(0);
    watch::watch(&files, RECHECK, move |why| {
        let _ = tls.reload();
        if why == Trigger::Periodic
            && rechecks.fetch_add(1, Ordering::Relaxed) % WARN_EVERY_RECHECKS
                == WARN_EVERY_RECHECKS - 1
        {
            tls.publish();
        }
        if let Some(t) = &token {
            token_reload(t);
        }
    })
}

/// Reloads a token file, logging the outcome.
pub fn token_reload(token: &TokenFile) {
    match token.reload() {
        Ok(true) => tracing::info!(file = %token.path().display(), "reloaded the bearer token"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "refusing the new bearer token file; the one in use stays")
        }
    }
}

/// Runs the handshake of one connection.
struct TlsAccept {
    tls: Arc<ServerTls>,
    handler: Arc<Handler>,
    token: Option<Arc<TokenFile>>,
    open_without_cert: bool,
    timeout: Duration,
    metrics: TlsMetrics,
}

impl Accept for TlsAccept {
    type Io = TlsStream<TcpStream>;
    type Handler = Gate;

    async fn accept(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, Arc<Gate>)> {
        let acceptor = TlsAcceptor::from(self.tls.config());
        let (reason, error) = match tokio::time::timeout(self.timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let has_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let gate = Gate::new(
                    self.handler.clone(),
                    self.token.clone(),
                    has_cert || self.open_without_cert,
                );
                return Some((stream, Arc::new(gate)));
            }
            Ok(Err(e)) => (classify(&e), e.to_string()),
            Err(_) => (
                "timeout",
                "no handshake within handshake_timeout_secs".to_owned(),
            ),
        };
        self.metrics.handshake_error(LISTENER, reason);
        match reason {
            "protocol" | "closed" | "other" => {
                tracing::debug!(listener = LISTENER, %peer, reason, %error, "TLS handshake failed");
            }
            _ => tracing::warn!(listener = LISTENER, %peer, reason, %error, "TLS handshake failed"),
        }
        None
    }
}

/// The bounded reason of a failed handshake.
fn classify(e: &io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_client_cert",
        Some(E::InvalidCertificate(CertificateError::UnknownIssuer)) => "unknown_ca",
        Some(E::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            "not_allowed"
        }
        Some(E::InvalidCertificate(_)) => "bad_client_cert",
        Some(E::AlertReceived(_)) => "peer_alert",
        Some(
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::NoApplicationProtocol,
        ) => "protocol",
        Some(_) => "other",
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}
