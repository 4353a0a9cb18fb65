//! Exponential backoff with jitter, for retries and reconnects.

use std::time::Duration;

/// Doubling pauses between `initial` and `max`, each drawn at random from the
/// upper half of its step ("equal jitter"), so that many forwarders retrying
/// at once do not stay in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Pauses from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step.min(self.max);
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts again from `initial`.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        for (d, step) in steps.iter().zip([100, 200, 400, 400, 400]) {
            assert!(
                *d >= Duration::from_millis(step / 2) && *d <= Duration::from_millis(step),
                "{d:?} for {step}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
