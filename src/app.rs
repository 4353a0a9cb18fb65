//! Wiring and life cycle: builds the sinks, the pipeline and the listeners from a
//! [`Config`], runs them, applies a new configuration while running
//! ([`crate::reload`]), and shuts them down in order (DESIGN.md, "graceful
//! life"): stop accepting and finish in-flight requests, close the queues, let
//! the sinks drain, all within `shutdown.deadline_secs`.

use std::net::SocketAddr;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Readiness};
use crate::buffer::DiskBuffer;
use crate::config::{BufferKind, Config, SinkConfig};
use crate::decode::DecodeOptions;
use crate::metrics::{Metrics, SinkMetrics, TlsMetrics};
use crate::pipeline::{Pipeline, QueueReader, QueueSpec};
use crate::process::{ProcessMetrics, Processor};
use crate::reload::{ReloadError, ReloadReport};
use crate::server::{self, ServeOptions};
use crate::sink::{BoxWriter, HttpSink, Sink, StdoutSink, TcpSink};
use crate::source::Handler;
use crate::source::{https, plain};
use crate::tls::watch::FileWatcher;

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
    ready: Readiness,
    pub(crate) parts: Parts,
    reloads: mpsc::Receiver<ReloadRequest>,
    reload_tx: mpsc::Sender<ReloadRequest>,
}

type ReloadRequest = (Config, oneshot::Sender<Result<ReloadReport, ReloadError>>);

/// What a running forwarder is made of, and what a reload changes.
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) sinks: Vec<SinkTask>,
    /// Sinks a reload removed, draining what their queues still hold.
    pub(crate) retired_sinks: Vec<SinkTask>,
    pub(crate) webhook: Vec<ListenerTask>,
    /// Listeners a reload replaced, finishing their in-flight requests.
    pub(crate) retired_listeners: Vec<JoinHandle<()>>,
    pub(crate) admin: Option<ListenerTask>,
    pub(crate) ready: Readiness,
    /// Parent of every webhook listener's stop token.
    pub(crate) draining: CancellationToken,
    /// Parent of the metrics listener's stop token.
    pub(crate) stop_admin: CancellationToken,
    pub(crate) tls_metrics: TlsMetrics,
    pub(crate) process_metrics: ProcessMetrics,
    /// The writer the first stdout sink takes instead of the process's
    /// stdout (in a mutex so that the parts can be shared across a reload).
    pub(crate) stdout: std::sync::Mutex<Option<BoxWriter>>,
}

/// One running sink.
pub(crate) struct SinkTask {
    pub(crate) config: SinkConfig,
    pub(crate) task: JoinHandle<()>,
    /// Cancelled once the sink has delivered everything and ended.
    pub(crate) done: CancellationToken,
    /// Keep its client certificate reloading while it runs.
    pub(crate) _watchers: Vec<FileWatcher>,
}

