//! The TLS metrics: handshake failures, certificate expiry, reloads.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::names::{
    TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, TLS_HANDSHAKE_ERRORS_TOTAL, TLS_RELOADS_TOTAL,
};

/// Every `reason` of `audit_forwarder_tls_handshake_errors_total`.
pub const HANDSHAKE_REASONS: [&str; 9] = [
    "no_client_cert",
    "unknown_ca",
    "not_allowed",
    "bad_client_cert",
    "peer_alert",
    "protocol",
    "timeout",
    "closed",
    "other",
];

/// The TLS metrics, registered once per registry.
#[derive(Clone)]
pub struct TlsMetrics {
    handshake_errors: IntCounterVec,
    expiry: IntGaugeVec,
    reloads: IntCounterVec,
}

impl TlsMetrics {
    /// Creates the metrics and registers them into `registry`.
    ///
    /// # Panics
    ///
    /// When they are already registered there.
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        let expiry = IntGaugeVec::new(
            Opts::new(
                TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
                "notAfter of a TLS certificate, in seconds since the Unix epoch.",
            ),
            &["certificate"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(expiry.clone()))
            .expect("unique gauge");
        let m = Self {
            handshake_errors: counter(
                TLS_HANDSHAKE_ERRORS_TOTAL,
                "TLS handshakes that failed, by listener and reason.",
                &["listener", "reason"],
            ),
            expiry,
            reloads: counter(
                TLS_RELOADS_TOTAL,
                "Reloads of changed certificate files, by result.",
                &["result"],
            ),
        };
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Makes every reason of `listener` show, at 0.
    pub fn listener(&self, listener: &str) {
        for reason in HANDSHAKE_REASONS {
            self.handshake_errors.with_label_values(&[listener, reason]);
        }
    }

    /// Counts a failed handshake.
    pub fn handshake_error(&self, listener: &str, reason: &str) {
        self.handshake_errors
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Publishes a certificate's notAfter (Unix seconds).
    pub fn expiry(&self, certificate: &str, not_after: i64) {
        self.expiry.with_label_values(&[certificate]).set(not_after);
    }

    /// Counts a reload, `success` or `failure`.
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }
}
