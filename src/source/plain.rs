//! The plain HTTP listener: the shared [`crate::server`] loop serving the
//! [`Handler`] behind a [`Gate`], open to all, or wanting
//! `source.http.bearer_token_file`'s token (re-read when the file changes).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Handler;
use super::auth::{Gate, TokenFile};
use super::https::token_reload;
use crate::config::HttpSourceConfig;
use crate::server::{self, ServeOptions};
use crate::tls::watch;

/// Serves `listener` until `draining` is cancelled, behind the bearer token
/// when one is configured.
///
/// # Errors
///
/// A token file that cannot be read or is empty, or whose directory cannot
/// be watched (named in the error).
pub fn start(
    listener: tokio::net::TcpListener,
    cfg: &HttpSourceConfig,
    opts: ServeOptions,
    handler: Arc<Handler>,
    open: prometheus::IntGauge,
    draining: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let token = TokenFile::from_config(&cfg.bearer_token_file)?;
    let watcher = match &token {
        Some(t) => {
            let t = t.clone();
            Some(watch::watch(
                &[t.path().to_owned()],
                Duration::from_secs(60),
                move |_| token_reload(&t),
            )?)
        }
        None => None,
    };
    let gate = Arc::new(Gate::new(handler, token.clone(), token.is_none()));
    Ok(tokio::spawn(async move {
        server::serve(listener, "http", opts, gate, open, draining).await;
        drop(watcher);
    }))
}
