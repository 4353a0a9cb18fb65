//! Per-sink processing of events, after the sink's queue and before its
//! encoding: an audit [`Policy`] (drop, lower the level, omit stages and
//! managed fields), redaction of secret values, labels in `annotations`, and
//! dedup of re-sent events.
//!
//! The queue (or the disk buffer's log) keeps the batch as received; each
//! sink sees its own processed view. A batch that processing leaves alone is
//! handed on as the same `Arc<Batch>`; a changed one becomes a new [`Batch`]
//! whose body is a re-built `EventList` (what a pass-through sink relays) and
//! whose events are slices of it. Only events that change are re-serialised:
//! their top-level members are copied byte for byte except where a value is
//! removed or replaced, so key order, numbers and escapes stay as received.
//!
//! Order: policy, then dedup of what the policy keeps, then redaction and
//! labels.

mod dedup;
pub(crate) mod json;
mod labels;
mod metrics;
pub mod policy;
mod redact;
mod view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::BytesMut;

use crate::config::ProcessConfig;
use crate::decode::{Event, EventMeta, Level};
use crate::pipeline::Batch;
pub use metrics::{ProcessMetrics, SinkProcessMetrics};
use policy::Attrs;
pub use policy::{AuditLevel, Policy, PolicyError};
pub use redact::REDACTED;

use json::Edit;
use labels::Labels;
use redact::Redactor;
use view::View;

/// One sink's processing, built from its `process` config.
pub struct Processor {
    sink: String,
    policy: Option<Arc<PolicySource>>,
    redactor: Redactor,
    labels: Labels,
    dedup: Option<Arc<Mutex<dedup::Window>>>,
    metrics: SinkProcessMetrics,
}

/// A policy file and the policy last read from it.
struct PolicySource {
    path: PathBuf,
    current: ArcSwap<Policy>,
    text: Mutex<String>,
}

/// What processing made of a batch.
pub enum Processed {
    /// Nothing changed: the batch as it was queued.
    Same,
    /// A new batch with what is left of the events (none, when every event
    /// was dropped).
    Changed(Arc<Batch>),
}

/// Held while a sink delivers a processed batch: once dropped, the batch's
/// dedup keys count as delivered (and may be saved).
pub struct Done {
    window: Arc<Mutex<dedup::Window>>,
    keys: Vec<u64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.commit(&self.keys);
        w.save_if_due(false);
    }
}

