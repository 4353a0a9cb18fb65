//! The `process` block of a sink: audit policy, redaction, labels and dedup,
//! applied on that sink's path only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `sinks[].process`: what a sink does to events before it encodes them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// An `audit.k8s.io/v1` `Policy` file (the one kube-apiserver takes with
    /// `--audit-policy-file`), applied to each event; re-read when it changes.
    /// None: every event passes at the level it came with.
    pub policy_file: Option<PathBuf>,
    /// Redaction of secret values.
    pub redact: RedactConfig,
    /// Annotations set on every event: key to value.
    pub labels: BTreeMap<String, String>,
    /// An annotation taken from the request path.
    pub label_from_path: Option<LabelFromPathConfig>,
    /// Dropping of repeated `(auditID, stage)` pairs.
    pub dedup: DedupConfig,
}

/// `process.redact`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Replace with `"[REDACTED]"` the `data` and `stringData` values of
    /// Secrets (in lists and `last-applied-configuration` annotations too) and
    /// the tokens of TokenRequests and TokenReviews.
    pub secrets: bool,
    /// More values to replace, as dot-separated member names from the event's
    /// root, `*` for any member or element: `requestObject.spec.password`.
    pub paths: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        Self {
            secrets: true,
            paths: Vec::new(),
        }
    }
}

/// `process.label_from_path`: with `prefix: /post/`, a request to
/// `/post/eu-1` sets annotation `annotation` to `eu-1`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelFromPathConfig {
    /// The annotation key to set.
    pub annotation: String,
    /// The path before the segment taken; starts and ends with `/`.
    pub prefix: String,
}

/// `process.dedup`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Whether repeats are dropped.
    pub enabled: bool,
    /// Seconds a key stays in the window; the API server's retries of one
    /// batch end within about 4 minutes.
    pub window_secs: u64,
    /// Most keys in the window (16 bytes each on disk, about 40 in memory);
    /// at a higher rate than `max_events / window_secs` the window is shorter.
    pub max_events: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window_secs: 300,
            max_events: 250_000,
        }
    }
}

impl ProcessConfig {
    /// Checks the block of the sink at `prefix` (`sinks[0]`), reading the
    /// policy file.
    ///
    /// # Errors
    ///
    /// `(key path, message)`; a policy file's message names the file, rule
    /// index and key.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{prefix}.process.{k}");
        if let Some(path) = &self.policy_file {
            crate::process::Policy::load(path).map_err(|e| (key("policy_file"), e.to_string()))?;
        }
        for (i, p) in self.redact.paths.iter().enumerate() {
            if p.split('.').any(str::is_empty) {
                return Err((
                    key(&format!("redact.paths[{i}]")),
                    "must be member names separated by '.', none empty".into(),
                ));
            }
        }
        let plain = is_annotation_key;
        for k in self.labels.keys() {
            if !plain(k) {
                return Err((
                    key(&format!("labels.{k}")),
                    "an annotation key is letters, digits, '-', '_', '.' and '/'".into(),
                ));
            }
        }
        if let Some(l) = &self.label_from_path {
            if !plain(&l.annotation) {
                return Err((
                    key("label_from_path.annotation"),
                    "an annotation key is letters, digits, '-', '_', '.' and '/'".into(),
                ));
            }
            if !l.prefix.starts_with('/') || !l.prefix.ends_with('/') {
                return Err((
                    key("label_from_path.prefix"),
                    "must start and end with '/'".into(),
                ));
            }
        }
        if self.dedup.enabled && (self.dedup.window_secs == 0 || self.dedup.max_events == 0) {
            return Err((
                key("dedup"),
                "window_secs and max_events must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

/// Whether `s` may be a label's annotation key: letters, digits, `-`, `_`,
/// `.` and `/`, not empty.
pub(crate) fn is_annotation_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}
