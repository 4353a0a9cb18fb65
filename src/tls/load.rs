//! Loading PEM files (RFC 7468): a certificate chain with its private key, or
//! a bundle of CA certificates. Every error names the config key and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A file that could not be turned into TLS material. `key` is the config key
/// that names the file (`crt_file`, `key_file`, `client_ca_file`, …).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("failed to read {key} {}: {source}", path.display())]
    Read {
        /// Config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable PEM block of the expected kind.
    #[error("invalid {key} {}: {message}", path.display())]
    Invalid {
        /// Config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. "no CERTIFICATE PEM block".
        message: String,
    },
    /// The key does not belong to the certificate, or rustls cannot use it.
    #[error("key_file {} cannot be used with crt_file {}: {source}", key.display(), crt.display())]
    KeyMismatch {
        /// The certificate file.
        crt: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// A directory of a certificate file could not be watched.
    #[error("failed to watch {} for certificate changes: {source}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// rustls refused to build a configuration from the material.
    #[error("failed to build the TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain (leaf first) and the private key of its leaf.
#[derive(Debug)]
pub struct Identity {
    /// The chain as read, leaf first, DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1), DER.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
    /// The leaf's serial number, hex with colons (for logs).
    pub serial: String,
}

impl Identity {
    /// Reads `crt_file` (PEM certificates, leaf first) and `key_file` (one PEM
    /// private key: RSA, ECDSA or Ed25519), and checks that the key is the
    /// leaf's.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file at fault.
    pub fn load(crt_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let chain = read_certs("crt_file", crt_file)?;
        let key_pem = read("key_file", key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
            key: "key_file",
            path: key_file.to_owned(),
            message: format!("no usable PRIVATE KEY PEM block ({e})"),
        })?;
        let (not_after, serial) = leaf_facts("crt_file", crt_file, &chain[0])?;
        let identity = Self {
            chain,
            key,
            not_after,
            serial,
        };
        identity.certified_key(crt_file, key_file)?;
        Ok(identity)
    }

    /// The chain and key as rustls signs with them, the key checked against the
    /// leaf's public key.
    ///
    /// # Errors
    ///
    /// [`TlsError::KeyMismatch`] when the key is not the leaf's or is of a kind
    /// rustls cannot sign with.
    pub fn certified_key(
        &self,
        crt_file: &Path,
        key_file: &Path,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &super::provider())
            .map(Arc::new)
            .map_err(|source| TlsError::KeyMismatch {
                crt: crt_file.to_owned(),
                key: key_file.to_owned(),
                source,
            })
    }
}

/// CA certificates to verify peers against.
#[derive(Debug)]
pub struct CaBundle {
    /// The trust anchors.
    pub roots: RootCertStore,
    /// The earliest notAfter of the file's certificates, seconds since the
    /// Unix epoch.
    pub earliest_not_after: i64,
}

impl CaBundle {
    /// Reads one or more PEM certificates from `path`; `key` names the config
    /// key in errors (`client_ca_file`, `ca_file`).
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file when it cannot be read, holds no
    /// certificate, or one of them is not a usable trust anchor.
    pub fn load(key: &'static str, path: &Path) -> Result<Self, TlsError> {
        let certs = read_certs(key, path)?;
        let mut roots = RootCertStore::empty();
        let mut earliest_not_after = i64::MAX;
        for (i, cert) in certs.into_iter().enumerate() {
            let (not_after, _) = leaf_facts(key, path, &cert)?;
            earliest_not_after = earliest_not_after.min(not_after);
            roots.add(cert).map_err(|e| TlsError::Invalid {
                key,
                path: path.to_owned(),
                message: format!("certificate #{} is not a usable CA: {e}", i + 1),
            })?;
        }
        Ok(Self {
            roots,
            earliest_not_after,
        })
    }
}

/// Reads a whole file.
pub(crate) fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let invalid = |message: String| TlsError::Invalid {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block".to_owned()));
    }
    Ok(certs)
}

/// notAfter (Unix seconds) and serial of a DER certificate.
fn leaf_facts(
    key: &'static str,
    path: &Path,
    der: &CertificateDer<'_>,
) -> Result<(i64, String), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Invalid {
        key,
        path: path.to_owned(),
        message: format!("not an X.509 certificate ({e})"),
    })?;
    Ok((
        cert.validity().not_after.timestamp(),
        cert.raw_serial_as_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn an_ed25519_leaf_with_its_intermediate_loads() {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let leaf_pem = leaf.signed_by(&key, &issuer).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        let crt = write(dir.path(), "tls.crt", &format!("{leaf_pem}{ca_pem}"));
        let key = write(dir.path(), "tls.key", &key.serialize_pem());
        let id = Identity::load(&crt, &key).unwrap();
        assert_eq!(id.chain.len(), 2);
        assert_eq!(id.not_after, 1_924_992_000);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tls.crt");
        let key = write(dir.path(), "tls.key", "");
        let msg = Identity::load(&missing, &key).unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("failed to read crt_file {}: ", missing.display())),
            "{msg}"
        );
        let not_pem = write(dir.path(), "ca.crt", "hello\n");
        let msg = CaBundle::load("client_ca_file", &not_pem)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&format!("invalid client_ca_file {}: ", not_pem.display())),
            "{msg}"
        );
    }
}
