//! TLS for the HTTPS listener, and building blocks the sinks can reuse:
//!
//! - [`load`]: PEM files to a certificate chain and key, or a CA bundle, with
//!   errors that name the file and key, and each certificate's notAfter.
//! - [`server`]: the listener's rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN
//!   `h2` and `http/1.1`, client certificates with an allow-list), rebuilt when
//!   its files change and swapped in for new handshakes only.
//! - [`client`]: a client certificate that reloads itself, for outbound mTLS.
//! - [`outbound`]: the sinks' rustls `ClientConfig` (roots, mTLS identity,
//!   server-name override, optional hostname check).
//! - [`watch`]: watches files the way Kubernetes updates secret volumes.
//!
//! The crypto provider is rustls' `ring` provider.

pub mod client;
pub mod load;
pub mod outbound;
pub mod server;
mod verify;
pub mod watch;

use std::sync::Arc;

pub use load::{CaBundle, Identity, TlsError};
pub use outbound::OutboundTls;
pub use server::ServerTls;

/// The crypto provider every TLS configuration of the forwarder uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
