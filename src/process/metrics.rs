//! The processing counters, registered once and resolved per sink.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::metrics::names::*;

/// The processing counters of every sink.
#[derive(Clone)]
pub struct ProcessMetrics {
    dropped: IntCounterVec,
    lowered: IntCounterVec,
    redacted: IntCounterVec,
    labels: IntCounterVec,
    duplicates: IntCounterVec,
    reloads: IntCounterVec,
}

/// The counters of one sink, with its label resolved.
#[derive(Clone)]
pub struct SinkProcessMetrics {
    sink: String,
    dropped: IntCounterVec,
    /// Levels lowered.
    pub lowered: IntCounter,
    /// Values redacted.
    pub redacted: IntCounter,
    /// Labels set.
    pub labels: IntCounter,
    /// Repeats dropped.
    pub duplicates: IntCounter,
    reloads: IntCounterVec,
}

impl ProcessMetrics {
    /// Registers the counters into `registry`.
    ///
    /// # Panics
    ///
    /// When called twice for one registry (the names are constants).
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique counter");
            c
        };
        Self {
            dropped: counter(
                PROCESS_POLICY_DROPPED_TOTAL,
                "Events a sink's audit policy dropped, by rule index and reason.",
                &["sink", "rule", "reason"],
            ),
            lowered: counter(
                PROCESS_LEVELS_LOWERED_TOTAL,
                "Events whose level a sink's audit policy lowered.",
                &["sink"],
            ),
            redacted: counter(
                PROCESS_FIELDS_REDACTED_TOTAL,
                "Values a sink redacted.",
                &["sink"],
            ),
            labels: counter(
                PROCESS_LABELS_ADDED_TOTAL,
                "Labels a sink set in events' annotations.",
                &["sink"],
            ),
            duplicates: counter(
                PROCESS_DUPLICATES_DROPPED_TOTAL,
                "Events a sink dropped as repeats of an (auditID, stage) it had seen.",
                &["sink"],
            ),
            reloads: counter(
                PROCESS_POLICY_RELOADS_TOTAL,
                "Reloads of a changed audit policy file, by result.",
                &["sink", "result"],
            ),
        }
    }

    /// The counters of sink `sink`.
    pub fn sink(&self, sink: &str) -> SinkProcessMetrics {
        let one = |v: &IntCounterVec| v.with_label_values(&[sink]);
        SinkProcessMetrics {
            sink: sink.to_owned(),
            dropped: self.dropped.clone(),
            lowered: one(&self.lowered),
            redacted: one(&self.redacted),
            labels: one(&self.labels),
            duplicates: one(&self.duplicates),
            reloads: self.reloads.clone(),
        }
    }
}

impl SinkProcessMetrics {
    /// Counts `n` events dropped by rule `rule` (`None`: no rule matched).
    pub(crate) fn dropped(&self, rule: Option<usize>, reason: &str, n: u64) {
        let rule = rule.map_or_else(|| "none".to_owned(), |r| r.to_string());
        self.dropped
            .with_label_values(&[self.sink.as_str(), &rule, reason])
            .inc_by(n);
    }

    /// Counts one policy reload.
    pub(crate) fn reload(&self, result: &str) {
        self.reloads
            .with_label_values(&[self.sink.as_str(), result])
            .inc();
    }
}