/// What the policy and the steps after it did to one batch, counted.
#[derive(Default)]
struct Counts {
    dropped: Vec<(Option<usize>, &'static str, u64)>,
    lowered: u64,
    redacted: u64,
    labels: u64,
    duplicates: u64,
}

impl Counts {
    fn drop_by(&mut self, rule: Option<usize>, reason: &'static str) {
        match self
            .dropped
            .iter_mut()
            .find(|(r, why, _)| *r == rule && *why == reason)
        {
            Some(e) => e.2 += 1,
            None => self.dropped.push((rule, reason, 1)),
        }
    }
}

/// What becomes of one event.
enum Fate {
    Keep,
    Drop,
    Rewrite(Vec<u8>),
}

impl Processor {
    /// Builds the processing of sink `sink`. `state_dir` is where the dedup
    /// window is saved (the disk buffer's directory), if anywhere.
    ///
    /// # Errors
    ///
    /// [`PolicyError`] when the policy file cannot be read or is not valid.
    pub fn build(
        sink: &str,
        cfg: &ProcessConfig,
        state_dir: Option<&Path>,
        metrics: &ProcessMetrics,
    ) -> Result<Self, PolicyError> {
        let policy = match &cfg.policy_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let policy = Policy::load(path)?;
                Some(Arc::new(PolicySource {
                    path: path.clone(),
                    current: ArcSwap::from_pointee(policy),
                    text: Mutex::new(text),
                }))
            }
            None => None,
        };
        let from_path = cfg
            .label_from_path
            .as_ref()
            .map(|l| (l.annotation.clone(), l.prefix.clone()));
        let fixed = cfg
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let dedup = cfg.dedup.enabled.then(|| {
            let file = state_dir.map(|d| d.join(format!("{sink}.dedup")));
            Arc::new(Mutex::new(dedup::Window::new(
                cfg.dedup.max_events,
                cfg.dedup.window_secs,
                file,
            )))
        });
        Ok(Self {
            sink: sink.to_owned(),
            policy,
            redactor: Redactor::new(cfg.redact.secrets, &cfg.redact.paths),
            labels: Labels::new(fixed, from_path),
            dedup,
            metrics: metrics.sink(sink),
        })
    }

    /// The processing of `cfg` with `policy` in place of its policy file.
    #[cfg(test)]
    pub(crate) fn with_policy(cfg: &ProcessConfig, policy: Option<Policy>) -> Self {
        let metrics = ProcessMetrics::register(&prometheus::Registry::new());
        let mut p = Self::build("test", cfg, None, &metrics).expect("no policy file");
        p.policy = policy.map(|policy| {
            Arc::new(PolicySource {
                path: PathBuf::new(),
                current: ArcSwap::from_pointee(policy),
                text: Mutex::new(String::new()),
            })
        });
        p
    }

    /// Sets the labels each listener gives its requests' events (`[http,
    /// https]`, from `source.http.labels` and `source.https.labels`); this
    /// sink's own labels win for the same key.
    pub fn with_listener_labels(
        mut self,
        http: &BTreeMap<String, String>,
        https: &BTreeMap<String, String>,
    ) -> Self {
        let pairs =
            |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.labels.set_listener([pairs(http), pairs(https)]);
        self
    }

    /// Whether this never changes a batch.
    pub fn is_noop(&self) -> bool {
        self.policy.is_none()
            && self.redactor.is_noop()
            && self.labels.is_noop()
            && self.dedup.is_none()
    }

    /// Re-reads the policy file; keeps the policy in use when the file did
    /// not change or is not valid (logged and counted).
    pub fn reload_policy(&self) {
        let Some(src) = &self.policy else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&src.path) else {
            return;
        };
        let mut last = src.text.lock().unwrap_or_else(|p| p.into_inner());
        if *last == text {
            return;
        }
        match Policy::parse(&text) {
            Ok(p) => {
                tracing::info!(sink = %self.sink, file = %src.path.display(), rules = p.len(), "audit policy reloaded");
                src.current.store(Arc::new(p));
                self.metrics.reload("success");
            }
            Err((key, message)) => {
                tracing::error!(sink = %self.sink, file = %src.path.display(), key, message, "changed audit policy is not valid; keeping the one in use");
                self.metrics.reload("failure");
            }
        }
        *last = text;
    }

    /// Watches the policy file (like certificate files) and reloads it when it
    /// changes; `None` without a policy file. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// The directory of the file cannot be watched.
    pub fn watch(
        self: &Arc<Self>,
        recheck: Duration,
    ) -> Result<Option<crate::tls::watch::FileWatcher>, crate::tls::TlsError> {
        let Some(src) = &self.policy else {
            return Ok(None);
        };
        let me = Arc::downgrade(self);
        crate::tls::watch::watch(std::slice::from_ref(&src.path), recheck, move |_| {
            if let Some(p) = me.upgrade() {
                p.reload_policy();
            }
        })
        .map(Some)
    }

    /// Saves the dedup window now (when the sink stops).
    pub fn flush(&self) {
        if let Some(w) = &self.dedup {
            w.lock().unwrap_or_else(|p| p.into_inner()).close();
        }
    }

    /// Processes `batch`; the [`Done`] is to be dropped once the sink has
    /// finished with the result.
    pub fn process(&self, batch: &Batch) -> (Processed, Option<Done>) {
        if self.is_noop() {
            return (Processed::Same, None);
        }
        let policy = self.policy.as_ref().map(|p| p.current.load_full());
        let labels = self
            .labels
            .resolve(&batch.origin.path_and_query, batch.origin.listener);
        let mut counts = Counts::default();
        let mut keys = Vec::new();
        let mut window = self
            .dedup
            .as_ref()
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()));
        let mut fates = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let fate = self.event(
                e,
                &batch.body,
                policy.as_deref(),
                &labels,
                &mut counts,
                &mut |k| match window.as_mut() {
                    None => true,
                    Some(w) => {
                        let fresh = w.insert(k);
                        if fresh {
                            keys.push(k);
                        }
                        fresh
                    }
                },
            );
            fates.push(fate);
        }
        drop(window);
        self.record(&counts);
        let done = self.dedup.as_ref().map(|w| Done {
            window: w.clone(),
            keys,
        });
        if fates.iter().all(|f| matches!(f, Fate::Keep)) {
            return (Processed::Same, done);
        }
        (Processed::Changed(Arc::new(rebuild(batch, fates))), done)
    }

    fn record(&self, c: &Counts) {
        for (rule, reason, n) in &c.dropped {
            self.metrics.dropped(*rule, reason, *n);
        }
        for (counter, n) in [
            (&self.metrics.lowered, c.lowered),
            (&self.metrics.redacted, c.redacted),
            (&self.metrics.labels, c.labels),
            (&self.metrics.duplicates, c.duplicates),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    fn event(
        &self,
        e: &Event,
        body: &[u8],
        policy: Option<&Policy>,
        labels: &labels::Resolved,
        counts: &mut Counts,
        fresh: &mut dyn FnMut(u64) -> bool,
    ) -> Fate {
        let m = &e.meta;
        // Decided from the routing fields the decoder found, so that an event
        // nothing changes is never scanned again.
        let secrets = self.redactor.secrets() && m.has_bodies;
        let attrs = (policy.is_some() || secrets).then(|| Attrs::of_meta(m, body));
        let decision = match (policy, &attrs) {
            (Some(p), Some(a)) => Some(p.decide_at(a, m.stage)),
            _ => None,
        };
        let mut lower = None;
        let mut omit_managed_fields = false;
        if let Some(d) = decision {
            if d.level == AuditLevel::None {
                counts.drop_by(d.rule, "level_none");
                return Fate::Drop;
            }
            if d.omit_stage {
                counts.drop_by(d.rule, "omit_stage");
                return Fate::Drop;
            }
            let have = match m.level {
                Some(Level::Metadata) => Some(AuditLevel::Metadata),
                Some(Level::Request) => Some(AuditLevel::Request),
                Some(Level::RequestResponse) => Some(AuditLevel::RequestResponse),
                _ => None,
            };
            lower = have.filter(|&h| d.level < h).map(|_| d.level);
            omit_managed_fields = d.omit_managed_fields && m.has_bodies;
        }
        if let Some(id) = m.audit_id.filter(|_| self.dedup.is_some()) {
            let stage = m.stage.map_or(0, |s| s as u8 + 1);
            if !fresh(dedup::key(id.get(body), &[stage])) {
                counts.duplicates += 1;
                return Fate::Drop;
            }
        }
        let hint = match secrets || self.redactor.has_paths() {
            true => attrs
                .as_ref()
                .and_then(Attrs::object)
                .map_or(redact::Hint::Other, redact::hint),
            false => redact::Hint::Other,
        };
        let redact = (secrets && hint != redact::Hint::Other) || self.redactor.has_paths();
        if lower.is_none() && !omit_managed_fields && !redact && labels.is_empty() {
            return Fate::Keep;
        }
        let raw = &e.raw[..];
        let Some(v) = View::new(raw) else {
            return Fate::Keep;
        };
        let mut removed: Vec<usize> = Vec::new();
        let mut edits: Vec<Edit> = Vec::new();
        if let (Some(level), Some(r)) = (lower, v.level_range()) {
            counts.lowered += 1;
            edits.push(Edit {
                range: r,
                with: json::quote(level.as_str()),
            });
            removed.extend(v.response_object);
            if level == AuditLevel::Metadata {
                removed.extend(v.request_object);
            }
        }
        if omit_managed_fields {
            for i in [v.request_object, v.response_object].into_iter().flatten() {
                if !removed.contains(&i)
                    && let Some(r) = v.value(Some(i))
                {
                    managed_fields(raw, r, &mut edits);
                }
            }
        }
        let kept = |i: usize| !removed.contains(&i);
        if redact {
            counts.redacted += self.redactor.edits(&v, hint, kept, &mut edits) as u64;
        }
        let mut append = Vec::new();
        counts.labels += Labels::edits(&v, labels, &mut edits, &mut append) as u64;
        if removed.is_empty() && edits.is_empty() && append.is_empty() {
            return Fate::Keep;
        }
        Fate::Rewrite(write(&v, &removed, &mut edits, &append))
    }
}

/// Adds edits removing `metadata.managedFields` of the object at `r`, or of
/// each item of a list.
fn managed_fields(b: &[u8], r: std::ops::Range<usize>, edits: &mut Vec<Edit>) {
    let mut one = |obj: std::ops::Range<usize>| {
        if let Some(meta) = json::get(b, obj, b"metadata")
            && let Some(range) = member_removal(b, meta, b"managedFields")
        {
            edits.push(Edit {
                range,
                with: Vec::new(),
            });
        }
    };
    if let Some(items) = json::get(b, r.clone(), b"items") {
        for item in json::elements(b, items) {
            one(item);
        }
    }
    one(r);
}

/// The range whose removal takes member `name` out of the object at `obj`,
/// with one of the commas beside it.
fn member_removal(
    b: &[u8],
    obj: std::ops::Range<usize>,
    name: &[u8],
) -> Option<std::ops::Range<usize>> {
    let all: Vec<_> = json::members(b, obj).collect();
    let i = all.iter().position(|m| m.is(b, name))?;
    Some(
        match (i.checked_sub(1).and_then(|p| all.get(p)), all.get(i + 1)) {
            (Some(prev), _) => prev.value.end..all[i].value.end,
            (None, Some(next)) => all[i].start..next.start,
            (None, None) => all[i].start..all[i].value.end,
        },
    )
}

/// The event `v` without the top-level members `removed`, with `edits`
/// applied and the members `append` (JSON text without braces) added.
fn write(v: &View<'_>, removed: &[usize], edits: &mut [Edit], append: &[u8]) -> Vec<u8> {
    let b = v.raw;
    let mut out = Vec::with_capacity(b.len() + append.len() + 16);
    out.push(b'{');
    let mut first = true;
    for (i, m) in v.top.iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let mut mine: Vec<Edit> = edits
            .iter()
            .filter(|e| e.range.start >= m.start && e.range.end <= m.value.end)
            .cloned()
            .collect();
        json::splice(b, m.start, m.value.end, &mut mine, &mut out);
    }
    if !append.is_empty() {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(append);
    }
    out.push(b'}');
    out
}