/// One running listener.
pub(crate) struct ListenerTask {
    /// `http`, `https` or `metrics`.
    pub(crate) kind: &'static str,
    /// The address configured (port 0 included).
    pub(crate) configured: SocketAddr,
    /// Where it is bound.
    pub(crate) bound: SocketAddr,
    /// A duplicate of the listening socket, so that a successor with the same
    /// address takes it over without refusing a connection.
    pub(crate) socket: socket2::Socket,
    pub(crate) stop: CancellationToken,
    pub(crate) task: JoinHandle<()>,
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

/// Asks a [`Running`] forwarder to apply a new configuration.
#[derive(Clone)]
pub struct Reloader(mpsc::Sender<ReloadRequest>);

impl Reloader {
    /// Applies `config` (already validated by [`crate::config::load`]) to the
    /// running forwarder, as [`crate::reload`] describes, and counts the
    /// result in `audit_forwarder_config_reloads_total{result}`.
    ///
    /// # Errors
    ///
    /// [`ReloadError`] when nothing was changed: a sink or listener of the new
    /// configuration could not be built, or the forwarder is shutting down.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((config, tx))
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        rx.await.map_err(|_| ReloadError::ShuttingDown)?
    }
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
    pub async fn start(self) -> anyhow::Result<Running> {
        let cfg = self.config;
        for warning in cfg.warnings() {
            tracing::warn!("{warning}");
        }
        let specs: Vec<QueueSpec> = cfg.sinks.iter().map(queue_spec).collect();
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
                    cfg.source.http.max_decoded_bytes,
                    &self.metrics,
                )?;
                Pipeline::with_disk(&specs, wait, &self.metrics, buffer)
            }
        };
        let pipeline = Arc::new(pipeline);

        let http = match cfg.source.http.enabled {
            true => Some(server::bind(cfg.source.http.address, "webhook requests").await?),
            false => None,
        };
        let admin_listener = match cfg.metrics.enabled {
            true => Some(server::bind(cfg.metrics.address, "metrics").await?),
            false => None,
        };
        let https = match cfg.source.https.enabled {
            true => {
                Some(server::bind(cfg.source.https.address, "webhook requests over HTTPS").await?)
            }
            false => None,
        };

        let tls_metrics = TlsMetrics::register(self.metrics.registry());
        let mut parts = Parts {
            config: cfg,
            metrics: self.metrics.clone(),
            pipeline,
            sinks: Vec::new(),
            retired_sinks: Vec::new(),
            webhook: Vec::new(),
            retired_listeners: Vec::new(),
            admin: None,
            ready: Readiness::default(),
            draining: CancellationToken::new(),
            stop_admin: CancellationToken::new(),
            tls_metrics,
            process_metrics: ProcessMetrics::register(self.metrics.registry()),
            stdout: std::sync::Mutex::new(self.stdout),
        };
        let sink_cfgs = parts.config.sinks.clone();
        for (sink_cfg, mut reader) in sink_cfgs.iter().zip(readers) {
            let (sink, watchers, processor) =
                parts.build_sink(sink_cfg, reader.metrics().clone())?;
            if let Some(p) = processor {
                reader.set_processor(p);
            }
            let task = spawn_sink(sink, reader, watchers, sink_cfg.clone(), None);
            parts.sinks.push(task);
        }
        parts.webhook = parts
            .start_webhook(&parts.config.clone(), http, https)
            .await?;
        if let Some(l) = admin_listener {
            parts.admin = Some(parts.start_admin(&parts.config.metrics.address.clone(), l)?);
        }
        // Ready before saying so: whoever reads the log may probe at once.
        parts.ready.set(true);
        parts.log_listeners();
        let (reload_tx, reloads) = mpsc::channel(1);
        let http_addr = parts
            .listener("http")
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(Running {
            http_addr,
            https_addr: parts.listener("https"),
            metrics_addr: parts.admin.as_ref().map(|a| a.bound),
            metrics: self.metrics,
            shutdown: CancellationToken::new(),
            ready: parts.ready.clone(),
            parts,
            reloads,
            reload_tx,
        })
    }
}

/// The queue of a sink as the pipeline needs it.
pub(crate) fn queue_spec(s: &SinkConfig) -> QueueSpec {
    QueueSpec {
        name: s.name().to_owned(),
        capacity_events: s.queue().capacity_events,
        capacity_bytes: s.queue().capacity_bytes,
        when_full: s.queue().when_full,
    }
}

/// Runs `sink` on `reader` in its own task; with `after`, only once that
/// token is cancelled (a stdout sink replaced by a reload waits for its
/// predecessor to finish, so that their lines do not mix).
pub(crate) fn spawn_sink(
    sink: Sink,
    reader: QueueReader,
    watchers: Vec<FileWatcher>,
    config: SinkConfig,
    after: Option<CancellationToken>,
) -> SinkTask {
    let done = CancellationToken::new();
    let finished = done.clone();
    let task = tokio::spawn(async move {
        if let Some(after) = after {
            after.cancelled().await;
        }
        sink.run(reader).await;
        finished.cancel();
    });
    SinkTask {
        config,
        task,
        done,
        _watchers: watchers,
    }
}

impl Parts {
    /// Builds the sink `cfg` describes, with its certificate watchers.
    ///
    /// # Errors
    ///
    /// A file or URL of the sink's configuration that does not load, named.
    pub(crate) fn build_sink(
        &mut self,
        cfg: &SinkConfig,
        metrics: SinkMetrics,
    ) -> anyhow::Result<(Sink, Vec<FileWatcher>, Option<Arc<Processor>>)> {
        let known = metrics.clone();
        let sink = match cfg {
            SinkConfig::Stdout(_) => {
                let given = self.stdout.lock().unwrap_or_else(|p| p.into_inner()).take();
                let writer = given.map_or_else(
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
                HttpSink::build(c, metrics).with_context(|| format!("sink {}", c.name))?,
            )),
            SinkConfig::Tcp(c) => {
                Sink::Tcp(TcpSink::build(c).with_context(|| format!("sink {}", c.name))?)
            }
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => Sink::Kafka(Box::new(
                crate::sink::KafkaSink::build(c, metrics)
                    .with_context(|| format!("sink {}", c.name))?,
            )),
            #[cfg(not(feature = "kafka"))]
            SinkConfig::Kafka(c) => anyhow::bail!(
                "sink {}: this build has no kafka sink (built without the `kafka` feature)",
                c.name
            ),
        };
        let (errors, connection_errors) = sink.reasons();
        known.known_reasons(errors, connection_errors);
        let mut watchers = Vec::new();
        if let Some(tls) = sink.tls() {
            watchers.extend(watch_sink_tls(cfg.name(), tls, &self.tls_metrics)?);
        }
        if let Sink::Http(http) = &sink {
            watchers.extend(
                http.watch_credentials()
                    .with_context(|| format!("sink {}", cfg.name()))?,
            );
        }
        // The sink's own view of each batch: policy, redaction, labels, dedup.
        let name = cfg.name();
        let state_dir = (self.config.buffer.kind == BufferKind::Disk)
            .then_some(self.config.buffer.path.as_path());
        let processor = Processor::build(name, cfg.process(), state_dir, &self.process_metrics)
            .with_context(|| format!("sink {name}"))?;
        let processor = match processor.is_noop() {
            true => None,
            false => {
                let processor = Arc::new(processor);
                watchers.extend(
                    processor
                        .watch(Duration::from_secs(60))
                        .with_context(|| format!("sink {name}"))?,
                );
                Some(processor)
            }
        };
        Ok((sink, watchers, processor))
    }

