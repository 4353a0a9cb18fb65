//! Dedup of re-sent batches: a window of the `(auditID, stage)` keys a sink
//! has seen, bounded in entries and in seconds.
//!
//! The API server re-sends a whole batch after an error or a timeout, so each
//! stage of one request (one event) can come twice. Keys are 64-bit FNV-1a
//! hashes (a false match needs about 2^32 keys in one window). With the disk
//! buffer the window is saved to `<buffer.path>/<sink>.dedup` at most once per
//! second while events flow, and when the sink stops; it holds only keys of
//! batches the sink has finished with, so a batch replayed from the log after
//! a crash is never mistaken for its own repeat. A crash loses at most the
//! last second of keys.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"KAFDDUP1";
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The window of one sink.
#[derive(Debug)]
pub(crate) struct Window {
    seen: HashSet<u64>,
    /// Keys in the order seen, with the unix second they were seen.
    order: VecDeque<(u64, u64)>,
    /// Keys of batches the sink has not finished with.
    pending: HashSet<u64>,
    max_events: usize,
    window_secs: u64,
    file: Option<PathBuf>,
    last_save: Option<Instant>,
    dirty: bool,
    /// The sink is stopping: every commit is saved at once.
    closing: bool,
}

/// The key of one event.
pub(crate) fn key(audit_id: &[u8], stage: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &c in audit_id.iter().chain([0u8].iter()).chain(stage) {
        h ^= u64::from(c);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Window {
    /// An empty window of at most `max_events` keys younger than
    /// `window_secs`, saved to `file` when given (and read from it if it is
    /// there; a file that is damaged or of another format is ignored).
    pub(crate) fn new(max_events: usize, window_secs: u64, file: Option<PathBuf>) -> Self {
        let mut w = Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            pending: HashSet::new(),
            max_events,
            window_secs,
            file,
            last_save: None,
            dirty: false,
            closing: false,
        };
        w.load();
        w
    }

    fn load(&mut self) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let Some(body) = bytes.strip_prefix(MAGIC) else {
            tracing::warn!(file = %path.display(), "dedup window file has an unknown format; starting empty");
            return;
        };
        let (entries, crc) = body.split_at(body.len() - body.len() % 16);
        if crc.len() != 4 || crc32c::crc32c(entries).to_le_bytes() != crc {
            tracing::warn!(file = %path.display(), "dedup window file is damaged; starting empty");
            return;
        }
        let oldest = now_secs().saturating_sub(self.window_secs);
        for e in entries.chunks_exact(16) {
            let (k, t) = e.split_at(8);
            let k = u64::from_le_bytes(k.try_into().unwrap_or_default());
            let t = u64::from_le_bytes(t.try_into().unwrap_or_default());
            if t >= oldest && self.seen.insert(k) {
                self.order.push_back((k, t));
            }
        }
        self.trim(now_secs());
        tracing::info!(file = %path.display(), keys = self.order.len(), "dedup window restored");
    }

    fn trim(&mut self, now: u64) {
        let oldest = now.saturating_sub(self.window_secs);
        while let Some(&(k, t)) = self.order.front() {
            if t >= oldest && self.order.len() <= self.max_events {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&k);
            self.pending.remove(&k);
        }
    }

    /// Records `key`; `false` when it is already in the window (a repeat).
    pub(crate) fn insert(&mut self, key: u64) -> bool {
        let now = now_secs();
        self.trim(now);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back((key, now));
        self.pending.insert(key);
        self.trim(now);
        true
    }

    /// Marks `keys` as delivered (kept in the saved window from now on).
    pub(crate) fn commit(&mut self, keys: &[u64]) {
        for k in keys {
            self.pending.remove(k);
        }
        self.dirty |= !keys.is_empty();
    }

    /// Saves the window if it changed and the last save is a second old, or
    /// at once when `now`.
    pub(crate) fn save_if_due(&mut self, now: bool) {
        let due = self.last_save.is_none_or(|t| t.elapsed() >= SAVE_EVERY);
        if self.file.is_none() || !self.dirty || !(now || due || self.closing) {
            return;
        }
        self.last_save = Some(Instant::now());
        self.dirty = false;
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, file = ?self.file, "failed to save the dedup window");
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let mut entries = Vec::with_capacity(self.order.len() * 16);
        for (k, t) in &self.order {
            if !self.pending.contains(k) {
                entries.extend_from_slice(&k.to_le_bytes());
                entries.extend_from_slice(&t.to_le_bytes());
            }
        }
        let tmp = path.with_extension("dedup.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&entries)?;
        f.write_all(&crc32c::crc32c(&entries).to_le_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    }

    /// Saves now, and saves each later commit at once: the sink is stopping
    /// and its last deliveries are finishing.
    pub(crate) fn close(&mut self) {
        self.closing = true;
        self.dirty = true;
        self.save_if_due(true);
    }

    /// Keys in the window.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_refused_and_the_window_is_bounded_in_keys() {
        let mut w = Window::new(3, 300, None);
        assert!(w.insert(key(b"a", b"ResponseComplete")));
        assert!(w.insert(key(b"a", b"RequestReceived")));
        assert!(!w.insert(key(b"a", b"ResponseComplete")));
        assert!(w.insert(key(b"b", b"x")));
        assert!(w.insert(key(b"c", b"x")));
        assert_eq!(w.len(), 3);
        // The oldest went out to make room.
        assert!(w.insert(key(b"a", b"ResponseComplete")));
    }

    #[test]
    fn only_delivered_keys_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.dedup");
        let mut w = Window::new(100, 300, Some(file.clone()));
        let (a, b) = (key(b"a", b"s"), key(b"b", b"s"));
        assert!(w.insert(a) && w.insert(b));
        w.commit(&[a]);
        w.save_if_due(true);
        let mut again = Window::new(100, 300, Some(file.clone()));
        assert_eq!(again.len(), 1);
        assert!(!again.insert(a));
        assert!(again.insert(b));
        std::fs::write(&file, b"KAFDDUP1garbage").unwrap();
        assert_eq!(Window::new(100, 300, Some(file)).len(), 0);
    }
}
