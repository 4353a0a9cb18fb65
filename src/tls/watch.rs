//! Watching certificate files for changes without a restart.
//!
//! Kubernetes updates a secret volume by writing the new files into a fresh
//! timestamped directory, pointing a `..data_tmp` symlink at it and renaming
//! that over `..data`; the visible `tls.crt` is a symlink to `..data/tls.crt`.
//! The file itself never changes, so the directory holding it is watched (and
//! the directory its symlinks resolve to, for files written in place there).
//! Events are debounced; a periodic re-check catches anything missed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::TlsError;

/// How long to wait after an event for the rest of an update to land.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why the callback is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Something changed in a watched directory.
    Changed,
    /// The periodic re-check.
    Periodic,
}

/// A running watch; dropping it stops watching.
pub struct FileWatcher {
    task: JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Calls `on_change(Trigger::Changed)` shortly after any of `files` may have
/// changed, and `on_change(Trigger::Periodic)` every `recheck`. The callback
/// decides whether anything really changed (compare contents: directory
/// events also fire for unrelated files). Must be called within a tokio
/// runtime.
///
/// # Errors
///
/// [`TlsError::Watch`] naming a directory that cannot be watched.
pub fn watch<F>(files: &[PathBuf], recheck: Duration, on_change: F) -> Result<FileWatcher, TlsError>
where
    F: Fn(Trigger) + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.try_send(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate file watch error");
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| TlsError::Watch {
            path: files.first().map(|f| parent(f)).unwrap_or_default(),
            source,
        })?;
    let files = files.to_vec();
    let mut watched = HashSet::new();
    add_watches(&mut watcher, &files, &mut watched, true)?;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                got = rx.recv() => {
                    if got.is_none() {
                        break;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    // A new `..data` target may hold files written in place later.
                    let _ = add_watches(&mut watcher, &files, &mut watched, false);
                    on_change(Trigger::Changed);
                }
                _ = tick.tick() => on_change(Trigger::Periodic),
            }
        }
    });
    Ok(FileWatcher { task })
}

/// Watches the directory of each file and of what its symlinks resolve to.
/// Only the first directories (`strict`) must be watchable.
fn add_watches(
    watcher: &mut RecommendedWatcher,
    files: &[PathBuf],
    watched: &mut HashSet<PathBuf>,
    strict: bool,
) -> Result<(), TlsError> {
    for file in files {
        let mut dirs = vec![parent(file)];
        if let Ok(real) = std::fs::canonicalize(file) {
            dirs.push(parent(&real));
        }
        for (i, dir) in dirs.into_iter().enumerate() {
            if watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(source) if strict && i == 0 => {
                    return Err(TlsError::Watch { path: dir, source });
                }
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "not watching"),
            }
        }
    }
    Ok(())
}

fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
