//! Log lines of a kind let through at most once per period, so that a flood
//! of refusals or drops writes one line per period, not one per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lets a log line through at most once per period, counting the ones held back.
pub(crate) struct RateLimit {
    period_ms: u64,
    epoch: std::time::Instant,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(period: Duration) -> Self {
        let epoch = std::time::Instant::now();
        Self {
            period_ms: period.as_millis() as u64,
            epoch,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}