/// The batch of the events `fates` keep, its body a re-built `EventList`.
fn rebuild(batch: &Batch, fates: Vec<Fate>) -> Batch {
    const HEAD: &[u8] =
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;
    let mut body = BytesMut::with_capacity(batch.body.len() + 64);
    body.extend_from_slice(HEAD);
    let mut places = Vec::with_capacity(fates.len());
    for (e, fate) in batch.events.iter().zip(&fates) {
        let raw: &[u8] = match fate {
            Fate::Drop => continue,
            Fate::Keep => &e.raw,
            Fate::Rewrite(r) => r,
        };
        if !places.is_empty() {
            body.extend_from_slice(b",");
        }
        let start = body.len();
        body.extend_from_slice(raw);
        places.push(start..body.len());
    }
    body.extend_from_slice(b"]}");
    let body = body.freeze();
    // Decoding the new body gives each event its slice of it and its routing
    // fields as spans of it; the events are compact, so nothing is copied.
    let opts = crate::decode::DecodeOptions {
        max_events: usize::MAX,
        max_event_bytes: 0,
    };
    let events = match crate::decode::decode(&body, &opts) {
        Ok(d) if d.events.len() == places.len() => d.events,
        _ => places
            .into_iter()
            .map(|r| Event {
                raw: body.slice(r),
                meta: EventMeta::default(),
            })
            .collect(),
    };
    let origin = crate::pipeline::Origin {
        path_and_query: batch.origin.path_and_query.clone(),
        gzip_wire: None,
        listener: batch.origin.listener,
    };
    Batch::with_origin(body, events, origin)
}

#[cfg(test)]
mod tests;