    /// Starts the webhook listeners of `cfg` on the given sockets (bound to
    /// `cfg.source.http.address` and `cfg.source.https.address`).
    ///
    /// # Errors
    ///
    /// A certificate or token file that does not load, named.
    pub(crate) async fn start_webhook(
        &self,
        cfg: &Config,
        http: Option<TcpListener>,
        https: Option<TcpListener>,
    ) -> anyhow::Result<Vec<ListenerTask>> {
        let http_cfg = &cfg.source.http;
        let opts = ServeOptions::from_http(http_cfg);
        let handler = Arc::new(Handler::new(
            http_cfg,
            cfg.decode.max_event_bytes,
            cfg.pipeline.retry_after_secs,
            self.pipeline.clone(),
            self.metrics.clone(),
            self.draining.clone(),
        ));
        let mut started = Vec::new();
        if let Some(listener) = http {
            let stop = self.draining.child_token();
            let socket = duplicate(&listener)?;
            let bound = listener.local_addr()?;
            let open = self.metrics.open_connections("http");
            let task = plain::start(
                listener,
                http_cfg,
                opts,
                handler.clone(),
                open,
                stop.clone(),
            )?;
            started.push(ListenerTask {
                kind: "http",
                configured: http_cfg.address,
                bound,
                socket,
                stop,
                task,
            });
        }
        if let Some(listener) = https {
            let stop = self.draining.child_token();
            let socket = duplicate(&listener)?;
            let open = self.metrics.open_connections(https::LISTENER);
            let result = https::start(
                listener,
                &cfg.source.https,
                opts,
                handler,
                self.tls_metrics.clone(),
                open,
                stop.clone(),
            )
            .await;
            let (bound, task) = match result {
                Ok(ok) => ok,
                Err(e) => {
                    for s in &started {
                        s.stop.cancel();
                    }
                    return Err(e);
                }
            };
            started.push(ListenerTask {
                kind: "https",
                configured: cfg.source.https.address,
                bound,
                socket,
                stop,
                task,
            });
        }
        Ok(started)
    }

    /// Starts the metrics and health listener on `listener`.
    ///
    /// # Errors
    ///
    /// The socket's address cannot be read.
    pub(crate) fn start_admin(
        &self,
        configured: &SocketAddr,
        listener: TcpListener,
    ) -> anyhow::Result<ListenerTask> {
        let opts = ServeOptions {
            max_connections: 64,
            ..ServeOptions::from_http(&self.config.source.http)
        };
        let stop = self.stop_admin.child_token();
        let socket = duplicate(&listener)?;
        let bound = listener.local_addr()?;
        let handler = Arc::new(Admin::new(self.metrics.clone(), self.ready.clone()));
        let open = self.metrics.open_connections("metrics");
        let task = tokio::spawn(server::serve(
            listener,
            "metrics",
            opts,
            handler,
            open,
            stop.clone(),
        ));
        Ok(ListenerTask {
            kind: "metrics",
            configured: *configured,
            bound,
            socket,
            stop,
            task,
        })
    }

    /// Where the listener of `kind` is bound, if it runs.
    pub(crate) fn listener(&self, kind: &str) -> Option<SocketAddr> {
        self.webhook
            .iter()
            .chain(&self.admin)
            .find(|l| l.kind == kind)
            .map(|l| l.bound)
    }

