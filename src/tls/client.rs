//! A client certificate for outbound mutual TLS that follows its files: the
//! hook for the network sinks. Build the sink's `rustls::ClientConfig` with
//! [`ReloadingClientCert`] as its client-certificate resolver, keep the
//! [`FileWatcher`] from [`ReloadingClientCert::watch`] alive as long as the
//! sink, and every new connection presents the newest good certificate.
//!
//! ```no_run
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use kube_audit_forwarder::tls::{CaBundle, client::ReloadingClientCert};
//! let cert = ReloadingClientCert::load(Path::new("/certs/tls.crt"), Path::new("/certs/tls.key"))?;
//! let ca = CaBundle::load("ca_file", Path::new("/certs/ca.crt"))?;
//! let config = rustls::ClientConfig::builder_with_provider(kube_audit_forwarder::tls::provider())
//!     .with_safe_default_protocol_versions()?
//!     .with_root_certificates(ca.roots)
//!     .with_client_cert_resolver(cert.clone());
//! let _watch = cert.watch(std::time::Duration::from_secs(60), |_| {})?; // in a tokio runtime
//! # let _ = config; Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;

use super::load::{self, Identity, TlsError};
use super::watch::{self, FileWatcher, Trigger};

/// A certificate and key read from `crt_file` and `key_file`, reloaded on
/// [`ReloadingClientCert::reload`]; a set that fails to load is refused and
/// the one in use stays.
#[derive(Debug)]
pub struct ReloadingClientCert {
    crt_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
    state: Mutex<(Vec<u8>, i64)>,
}

impl ReloadingClientCert {
    /// Loads the pair.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file at fault (`crt_file`, `key_file`).
    pub fn load(crt_file: &Path, key_file: &Path) -> Result<Arc<Self>, TlsError> {
        let (print, key, not_after) = Self::read(crt_file, key_file)?;
        Ok(Arc::new(Self {
            crt_file: crt_file.to_owned(),
            key_file: key_file.to_owned(),
            current: ArcSwap::new(key),
            state: Mutex::new((print, not_after)),
        }))
    }

    fn read(crt: &Path, key: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>, i64), TlsError> {
        let mut print = load::read("crt_file", crt)?;
        print.extend_from_slice(&load::read("key_file", key)?);
        let identity = Identity::load(crt, key)?;
        Ok((print, identity.certified_key(crt, key)?, identity.not_after))
    }

    /// Reads the files again; `Ok(true)` when a new pair is now in use,
    /// `Ok(false)` when they did not change.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when the new files do not load; the pair in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (print, key, not_after) = Self::read(&self.crt_file, &self.key_file)?;
        let mut state = self.state.lock().expect("not poisoned");
        if state.0 == print {
            return Ok(false);
        }
        self.current.store(key);
        *state = (print, not_after);
        Ok(true)
    }

    /// The current leaf's notAfter, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.state.lock().expect("not poisoned").1
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Watches the files and reloads on change (and every `recheck`), logging
    /// the outcome; `after` is then called with whether a new pair is in use
    /// (to update an expiry gauge, say). Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`TlsError::Watch`] when a directory cannot be watched.
    pub fn watch(
        self: &Arc<Self>,
        recheck: Duration,
        after: impl Fn(bool) + Send + 'static,
    ) -> Result<FileWatcher, TlsError> {
        let me = self.clone();
        let files = [self.crt_file.clone(), self.key_file.clone()];
        watch::watch(&files, recheck, move |_: Trigger| match me.reload() {
            Ok(changed) => {
                if changed {
                    tracing::info!(crt_file = %me.crt_file.display(), "reloaded a client certificate");
                }
                after(changed);
            }
            Err(e) => {
                tracing::error!(error = %e, "refusing new client certificate files; the ones in use stay")
            }
        })
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn write(dir: &Path, (crt, key): &(String, String)) {
        std::fs::write(dir.join("tls.crt"), crt).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
    }

    fn leaf(cert: &ReloadingClientCert) -> Vec<u8> {
        cert.resolve(&[], &[]).unwrap().cert[0].to_vec()
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn reload_takes_a_good_pair_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair("a.test"), pair("b.test"));
        write(dir.path(), &a);
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let cert = ReloadingClientCert::load(&crt, &key).unwrap();
        assert_eq!(leaf(&cert), der(&a.0));
        assert!(!cert.reload().unwrap());

        write(dir.path(), &b);
        assert!(cert.reload().unwrap());
        assert_eq!(leaf(&cert), der(&b.0));

        // A certificate with the other pair's key is refused, naming both files.
        write(dir.path(), &(a.0.clone(), b.1.clone()));
        let msg = cert.reload().unwrap_err().to_string();
        assert!(msg.contains("tls.key") && msg.contains("tls.crt"), "{msg}");
        assert_eq!(leaf(&cert), der(&b.0));

        std::fs::remove_file(&key).unwrap();
        let msg = cert.reload().unwrap_err().to_string();
        assert!(msg.starts_with("failed to read key_file "), "{msg}");
        assert_eq!(leaf(&cert), der(&b.0));
    }

    #[tokio::test]
    async fn watch_follows_files_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair("a.test"), pair("b.test"));
        write(dir.path(), &a);
        let cert =
            ReloadingClientCert::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
                .unwrap();
        let _watch = cert.watch(Duration::from_secs(3600), |_| {}).unwrap();
        write(dir.path(), &b);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while leaf(&cert) != der(&b.0) {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
