//! Wiring and life cycle: builds the sinks, the pipeline and the listeners from a
//! [`Config`], runs them, and shuts them down in order (DESIGN.md, "graceful
//! life"): stop accepting and finish in-flight requests, close the queues, let
//! the sinks drain, all within `shutdown.deadline_secs`.

use std::net::SocketAddr;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Readiness};
use crate::buffer::DiskBuffer;
use crate::config::{BufferKind, Config, SinkConfig};
use crate::decode::DecodeOptions;
use crate::metrics::{Metrics, TlsMetrics};
use crate::pipeline::{Pipeline, QueueSpec};
use crate::process::{ProcessMetrics, Processor};
use crate::server::{self, ServeOptions};
use crate::sink::{BoxWriter, HttpSink, Sink, StdoutSink, TcpSink};
use crate::source::Handler;
use crate::source::{https, plain};

/// A forwarder ready to start.
pub struct App {
    config: Config,
    metrics: Metrics,
    stdout: Option<BoxWriter>,
}

/// A running forwarder.
pub struct Running {
    /// Where the plain webhook listener is bound; the unspecified address
    /// `0.0.0.0:0` when `source.http.enabled` is false.
    pub http_addr: SocketAddr,
    /// Where the HTTPS webhook listener is bound, if enabled.
    pub https_addr: Option<SocketAddr>,
    /// Where the metrics listener is bound, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: Metrics,
    shutdown: CancellationToken,
    draining: CancellationToken,
    stop_admin: CancellationToken,
    ready: Readiness,
    pipeline: Arc<Pipeline>,
    source: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    sinks: Vec<(String, JoinHandle<()>)>,
    /// Keep the sinks' client certificates reloading while running.
    _watchers: Vec<crate::tls::watch::FileWatcher>,
    deadline: Duration,
}

/// How a shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events still queued when the deadline passed (counted as dropped with
    /// reason `shutdown`).
    pub undelivered_events: usize,
    /// Sinks that had not finished by the deadline.
    pub unfinished_sinks: Vec<String>,
}

impl App {
    /// A forwarder for `config` (already validated by [`crate::config::load`]).
    pub fn new(config: Config) -> Self {
        Self {
            config,
            metrics: Metrics::new(),
            stdout: None,
        }
    }

    /// Sends the stdout sink's lines to `writer` instead of the process's stdout.
    pub fn with_stdout(mut self, writer: BoxWriter) -> Self {
        self.stdout = Some(writer);
        self
    }

