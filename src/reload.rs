//! Applying a new configuration to a running forwarder (on SIGHUP, as Vector,
//! Fluent Bit and HAProxy do) without losing or duplicating an acknowledged
//! event:
//!
//! - a sink whose configuration is unchanged keeps its queue and its task;
//! - a removed sink gets nothing more; its queue is closed and it delivers
//!   what it holds, then ends (as at a shutdown, whose deadline bounds it);
//! - a new sink starts with an empty queue and gets every batch admitted from
//!   then on;
//! - a changed sink is the old one removed and a new one added, in one step:
//!   each batch goes to exactly one of them. A new stdout sink waits for its
//!   predecessor to finish so that their lines do not mix;
//! - listeners are started again when `source`, `decode` or
//!   `pipeline.retry_after_secs` changed (or `metrics`, for the metrics listener): the old one stops
//!   accepting and finishes its in-flight requests; a listener whose address
//!   is unchanged is handed the same socket, so no connection is refused;
//! - `shutdown.deadline_secs` and `pipeline.admission_wait_ms` apply at once;
//!   `log.level` is applied by the binary;
//! - `buffer` and `log.format` cannot change while running, nor `sinks` with
//!   a disk buffer (each sink's position in the log is opened at start): the
//!   old ones stay, the rest is applied, and the log names what needs a
//!   restart.
//!
//! Everything new is built and bound first; if any of it fails, nothing is
//! changed.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::{ListenerTask, Parts, SinkTask, queue_spec, reuse, spawn_sink};
use crate::config::{Config, SinkConfig};
use crate::server;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A sink or listener of the new configuration could not be built.
    #[error("{0:#}")]
    Build(anyhow::Error),
    /// The forwarder is shutting down.
    #[error("the forwarder is shutting down")]
    ShuttingDown,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sinks started.
    pub added: Vec<String>,
    /// Sinks stopped (draining what they hold).
    pub removed: Vec<String>,
    /// Sinks replaced by a new one of the same name.
    pub changed: Vec<String>,
    /// Listeners started again (`http`, `https`, `metrics`).
    pub listeners: Vec<&'static str>,
    /// Sections that changed but need a restart (`buffer`, `log.format`,
    /// `sinks` with a disk buffer); the
    /// running values stay.
    pub restart_needed: Vec<&'static str>,
}

impl ReloadReport {
    /// `success`, or `restart_required` when a changed section was kept: the
    /// `result` label of `audit_forwarder_config_reloads_total`.
    pub fn result(&self) -> &'static str {
        if self.restart_needed.is_empty() {
            "success"
        } else {
            "restart_required"
        }
    }
}

/// The sockets of the listeners to start, bound or taken over.
struct Sockets {
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

impl Parts {
    /// Applies `new` as the module says, and counts the result.
    pub(crate) async fn reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload(new).await;
        let label = match &result {
            Ok(report) => report.result(),
            Err(_) => "failure",
        };
        self.metrics.config_reload(label);
        match &result {
            Ok(r) => {
                tracing::info!(
                    added = ?r.added,
                    removed = ?r.removed,
                    changed = ?r.changed,
                    listeners = ?r.listeners,
                    "configuration reloaded"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(sections = ?r.restart_needed, "these settings changed but take effect only after a restart; the running ones stay");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the running configuration stays")
            }
        }
        result
    }

