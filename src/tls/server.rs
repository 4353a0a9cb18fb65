//! The HTTPS listener's TLS configuration: built from `source.https`, rebuilt
//! on [`ServerTls::reload`], and swapped in atomically so that every new
//! handshake uses the newest good set while established connections carry on.
//! A set that fails to load is refused and the one in use stays.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::load::{self, CaBundle, Identity, TlsError};
use super::verify::AllowList;
use crate::config::{ClientAuth, HttpsSourceConfig};
use crate::metrics::TlsMetrics;

/// ALPN protocol names offered, in order of preference (RFC 7301; `h2` is
/// RFC 9113).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Label of the serving certificate in the expiry gauge.
pub const SERVING: &str = "serving";
/// Label of the client CA bundle in the expiry gauge.
pub const CLIENT_CA: &str = "client_ca";

/// The listener's current TLS configuration and how to renew it.
pub struct ServerTls {
    cfg: HttpsSourceConfig,
    current: ArcSwap<ServerConfig>,
    /// The file contents behind `current`, to skip reloads that change nothing.
    loaded: Mutex<Loaded>,
    metrics: TlsMetrics,
}

/// What is in use.
struct Loaded {
    fingerprint: Vec<u8>,
    /// The contents last refused, not tried (nor logged) again until they change.
    refused: Vec<u8>,
    /// `(label, notAfter in Unix seconds)` of the serving leaf and the CA file.
    expiries: Vec<(&'static str, i64)>,
}

impl ServerTls {
    /// Loads the files named by `cfg` (which [`crate::config::load`] has
    /// validated) and publishes their expiry.
    ///
    /// # Errors
    ///
    /// [`TlsError`] naming the file at fault.
    pub fn load(cfg: &HttpsSourceConfig, metrics: TlsMetrics) -> Result<Self, TlsError> {
        let fingerprint = fingerprint(cfg)?;
        let (config, expiries, serial) = build(cfg)?;
        let tls = Self {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(Loaded {
                fingerprint,
                refused: Vec::new(),
                expiries,
            }),
            metrics,
        };
        tls.publish();
        tracing::info!(crt_file = %cfg.crt_file.display(), serial, "loaded the HTTPS certificate");
        Ok(tls)
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The files this configuration is built from.
    pub fn files(&self) -> Vec<PathBuf> {
        [
            &self.cfg.crt_file,
            &self.cfg.key_file,
            &self.cfg.client_ca_file,
        ]
        .into_iter()
        .filter(|p| crate::config::is_set(p))
        .cloned()
        .collect()
    }

    /// Reads the files again and, if they changed and load, uses them for new
    /// handshakes; `Ok(false)` when they are the set in use or the set last
    /// refused. Counts the outcome in
    /// `audit_forwarder_tls_reloads_total{result}` and logs it.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when the new files do not load; the set in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let result = self.try_reload();
        match &result {
            Ok(false) => {}
            Ok(true) => self.metrics.reload("success"),
            Err(e) => {
                self.metrics.reload("failure");
                tracing::error!(error = %e, "refusing the new HTTPS certificate files; the ones in use stay");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<bool, TlsError> {
        let fingerprint = fingerprint(&self.cfg)?;
        {
            let loaded = self.loaded.lock().expect("not poisoned");
            if loaded.fingerprint == fingerprint || loaded.refused == fingerprint {
                return Ok(false);
            }
        }
        let (config, expiries, serial) = build(&self.cfg).inspect_err(|_| {
            self.loaded.lock().expect("not poisoned").refused = fingerprint.clone();
        })?;
        self.current.store(Arc::new(config));
        *self.loaded.lock().expect("not poisoned") = Loaded {
            fingerprint,
            refused: Vec::new(),
            expiries,
        };
        self.publish();
        tracing::info!(crt_file = %self.cfg.crt_file.display(), serial, "reloaded the HTTPS certificate files; new handshakes use them");
        Ok(true)
    }

    /// Sets the expiry gauges and logs a warning for a certificate that expires
    /// within `expiry_warning_days` (an error once it has expired).
    pub fn publish(&self) {
        let expiries = self.loaded.lock().expect("not poisoned").expiries.clone();
        let now = super::unix_now();
        let warn_secs = self.cfg.expiry_warning_days.saturating_mul(86_400) as i64;
        for (label, not_after) in expiries {
            self.metrics.expiry(label, not_after);
            let left = not_after - now;
            if left <= 0 {
                tracing::error!(
                    certificate = label,
                    not_after,
                    "a TLS certificate has expired; replace it"
                );
            } else if left < warn_secs {
                tracing::warn!(
                    certificate = label,
                    not_after,
                    days_left = left / 86_400,
                    "a TLS certificate expires soon (source.https.expiry_warning_days)"
                );
            }
        }
    }
}

/// The bytes of every file, in order, for change detection.
fn fingerprint(cfg: &HttpsSourceConfig) -> Result<Vec<u8>, TlsError> {
    let mut all = Vec::new();
    for (key, path) in [
        ("crt_file", &cfg.crt_file),
        ("key_file", &cfg.key_file),
        ("client_ca_file", &cfg.client_ca_file),
    ] {
        if crate::config::is_set(path) {
            let bytes = load::read(key, path)?;
            all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            all.extend_from_slice(&bytes);
        }
    }
    Ok(all)
}

type Built = (ServerConfig, Vec<(&'static str, i64)>, String);

/// A server configuration from the files: TLS 1.3 and 1.2, ALPN `h2` then
/// `http/1.1`, the client verifier `client_auth` asks for.
fn build(cfg: &HttpsSourceConfig) -> Result<Built, TlsError> {
    let identity = Identity::load(&cfg.crt_file, &cfg.key_file)?;
    let key = identity.certified_key(&cfg.crt_file, &cfg.key_file)?;
    let mut expiries = vec![(SERVING, identity.not_after)];
    let provider = super::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match cfg.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let ca = CaBundle::load("client_ca_file", &cfg.client_ca_file)?;
            expiries.push((CLIENT_CA, ca.earliest_not_after));
            builder.with_client_cert_verifier(client_verifier(cfg, ca, provider)?)
        }
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((config, expiries, identity.serial))
}

fn client_verifier(
    cfg: &HttpsSourceConfig,
    ca: CaBundle,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots), provider);
    if cfg.client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder.build().map_err(|e| TlsError::Invalid {
        key: "client_ca_file",
        path: cfg.client_ca_file.clone(),
        message: e.to_string(),
    })?;
    Ok(match cfg.allowed_client_names.is_empty() {
        true => verifier,
        false => Arc::new(AllowList::new(verifier, cfg.allowed_client_names.clone())),
    })
}