    /// Binds the listeners and starts every task.
    ///
    /// # Errors
    ///
    /// A listener address that cannot be bound, named in the error.
    pub async fn start(mut self) -> anyhow::Result<Running> {
        let cfg = &self.config;
        let http_cfg = &cfg.source.http;
        let specs: Vec<QueueSpec> = cfg
            .sinks
            .iter()
            .map(|s| QueueSpec {
                name: s.name().to_owned(),
                capacity_events: s.queue().capacity_events,
                capacity_bytes: s.queue().capacity_bytes,
                when_full: s.queue().when_full,
            })
            .collect();
        let wait = Duration::from_millis(cfg.pipeline.admission_wait_ms);
        let (pipeline, readers) = match cfg.buffer.kind {
            BufferKind::Memory => Pipeline::new(&specs, wait, &self.metrics),
            BufferKind::Disk => {
                let sinks: Vec<_> = specs
                    .iter()
                    .map(|s| (s.name.clone(), s.when_full))
                    .collect();
                let replay = DecodeOptions {
                    max_events: usize::MAX,
                    max_event_bytes: cfg.decode.max_event_bytes,
                };
                let buffer = DiskBuffer::open(
                    &cfg.buffer,
                    &sinks,
                    replay,
                    http_cfg.max_decoded_bytes,
                    &self.metrics,
                )?;
                Pipeline::with_disk(&specs, wait, &self.metrics, buffer)
            }
        };
        let pipeline = Arc::new(pipeline);

        let listener = match http_cfg.enabled {
            true => Some(server::bind(http_cfg.address, "webhook requests").await?),
            false => None,
        };
        let http_addr = match &listener {
            Some(l) => l.local_addr()?,
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let admin_listener = match cfg.metrics.enabled {
            true => Some(server::bind(cfg.metrics.address, "metrics").await?),
            false => None,
        };
        let metrics_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let tls_metrics = TlsMetrics::register(self.metrics.registry());
        let mut watchers = Vec::new();
        let mut sinks = Vec::new();
        let process_metrics = ProcessMetrics::register(self.metrics.registry());
        let state_dir = (cfg.buffer.kind == BufferKind::Disk).then_some(cfg.buffer.path.as_path());
        for (sink_cfg, mut reader) in cfg.sinks.iter().zip(readers) {
            let name = sink_cfg.name();
            let processor = Processor::build(name, sink_cfg.process(), state_dir, &process_metrics)
                .with_context(|| format!("sink {name}"))?;
            if !processor.is_noop() {
                let processor = Arc::new(processor);
                watchers.extend(
                    processor
                        .watch(Duration::from_secs(60))
                        .with_context(|| format!("sink {name}"))?,
                );
                reader.set_processor(processor);
            }
            let sink = match sink_cfg {
                SinkConfig::Stdout(_) => {
                    let writer = self.stdout.take().map_or_else(
                        || {
                            crate::sink::fd::FdWriter::stdout()
                                .map(|w| Box::new(w) as BoxWriter)
                                .context("failed to open standard output")
                        },
                        Ok,
                    )?;
                    Sink::Stdout(StdoutSink::new(writer))
                }
                SinkConfig::Http(c) => Sink::Http(Box::new(
                    HttpSink::build(c, reader.metrics().clone())
                        .with_context(|| format!("sink {}", c.name))?,
                )),
                SinkConfig::Tcp(c) => {
                    Sink::Tcp(TcpSink::build(c).with_context(|| format!("sink {}", c.name))?)
                }
            };
            if let Some(tls) = sink.tls() {
                watchers.extend(watch_sink_tls(sink_cfg.name(), tls, &tls_metrics)?);
            }
            sinks.push((sink_cfg.name().to_owned(), tokio::spawn(sink.run(reader))));
        }

        let shutdown = CancellationToken::new();
        let draining = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let ready = Readiness::default();
        let opts = ServeOptions::from_http(http_cfg);
        let handler = Arc::new(Handler::new(
            http_cfg,
            cfg.decode.max_event_bytes,
            cfg.pipeline.retry_after_secs,
            pipeline.clone(),
            self.metrics.clone(),
            draining.clone(),
        ));
        let (https_addr, https) = match cfg.source.https.enabled {
            true => {
                let tls_metrics = tls_metrics.clone();
                let open = self.metrics.open_connections(https::LISTENER);
                let (addr, task) = https::start(
                    &cfg.source.https,
                    opts,
                    handler.clone(),
                    tls_metrics,
                    open,
                    draining.clone(),
                )
                .await?;
                (Some(addr), Some(task))
            }
            false => (None, None),
        };
        let plain = match listener {
            Some(listener) => Some(plain::start(
                listener,
                http_cfg,
                opts,
                handler,
                self.metrics.open_connections("http"),
                draining.clone(),
            )?),
            None => None,
        };
        let source = tokio::spawn(async move {
            for task in [plain, https].into_iter().flatten() {
                let _ = task.await;
            }
        });
        let admin = admin_listener.map(|l| {
            let admin_opts = ServeOptions {
                max_connections: 64,
                ..opts
            };
            let handler = Arc::new(Admin::new(self.metrics.clone(), ready.clone()));
            let open = self.metrics.open_connections("metrics");
            tokio::spawn(server::serve(
                l,
                "metrics",
                admin_opts,
                handler,
                open,
                stop_admin.clone(),
            ))
        });
        // Ready before saying so: whoever reads the log may probe at once.
        ready.set(true);
        if http_cfg.enabled {
            tracing::info!(address = %http_addr, "webhook listener ready");
        }
        if let Some(addr) = https_addr {
            tracing::info!(address = %addr, "HTTPS webhook listener ready");
        }
        if let Some(addr) = metrics_addr {
            tracing::info!(address = %addr, "metrics listener ready");
        }
        Ok(Running {
            http_addr,
            https_addr,
            metrics_addr,
            metrics: self.metrics,
            shutdown,
            draining,
            stop_admin,
            ready,
            pipeline,
            source,
            admin,
            sinks,
            _watchers: watchers,
            deadline: Duration::from_secs(self.config.shutdown.deadline_secs),
        })
    }
}

impl Running {
    /// A token that starts the shutdown when cancelled (on SIGTERM, say).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the shutdown token, then shuts down in order within the
    /// deadline: not ready, stop accepting and finish in-flight requests (new
    /// requests on open connections get 503), close the queues, let the sinks
    /// drain. What is still queued at the deadline is logged and counted.
    pub async fn wait(self) -> ShutdownReport {
        self.shutdown.cancelled().await;
        let deadline = Instant::now() + self.deadline;
        tracing::info!(
            deadline_secs = self.deadline.as_secs(),
            "shutting down: draining requests and queues"
        );
        self.ready.set(false);
        self.draining.cancel();
        if tokio::time::timeout_at(deadline, self.source)
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish by the shutdown deadline");
        }
        self.pipeline.close();
        let mut unfinished_sinks = Vec::new();
        let mut late = Vec::new();
        for (name, mut task) in self.sinks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                unfinished_sinks.push(name);
                late.push(task);
            }
        }
        // Counted before the late sinks are stopped: stopping them gives their
        // batches' room back, and the queues would look empty.
        let queued = self.pipeline.depth_events();
        let undelivered_events = match self.pipeline.count_undelivered("shutdown") {
            Some(kept) => {
                tracing::info!(
                    kept_events = kept,
                    sinks = ?unfinished_sinks,
                    "sink positions saved; events not yet delivered stay in the disk buffer for the next start"
                );
                0
            }
            None if queued > 0 => {
                tracing::error!(undelivered_events = queued, sinks = ?unfinished_sinks, "shutdown deadline passed with events not delivered");
                queued
            }
            None => {
                tracing::info!("every queued event was delivered");
                0
            }
        };
        for task in late {
            task.abort();
        }
        self.stop_admin.cancel();
        if let Some(admin) = self.admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
        }
        ShutdownReport {
            undelivered_events,
            unfinished_sinks,
        }
    }
}

/// Publishes the expiry of a sink's client certificate and CA
/// (`certificate="sink:<name>"` and `"sink:<name>:ca"`) and reloads the client
/// certificate when its files change.
fn watch_sink_tls(
    name: &str,
    tls: &crate::tls::OutboundTls,
    metrics: &TlsMetrics,
) -> anyhow::Result<Option<crate::tls::watch::FileWatcher>> {
    if let Some(not_after) = tls.ca_not_after {
        metrics.expiry(&format!("sink:{name}:ca"), not_after);
    }
    let Some(cert) = tls.identity() else {
        return Ok(None);
    };
    let label = format!("sink:{name}");
    metrics.expiry(&label, cert.not_after());
    let (c, m) = (cert.clone(), metrics.clone());
    let watcher = cert
        .watch(Duration::from_secs(60), move |_| {
            m.expiry(&label, c.not_after())
        })
        .with_context(|| format!("sink {name}"))?;
    Ok(Some(watcher))
}