    async fn try_reload(&mut self, mut new: Config) -> Result<ReloadReport, ReloadError> {
        let old = self.config.clone();
        let mut report = ReloadReport::default();
        if new.buffer != old.buffer {
            report.restart_needed.push("buffer");
            new.buffer = old.buffer.clone();
        }
        if new.log.format != old.log.format {
            report.restart_needed.push("log.format");
            new.log.format = old.log.format;
        }
        // With a disk buffer each sink has a saved position in the log,
        // opened at start: the set of sinks is fixed until a restart.
        if self.pipeline.has_disk_buffer() && new.sinks != old.sinks {
            report.restart_needed.push("sinks");
            new.sinks = old.sinks.clone();
        }

        // Sinks: what to start, what to stop.
        let mut start: Vec<SinkConfig> = Vec::new();
        for s in &new.sinks {
            match old.sinks.iter().find(|o| o.name() == s.name()) {
                Some(o) if o == s => {}
                Some(_) => {
                    report.changed.push(s.name().to_owned());
                    start.push(s.clone());
                }
                None => {
                    report.added.push(s.name().to_owned());
                    start.push(s.clone());
                }
            }
        }
        report.removed = old
            .sinks
            .iter()
            .filter(|o| !new.sinks.iter().any(|s| s.name() == o.name()))
            .map(|o| o.name().to_owned())
            .collect();
        let mut built = Vec::new();
        for s in &start {
            let q = s.queue();
            let metrics = self
                .metrics
                .sink(s.name(), q.capacity_events, q.capacity_bytes);
            built.push(self.build_sink(s, metrics).map_err(ReloadError::Build)?);
        }

        // Listeners: bind or take over their sockets, then start them.
        let webhook_changed = new.source != old.source
            || new.decode != old.decode
            || new.pipeline.retry_after_secs != old.pipeline.retry_after_secs;
        let admin_changed = new.metrics != old.metrics;
        let sockets = self
            .sockets(&new, webhook_changed, admin_changed)
            .await
            .map_err(ReloadError::Build)?;
        let webhook = match webhook_changed {
            true => Some(
                self.start_webhook(&new, sockets.http, sockets.https)
                    .await
                    .map_err(ReloadError::Build)?,
            ),
            false => None,
        };
        let admin = match sockets
            .metrics
            .map(|l| self.start_admin(&new.metrics.address, l))
        {
            Some(Ok(admin)) => Some(admin),
            Some(Err(e)) => {
                for l in webhook.iter().flatten() {
                    l.stop.cancel();
                }
                return Err(ReloadError::Build(e));
            }
            None => None,
        };

        // Nothing can fail from here on.
        let remove: Vec<String> = report
            .removed
            .iter()
            .chain(&report.changed)
            .cloned()
            .collect();
        let specs: Vec<_> = start.iter().map(queue_spec).collect();
        let readers = self.pipeline.replace(&remove, &specs, &self.metrics);
        let (gone, kept): (Vec<SinkTask>, Vec<SinkTask>) = std::mem::take(&mut self.sinks)
            .into_iter()
            .partition(|s| remove.iter().any(|r| r == s.config.name()));
        self.sinks = kept;
        for ((cfg, (sink, watchers, processor)), mut reader) in
            start.into_iter().zip(built).zip(readers)
        {
            if let Some(p) = processor {
                reader.set_processor(p);
            }
            let predecessor = gone
                .iter()
                .find(|g| g.config.name() == cfg.name())
                .filter(|_| matches!(cfg, SinkConfig::Stdout(_)))
                .map(|g| g.done.clone());
            self.sinks
                .push(spawn_sink(sink, reader, watchers, cfg, predecessor));
        }
        self.retired_sinks.retain(|s| !s.task.is_finished());
        self.retired_sinks.extend(gone);
        // Keep the order of the new file.
        self.sinks
            .sort_by_key(|s| new.sinks.iter().position(|n| n.name() == s.config.name()));

        self.pipeline.set_wait(std::time::Duration::from_millis(
            new.pipeline.admission_wait_ms,
        ));
        if let Some(started) = webhook {
            for l in std::mem::replace(&mut self.webhook, started) {
                report.listeners.push(l.kind);
                self.retire(l);
            }
            for l in &self.webhook {
                if !report.listeners.contains(&l.kind) {
                    report.listeners.push(l.kind);
                }
            }
        }
        if admin_changed {
            if let Some(l) = self.admin.take() {
                l.stop.cancel();
                self.retired_listeners.push(l.task);
            }
            self.admin = admin;
            report.listeners.push("metrics");
        }
        self.retired_listeners.retain(|t| !t.is_finished());
        self.config = new;
        if !report.listeners.is_empty() {
            self.log_listeners();
        }
        Ok(report)
    }

    /// Stops `l` accepting; its in-flight requests finish.
    fn retire(&mut self, l: ListenerTask) {
        l.stop.cancel();
        self.retired_listeners.push(l.task);
    }

    /// The sockets of the listeners to start: the running listener's own
    /// socket when the address is unchanged, a new one otherwise.
    async fn sockets(&self, new: &Config, webhook: bool, admin: bool) -> anyhow::Result<Sockets> {
        let mut sockets = Sockets {
            http: None,
            https: None,
            metrics: None,
        };
        if webhook {
            let http = &new.source.http;
            if http.enabled {
                sockets.http = Some(
                    self.socket("http", http.address, "webhook requests")
                        .await?,
                );
            }
            let https = &new.source.https;
            if https.enabled {
                sockets.https = Some(
                    self.socket("https", https.address, "webhook requests over HTTPS")
                        .await?,
                );
            }
        }
        if admin && new.metrics.enabled {
            sockets.metrics = Some(
                self.socket("metrics", new.metrics.address, "metrics")
                    .await?,
            );
        }
        Ok(sockets)
    }

    async fn socket(
        &self,
        kind: &str,
        address: SocketAddr,
        what: &str,
    ) -> anyhow::Result<TcpListener> {
        let running = self
            .webhook
            .iter()
            .chain(&self.admin)
            .find(|l| l.kind == kind && l.configured == address);
        match running {
            Some(l) => reuse(&l.socket),
            None => server::bind(address, what).await,
        }
    }
}
