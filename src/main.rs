//! The `kube-audit-forwarder` command: runs the forwarder, or checks a config file.

use std::path::PathBuf;
use std::process::ExitCode;

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
            let config = match config::load(cli.config.as_deref(), env) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logs(&config);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

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
async fn run(config: Config) -> anyhow::Result<()> {
    let running = App::new(config).start().await?;
    let token = running.shutdown_token();
    let mut term = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
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

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
