//! The `kube-audit-forwarder` command: runs the forwarder, or checks a config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube_audit_forwarder::app::App;
use kube_audit_forwarder::config::{self, Config, LogFormat};
use tokio::signal::unix::{SignalKind, signal};

/// Receives Kubernetes API-server audit webhook batches and forwards every event
/// to its sinks (JSON lines on stdout by default).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// YAML config file; without it the built-in default is used (listen on
    /// 0.0.0.0:3000, JSON lines to stdout, metrics on 0.0.0.0:9090).
    #[arg(
        long,
        short,
        value_name = "FILE",
        env = "AUDIT_FORWARDER_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,
    /// Also reload the config file when its content changes (a ConfigMap
    /// update), as on SIGHUP.
    #[arg(long, env = "AUDIT_FORWARDER_WATCH_CONFIG")]
    watch_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the forwarder (the default).
    Run,
    /// Check a config file (with environment overrides applied) and exit: 0 when
    /// it is valid (warnings, if any, on stderr), 1 with a message naming the
    /// bad key when it is not.
    CheckConfig {
        /// The file to check; `--config FILE` when absent.
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = std::env::vars();
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { file } => {
            let Some(file) = file.or(cli.config) else {
                eprintln!("error: check-config needs a file: check-config FILE, or --config FILE");
                return ExitCode::FAILURE;
            };
            check_config(&file, env)
        }
        Command::Run => {
            // What the file held when loaded, for --watch-config to compare with.
            let loaded = cli.config.as_deref().and_then(|p| std::fs::read(p).ok());
            let config = match config::load(cli.config.as_deref(), env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let set_level = init_logs(&config);
            let file = cli.config.map(|path| ConfigFile {
                path,
                watch: cli.watch_config,
                loaded,
            });
            match run(config, file, set_level) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{}", error_text(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Changes the log filter of a running process.
type SetLevel = Box<dyn Fn(&str) + Send + Sync>;

/// `check-config`: the file's verdict on stdout, warnings and errors on stderr.
fn check_config(file: &std::path::Path, env: std::env::Vars) -> ExitCode {
    match config::load(Some(file), env) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: Config, file: Option<ConfigFile>, set_level: SetLevel) -> anyhow::Result<()> {
    let sinks: Vec<String> = config
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name(), sink_type(s)))
        .collect();
    // SIGHUP (kill -HUP, or a terminal hang-up reaching the process group)
    // reloads the configuration instead of ending the process: caught from
    // before the listeners are up.
    let mut hup = signal(SignalKind::hangup()).context("failed to watch SIGHUP")?;
    // A change of the file's content, when watched (from before the
    // listeners are up): at most one waiting.
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    let _watcher = match &file {
        Some(f) if f.watch => Some(watch_file(f, changed_tx)?),
        _ => None,
    };
    // SIGTERM and SIGINT are caught from before the listeners are up, so that
    // one sent as soon as the start is logged still drains.
    let mut term = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let running = App::new(config).start().await?;
    let listeners: Vec<String> = [
        ("http", Some(running.http_addr).filter(|a| a.port() != 0)),
        ("https", running.https_addr),
        ("metrics", running.metrics_addr),
    ]
    .into_iter()
    .filter_map(|(kind, addr)| addr.map(|a| format!("{kind} {a}")))
    .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %shown(&file),
        listeners = %listeners.join(", "),
        sinks = %sinks.join(", "),
        "kube-audit-forwarder started"
    );
    let reloader = running.reloader();
    let metrics = running.metrics.clone();
    tokio::spawn(async move {
        loop {
            let why = tokio::select! {
                Some(()) = hup.recv() => "SIGHUP received",
                Some(()) = changed.recv() => "config file changed",
                else => return,
            };
            tracing::info!(config = %shown(&file), "{why}: reloading the configuration");
            let path = file.as_ref().map(|f| f.path.as_path());
            match config::load(path, std::env::vars()) {
                Ok(new) => {
                    let level = new.log.level.clone();
                    if reloader.reload(new).await.is_ok() {
                        set_level(&level);
                    }
                }
                Err(e) => {
                    metrics.config_reload("failure");
                    tracing::error!(error = %e, "configuration reload failed; the running configuration stays");
                }
            }
        }
    });
    let token = running.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal received: exiting without draining");
        std::process::exit(130);
    });
    let report = running.wait().await;
    tracing::info!(undelivered_events = report.undelivered_events, "stopped");
    // Exit now: a sink stuck in a blocking write (a stdout pipe nobody reads)
    // must not keep the process alive past the deadline.
    std::process::exit(0)
}

/// The config file given on the command line.
struct ConfigFile {
    path: PathBuf,
    /// Reload when its content changes.
    watch: bool,
    /// Its content when it was loaded.
    loaded: Option<Vec<u8>>,
}

fn shown(file: &Option<ConfigFile>) -> String {
    file.as_ref().map_or_else(
        || "(built-in default)".into(),
        |f| f.path.display().to_string(),
    )
}

/// Sends on `changed` when the content of `file` differs from what was
/// loaded or last seen (checked on every change in its folder, a ConfigMap's symlink swap
/// included, and once a minute).
fn watch_file(
    file: &ConfigFile,
    changed: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<kube_audit_forwarder::tls::watch::FileWatcher> {
    let seen = std::sync::Mutex::new(file.loaded.clone());
    let watched = file.path.clone();
    let paths = [file.path.clone()];
    kube_audit_forwarder::tls::watch::watch(&paths, Duration::from_secs(60), move |_| {
        let now = std::fs::read(&watched).ok();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && *seen != now {
            *seen = now;
            let _ = changed.try_send(());
        }
    })
    .context("--watch-config")
}

/// Installs the log subscriber; returns what changes its filter on a reload
/// (nothing when `RUST_LOG` is set: it takes precedence).
fn init_logs(config: &Config) -> SetLevel {
    use tracing_subscriber::EnvFilter;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set: SetLevel = match config.log.format {
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |level| {
                let _ = handle.reload(EnvFilter::new(level));
            })
        }
        LogFormat::Text => {
            let b = builder.with_ansi(false).with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            Box::new(move |level| {
                let _ = handle.reload(EnvFilter::new(level));
            })
        }
    };
    if fixed { Box::new(|_| {}) } else { set }
}

fn sink_type(s: &config::SinkConfig) -> &'static str {
    match s {
        config::SinkConfig::Stdout(_) => "stdout",
        config::SinkConfig::Http(_) => "http",
        config::SinkConfig::Tcp(_) => "tcp",
        config::SinkConfig::Kafka(_) => "kafka",
    }
}

/// An error and its causes, each said once: a cause whose text the message
/// already carries is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
