//! `source.https`: the TLS listener (certificates, client authentication), and
//! its checks. The request limits of `source.http` (paths, body sizes and
//! timeouts, header size, connections) apply to it as well.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The HTTPS listener: TLS 1.2 and 1.3 (RFC 5246, RFC 8446), ALPN `h2` and
/// `http/1.1` (RFC 7301), optional client certificates (mutual TLS). The
/// certificate files are watched and reloaded without a restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsSourceConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address and port to listen on.
    pub address: SocketAddr,
    /// PEM file with the server certificate, then its intermediates (leaf
    /// first), e.g. `/certificates/tls.crt`. Empty means unset.
    pub crt_file: PathBuf,
    /// PEM file with the private key of `crt_file` (PKCS#8, PKCS#1 RSA or SEC1
    /// EC; RSA, ECDSA or Ed25519), e.g. `/certificates/tls.key`.
    pub key_file: PathBuf,
    /// PEM file with the CA certificates that client certificates must chain
    /// to. Needed unless `client_auth` is `none`.
    pub client_ca_file: PathBuf,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
    /// Client identities let in: each is compared with the client
    /// certificate's subject CN and its DNS and URI subject alternative names.
    /// Empty lets in every certificate of `client_ca_file`.
    pub allowed_client_names: Vec<String>,
    /// File holding a bearer token (RFC 6750) that requests on connections
    /// without a client certificate must carry. Empty means unset.
    pub bearer_token_file: PathBuf,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
    /// Days before a certificate's notAfter from which a warning is logged.
    pub expiry_warning_days: u64,
    /// Annotations set on every event received on this listener, for every
    /// sink (a sink's own `process.labels` and `label_from_path` win for the
    /// same key), e.g. `example.com/cluster: prod-eu-1`.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Default for HttpsSourceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            address: SocketAddr::from(([0, 0, 0, 0], 4443)),
            crt_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            client_auth: ClientAuth::Required,
            allowed_client_names: Vec::new(),
            bearer_token_file: PathBuf::new(),
            handshake_timeout_secs: 10,
            expiry_warning_days: 14,
            labels: Default::default(),
        }
    }
}

/// Client certificates on the HTTPS listener.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Asked for and verified when sent; a connection without one is let in,
    /// but its requests need `bearer_token_file`'s token, or get 401.
    Optional,
    /// Without a valid certificate the handshake fails.
    #[default]
    Required,
}

/// Whether a path key is set (an empty string means unset).
pub fn is_set(path: &Path) -> bool {
    !path.as_os_str().is_empty()
}

impl HttpsSourceConfig {
    /// Checks the keys of an enabled listener.
    ///
    /// # Errors
    ///
    /// `(key path, message)` for the first problem found.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: &str| Err((format!("source.https.{key}"), msg.to_owned()));
        if !self.enabled {
            return Ok(());
        }
        match (is_set(&self.crt_file), is_set(&self.key_file)) {
            (false, false) => {
                return err("crt_file", "the HTTPS listener needs crt_file and key_file");
            }
            (true, false) => return err("key_file", "crt_file is set but key_file is not"),
            (false, true) => return err("crt_file", "key_file is set but crt_file is not"),
            (true, true) => {}
        }
        let wants_ca = self.client_auth != ClientAuth::None;
        if wants_ca && !is_set(&self.client_ca_file) {
            return err(
                "client_ca_file",
                "client_auth is optional or required, which needs client_ca_file (or set client_auth: none)",
            );
        }
        if !wants_ca && is_set(&self.client_ca_file) {
            return err(
                "client_auth",
                "client_ca_file is set but client_auth is none; set optional or required",
            );
        }
        if !wants_ca && !self.allowed_client_names.is_empty() {
            return err(
                "allowed_client_names",
                "needs client certificates: set client_auth and client_ca_file",
            );
        }
        if let Some(i) = self.allowed_client_names.iter().position(String::is_empty) {
            return Err((
                format!("source.https.allowed_client_names[{i}]"),
                "must not be empty".to_owned(),
            ));
        }
        if self.handshake_timeout_secs == 0 {
            return err("handshake_timeout_secs", "must be greater than 0");
        }
        Ok(())
    }
}
