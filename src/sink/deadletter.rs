//! The dead-letter file: events an endpoint rejected for good, appended as
//! JSON lines so that an operator can inspect and replay them.
//!
//! The file is opened at start-up, so that a folder that does not exist or
//! cannot be written fails the start naming `dead_letter_file`. A write that
//! fails later (a full disk) is undone to the last whole line and reported to
//! the caller, which holds the events and tries again.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;

use crate::decode::Event;

/// An append-only JSON-lines file.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    /// Appends to `path`, creating it when first needed.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The dead-letter file of a sink's `dead_letter_file`, if it has one,
    /// opened once to check it can be appended to.
    ///
    /// # Errors
    ///
    /// A message naming the key and the file, with the I/O error.
    pub fn configured(path: Option<&PathBuf>) -> anyhow::Result<Option<Self>> {
        let Some(path) = path else {
            return Ok(None);
        };
        let dl = Self::new(path.clone());
        dl.check().map_err(|e| {
            anyhow::anyhow!(
                "dead_letter_file {}: cannot be opened for appending: {e}",
                path.display()
            )
        })?;
        Ok(Some(dl))
    }

    /// Opens the file for appending (creating it), as [`DeadLetter::append`]
    /// will: called at start-up.
    ///
    /// # Errors
    ///
    /// The I/O error (a folder that does not exist, no permission), for the
    /// caller to report with the key and the file's name.
    pub fn check(&self) -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map(drop)
    }

    /// Appends `events`, one per line. When the write fails, what it wrote is
    /// cut off again (as far as the file system lets it), so that a retry
    /// does not leave half a line.
    ///
    /// # Errors
    ///
    /// The I/O error, for the caller to log with the file's name.
    pub async fn append<'a>(&self, events: impl Iterator<Item = &'a Event>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in events {
            buf.extend_from_slice(&e.raw);
            buf.push(b'\n');
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        let start = file.metadata().await?.len();
        let written = match file.write_all(&buf).await {
            Ok(()) => file.flush().await,
            Err(e) => Err(e),
        };
        if written.is_err() && file.metadata().await.is_ok_and(|m| m.is_file()) {
            let _ = file.set_len(start).await;
        }
        written
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
