//! The disk buffer's metrics, registered only when `buffer.type` is `disk`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::names::{
    BUFFER_BYTES, BUFFER_CORRUPT_RECORDS_TOTAL, BUFFER_DISK_ERRORS_TOTAL, BUFFER_EVENTS,
    BUFFER_FREE_BYTES, BUFFER_FSYNC_DURATION_SECONDS, BUFFER_MAX_BYTES, BUFFER_OLDEST_AGE_SECONDS,
    BUFFER_REPLAYED_EVENTS_TOTAL,
};

/// Every `kind` of `audit_forwarder_buffer_disk_errors_total`.
pub const DISK_ERROR_KINDS: [&str; 6] = ["full", "write", "sync", "create", "read", "checkpoint"];

/// The disk buffer's metrics.
#[derive(Clone)]
pub struct BufferMetrics {
    /// Bytes the log's files take.
    pub bytes: IntGauge,
    /// `buffer.max_bytes`.
    pub max_bytes: IntGauge,
    /// Bytes free on the file system.
    pub free_bytes: IntGauge,
    /// Per sink: events not yet delivered.
    pub events: IntGaugeVec,
    /// Per sink: age of the oldest batch not yet delivered.
    pub oldest_age: prometheus::GaugeVec,
    /// Seconds per fdatasync.
    pub fsync: Histogram,
    /// Damaged records found.
    pub corrupt: IntCounter,
    /// Disk errors by kind.
    pub disk_errors: IntCounterVec,
    /// Per sink: events of the previous run given to the sink.
    pub replayed: IntCounterVec,
}

impl BufferMetrics {
    /// Creates the metrics, registers them into `registry` and creates each
    /// labelled series for `sinks` and every error kind at 0.
    ///
    /// # Panics
    ///
    /// When they are already registered there.
    pub fn register(registry: &Registry, sinks: &[&str]) -> Self {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        let gauge = |name, help| reg(registry, IntGauge::new(name, help).expect("valid gauge"));
        let m = Self {
            bytes: gauge(BUFFER_BYTES, "Bytes the disk buffer's log files take."),
            max_bytes: gauge(BUFFER_MAX_BYTES, "The disk buffer's max_bytes."),
            free_bytes: gauge(
                BUFFER_FREE_BYTES,
                "Bytes free for the forwarder on the disk buffer's file system.",
            ),
            events: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        BUFFER_EVENTS,
                        "Events in the disk buffer the sink has not yet delivered.",
                    ),
                    &["sink"],
                )
                .expect("valid gauge"),
            ),
            oldest_age: reg(
                registry,
                prometheus::GaugeVec::new(
                    Opts::new(
                        BUFFER_OLDEST_AGE_SECONDS,
                        "Seconds since the oldest batch the sink has not delivered was accepted.",
                    ),
                    &["sink"],
                )
                .expect("valid gauge"),
            ),
            fsync: reg(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        BUFFER_FSYNC_DURATION_SECONDS,
                        "Seconds one fdatasync of the disk buffer's log took.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                    ]),
                )
                .expect("valid histogram"),
            ),
            corrupt: reg(
                registry,
                IntCounter::new(
                    BUFFER_CORRUPT_RECORDS_TOTAL,
                    "Damaged records found in the disk buffer's log.",
                )
                .expect("valid counter"),
            ),
            disk_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(BUFFER_DISK_ERRORS_TOTAL, "Disk errors of the buffer, by kind."),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            replayed: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        BUFFER_REPLAYED_EVENTS_TOTAL,
                        "Events accepted by the previous run that a sink was given after this start.",
                    ),
                    &["sink"],
                )
                .expect("valid counter"),
            ),
        };
        for kind in DISK_ERROR_KINDS {
            m.disk_errors.with_label_values(&[kind]);
        }
        for sink in sinks {
            m.events.with_label_values(&[sink]);
            m.oldest_age.with_label_values(&[sink]);
            m.replayed.with_label_values(&[sink]);
        }
        m
    }
}
