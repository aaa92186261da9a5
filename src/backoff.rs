//! Exponential backoff with jitter: how long to wait before the next attempt after failures in
//! a row. One type for every retry loop (links, offline probes, sinks), so all of them back off
//! the same way and are tested once.

use std::time::Duration;

/// The pause grows by `factor` after each failure, from `min` up to `max`; each pause is spread
/// by ±`jitter` (a fraction) so that many peers failing together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    /// Doubling from `min` to `max`, ±20 % jitter.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            factor: 2.0,
            jitter: 0.2,
            next: min,
        }
    }

    /// The spread of each pause, as a fraction of it (0 for none).
    pub const fn with_jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// How much longer each pause is than the one before.
    pub const fn with_factor(mut self, factor: f64) -> Backoff {
        self.factor = factor;
        self
    }

    /// One more failure: the pause before the next attempt. The pause after it is longer.
    pub fn fail(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.mul_f64(self.factor).clamp(self.min, self.max);
        if self.jitter > 0.0 {
            base.mul_f64(rand::random_range(1.0 - self.jitter..1.0 + self.jitter))
        } else {
            base
        }
    }

    /// A success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_min_to_max_and_a_success_starts_over() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)).with_jitter(0.0);
        let pauses: Vec<_> = (0..5).map(|_| b.fail().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1))
            .with_jitter(0.0)
            .with_factor(3.0);
        let pauses: Vec<_> = (0..4).map(|_| b.fail().as_millis()).collect();
        assert_eq!(pauses, [100, 300, 900, 1000]);
    }

    #[test]
    fn jitter_spreads_each_pause_within_its_fraction() {
        for _ in 0..200 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
            let p = b.fail().as_secs_f64();
            assert!((0.8..=1.2).contains(&p), "{p}");
            let p = b.fail().as_secs_f64();
            assert!((1.6..=2.4).contains(&p), "{p}");
        }
    }
}
