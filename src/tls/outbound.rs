//! The TLS client side of the network sinks: trusted roots (`ca_file`, or the
//! Mozilla roots built in), an optional client identity for mTLS that reloads
//! itself when its files change ([`super::client::ReloadingClientCert`]), an
//! optional server-name override, and optional hostname checking. TLS 1.2 and
//! 1.3 only.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::client::ReloadingClientCert;
use super::{CaBundle, TlsError, provider};
use crate::config::ClientTlsConfig;

/// A sink's TLS client settings, loaded once.
#[derive(Clone)]
pub struct OutboundTls {
    roots: Arc<RootCertStore>,
    verify_hostname: bool,
    identity: Option<Arc<ReloadingClientCert>>,
    /// The CA file's earliest notAfter (seconds since the epoch), if given.
    pub ca_not_after: Option<i64>,
}

impl OutboundTls {
    /// Loads the files `cfg` names.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the key and file that could not be used.
    pub fn load(cfg: &ClientTlsConfig) -> Result<Self, TlsError> {
        let (roots, ca_not_after) = match &cfg.ca_file {
            Some(path) => {
                let ca = CaBundle::load("ca_file", path)?;
                (ca.roots, Some(ca.earliest_not_after))
            }
            None => (
                RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
                None,
            ),
        };
        let identity = match (&cfg.crt_file, &cfg.key_file) {
            (Some(crt), Some(key)) => Some(ReloadingClientCert::load(crt, key)?),
            _ => None,
        };
        Ok(Self {
            roots: Arc::new(roots),
            verify_hostname: cfg.verify_hostname,
            identity,
            ca_not_after,
        })
    }

    /// The client identity, for its watcher and expiry gauge.
    pub fn identity(&self) -> Option<&Arc<ReloadingClientCert>> {
        self.identity.as_ref()
    }

    /// A rustls client config offering the `alpn` protocols. Every handshake
    /// presents the newest client certificate that loaded.
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] if rustls refuses the protocol versions or roots.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if self.verify_hostname {
            builder.with_root_certificates(self.roots.clone())
        } else {
            let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        };
        let mut config = match &self.identity {
            Some(cert) => builder.with_client_cert_resolver(cert.clone()),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// The name to present (SNI) and verify for `host`, or `server_name` instead.
///
/// # Errors
///
/// A message when neither is a valid DNS name or IP address.
pub fn server_name(host: &str, server_name: Option<&str>) -> Result<ServerName<'static>, String> {
    let name = server_name
        .unwrap_or(host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a valid TLS server name"))
}

/// Verifies the chain and signatures but not the name (`verify_hostname: false`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