    pub(crate) fn log_listeners(&self) {
        for l in self.webhook.iter().chain(&self.admin) {
            let what = match l.kind {
                "http" => "webhook listener ready",
                "https" => "HTTPS webhook listener ready",
                _ => "metrics listener ready",
            };
            tracing::info!(address = %l.bound, "{what}");
        }
    }
}

/// A listener on the same socket as `listener`.
///
/// # Errors
///
/// The socket cannot be duplicated (out of file descriptors).
pub(crate) fn duplicate(listener: &TcpListener) -> anyhow::Result<socket2::Socket> {
    socket2::SockRef::from(listener)
        .try_clone()
        .context("failed to duplicate a listening socket")
}

/// A tokio listener on a duplicate of `socket`.
///
/// # Errors
///
/// The socket cannot be duplicated or registered with the runtime.
pub(crate) fn reuse(socket: &socket2::Socket) -> anyhow::Result<TcpListener> {
    let std: std::net::TcpListener = socket
        .try_clone()
        .context("failed to duplicate a listening socket")?
        .into();
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std)?)
}

impl Running {
    /// A token that starts the shutdown when cancelled (on SIGTERM, say).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A handle that applies a new configuration while [`Running::wait`] runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.reload_tx.clone())
    }

    /// Applies reloads until the shutdown token is cancelled, then shuts down
    /// in order within the deadline: not ready, stop accepting and finish
    /// in-flight requests (new requests on open connections get 503), close
    /// the queues, let the sinks drain (those a reload removed included).
    /// What is still queued at the deadline is logged and counted.
    pub async fn wait(mut self) -> ShutdownReport {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some((config, reply)) = self.reloads.recv() => {
                    let result = self.parts.reload(config).await;
                    let _ = reply.send(result);
                }
            }
        }
        let parts = self.parts;
        let deadline_secs = parts.config.shutdown.deadline_secs;
        let deadline = Instant::now() + Duration::from_secs(deadline_secs);
        tracing::info!(deadline_secs, "shutting down: draining requests and queues");
        self.ready.set(false);
        parts.draining.cancel();
        let listeners = parts
            .webhook
            .into_iter()
            .map(|l| l.task)
            .chain(parts.retired_listeners);
        let mut finished = true;
        for task in listeners {
            finished &= tokio::time::timeout_at(deadline, task).await.is_ok();
        }
        if !finished {
            tracing::warn!("in-flight requests did not finish by the shutdown deadline");
        }
        parts.pipeline.close();
        let sinks: Vec<SinkTask> = parts.sinks.into_iter().chain(parts.retired_sinks).collect();
        // With a disk buffer what is not delivered stays on disk: the sinks
        // are waited for only while they deliver.
        let deadline = match parts.pipeline.disk_backlog() {
            Some(_) => drain_while_delivering(&parts.pipeline, &sinks, deadline).await,
            None => deadline,
        };
        let mut unfinished_sinks = Vec::new();
        let mut late = Vec::new();
        for mut s in sinks {
            if tokio::time::timeout_at(deadline, &mut s.task)
                .await
                .is_err()
            {
                unfinished_sinks.push(s.config.name().to_owned());
                late.push(s.task);
            }
        }
        // Counted before the late sinks are stopped: stopping them gives their
        // batches' room back, and the queues would look empty.
        let queued = parts.pipeline.depth_events();
        let undelivered_events = match parts.pipeline.count_undelivered("shutdown") {
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
        parts.stop_admin.cancel();
        if let Some(admin) = parts.admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), admin.task).await;
        }
        ShutdownReport {
            undelivered_events,
            unfinished_sinks,
        }
    }
}

/// With a disk buffer, at shutdown: waits until every sink has finished,
/// the deadline passes, or no event has been delivered for a second (a slow
/// or dead sink, whose backlog stays on disk for the next start), and returns
/// when to stop waiting for the sinks.
async fn drain_while_delivering(
    pipeline: &Pipeline,
    sinks: &[SinkTask],
    deadline: Instant,
) -> Instant {
    const STALL: Duration = Duration::from_secs(1);
    let mut last = pipeline.disk_backlog().unwrap_or(0);
    let mut moved = Instant::now();
    loop {
        if sinks.iter().all(|s| s.task.is_finished()) || Instant::now() >= deadline {
            return deadline;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(50))).await;
        let backlog = pipeline.disk_backlog().unwrap_or(0);
        if backlog < last {
            (last, moved) = (backlog, Instant::now());
        } else if moved.elapsed() >= STALL {
            tracing::info!(
                undelivered_events = backlog,
                "no event delivered for a second: not waiting for the sinks; the rest stays in the disk buffer"
            );
            return Instant::now();
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
) -> anyhow::Result<Option<FileWatcher>> {
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
