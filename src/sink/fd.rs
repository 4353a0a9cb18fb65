//! The process's standard output as an async writer that reports every write
//! truthfully: each write is done, unbuffered, by a dedicated thread on a
//! duplicate of file descriptor 1, and completes only once the bytes are in
//! the pipe or file (or with the write's error). tokio's own `Stdout` copies
//! into a buffer, returns at once, and loses that buffer when a later write
//! fails, so a failed write could not be retried from the exact byte.
//!
//! A write blocked on a full pipe blocks only that thread; the process exits
//! regardless at the end of a shutdown.

use std::io::Write;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

/// Largest piece handed to the thread at once.
const MAX_PIECE: usize = 1 << 20;

struct Job {
    data: Vec<u8>,
    reply: oneshot::Sender<std::io::Result<usize>>,
}

/// Standard output, written by its own thread.
pub struct FdWriter {
    jobs: std::sync::mpsc::Sender<Job>,
    pending: Option<oneshot::Receiver<std::io::Result<usize>>>,
}

impl FdWriter {
    /// A writer for the process's standard output.
    ///
    /// # Errors
    ///
    /// When file descriptor 1 cannot be duplicated or the thread not started.
    pub fn stdout() -> std::io::Result<Self> {
        let mut file = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("stdout-writer".into())
            .spawn(move || {
                for job in rx {
                    let written = loop {
                        match file.write(&job.data) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            other => break other,
                        }
                    };
                    let _ = job.reply.send(written);
                }
            })?;
        Ok(Self {
            jobs,
            pending: None,
        })
    }
}

impl AsyncWrite for FdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            let (reply, rx) = oneshot::channel();
            let data = buf[..buf.len().min(MAX_PIECE)].to_vec();
            if this.jobs.send(Job { data, reply }).is_err() {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            this.pending = Some(rx);
        }
        let rx = this.pending.as_mut().expect("set above");
        match Pin::new(rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.pending = None;
                Poll::Ready(result.unwrap_or_else(|_| Err(std::io::ErrorKind::BrokenPipe.into())))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Nothing is buffered: a write completes once its bytes are written.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
