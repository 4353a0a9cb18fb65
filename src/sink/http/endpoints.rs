//! An HTTP sink's endpoints: the balancing choice, passive ejection after
//! consecutive failures, and re-admission by an active health check (HAProxy's
//! `check`) or, without one, after a cool-down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::Balance;

/// One endpoint and its state.
pub(crate) struct Endpoint {
    pub(crate) url: url::Url,
    /// The URL without credentials, for logs and the metric label.
    pub(crate) label: String,
    up: AtomicBool,
    failures: AtomicU32,
    ejected_at: Mutex<Option<Instant>>,
    gauge: IntGauge,
}

/// All endpoints of one sink.
pub(crate) struct Endpoints {
    pub(crate) list: Vec<Endpoint>,
    balance: Balance,
    next: AtomicUsize,
    max_failures: u32,
    eject: Duration,
    checked: bool,
}

impl Endpoints {
    /// `checked` says whether a health check re-admits ejected endpoints (if
    /// not, they come back on their own after `eject`).
    pub(crate) fn new(
        urls: Vec<url::Url>,
        balance: Balance,
        max_failures: u32,
        eject: Duration,
        checked: bool,
        gauge: impl Fn(&str) -> IntGauge,
    ) -> Self {
        let list = urls
            .into_iter()
            .map(|url| {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                let label = shown.to_string();
                let g = gauge(&label);
                g.set(1);
                Endpoint {
                    url,
                    label,
                    up: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    ejected_at: Mutex::new(None),
                    gauge: g,
                }
            })
            .collect();
        Self {
            list,
            balance,
            next: AtomicUsize::new(0),
            max_failures: max_failures.max(1),
            eject,
            checked,
        }
    }

    fn eligible(&self, e: &Endpoint, now: Instant) -> bool {
        e.up.load(Ordering::Acquire)
            || (!self.checked
                && e.ejected_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none_or(|t| now >= t + self.eject))
    }

    /// The endpoint for the next attempt, other than `avoid` when another is
    /// eligible. When none is in rotation, the one ejected longest ago is tried.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> usize {
        let now = Instant::now();
        let n = self.list.len();
        let start = match self.balance {
            Balance::Failover => 0,
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let order = (0..n).map(|k| (start + k) % n);
        let candidates: Vec<usize> = order
            .filter(|&i| self.eligible(&self.list[i], now))
            .collect();
        if let Some(&i) = candidates
            .iter()
            .find(|&&i| Some(i) != avoid)
            .or(candidates.first())
        {
            return i;
        }
        (0..n)
            .min_by_key(|&i| {
                *self.list[i]
                    .ejected_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .unwrap_or(0)
    }

    /// Records an answer from endpoint `i` (any status: it is reachable).
    pub(crate) fn success(&self, i: usize) {
        let e = &self.list[i];
        e.failures.store(0, Ordering::Relaxed);
        if !e.up.swap(true, Ordering::AcqRel) {
            *e.ejected_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
            e.gauge.set(1);
            tracing::info!(endpoint = %e.label, "endpoint back in rotation");
        }
    }

    /// Records a failed attempt (connection error, timeout, retryable status)
    /// on endpoint `i`; the `max_failures`-th in a row ejects it.
    pub(crate) fn failure(&self, i: usize) {
        let e = &self.list[i];
        let failures = e.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut at = e.ejected_at.lock().unwrap_or_else(|p| p.into_inner());
        if failures >= self.max_failures && (e.up.swap(false, Ordering::AcqRel) || !self.checked) {
            let first = at.is_none();
            *at = Some(Instant::now());
            e.gauge.set(0);
            if first {
                tracing::warn!(endpoint = %e.label, failures, "endpoint taken out of rotation");
            }
        }
    }
}
