//! The TLS client side of the network sinks (rustls 0.23 with the ring
//! provider): trusted roots, an optional client identity for mTLS, an optional
//! server-name override, and optional hostname checking.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::ClientTlsConfig;

/// A TLS client setting that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("failed to read {what} {path}: {message}")]
    File {
        /// Which key (`ca_file`, `crt_file`, `key_file`).
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the setting.
    #[error("invalid TLS client setting: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The crypto provider used for every TLS connection of the forwarder.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls client config from `cfg`, offering `alpn` protocols.
/// TLS 1.2 and 1.3 only.
///
/// # Errors
///
/// [`TlsError`] naming the file that could not be used.
pub fn client_config(cfg: &ClientTlsConfig, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = load_certs("ca_file", path)?;
            for cert in certs {
                roots.add(cert).map_err(|e| file_err("ca_file", path, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
    let builder = if cfg.verify_hostname {
        builder.with_root_certificates(roots)
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
    };
    let mut config = match (&cfg.crt_file, &cfg.key_file) {
        (Some(crt), Some(key)) => {
            let chain = load_certs("crt_file", crt)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("key_file", key, e))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Every certificate in a PEM file; an error if there is none.
///
/// # Errors
///
/// [`TlsError::File`] naming `what` and the file.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(what, path, e))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
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
