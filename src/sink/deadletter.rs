//! The dead-letter file: events an endpoint rejected for good, appended as
//! JSON lines so that an operator can inspect and replay them.

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

    /// Appends `events`, one per line.
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
        file.write_all(&buf).await?;
        file.flush().await
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
