//! Exponential backoff with jitter between retries.

use std::time::Duration;

use rand::Rng;

/// Doubles from `initial` up to `max`; each delay is drawn from `[base/2, base]`
/// ("equal jitter"), so retrying clients spread out but never wait less than half the
/// schedule.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff { base: initial.min(max.max(initial)), max: max.max(initial) }
    }

    /// The next delay; the schedule advances.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        let half = base / 2;
        let jitter_ns = rng.random_range(0..=(base - half).as_nanos() as u64);
        half + Duration::from_nanos(jitter_ns)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn delays_double_within_bounds_and_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
            let mut base = Duration::from_millis(50);
            for _ in 0..12 {
                let d = b.next_delay(&mut rng);
                assert!(d >= base / 2 && d <= base, "{d:?} outside [{:?}, {base:?}]", base / 2);
                base = (base * 2).min(Duration::from_secs(1));
            }
            // Capped: never above the maximum, never below half of it.
            let d = b.next_delay(&mut rng);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
        }
    }

    #[test]
    fn jitter_spreads() {
        let mut rng = StdRng::seed_from_u64(1);
        let ds: std::collections::BTreeSet<_> = (0..20)
            .map(|_| Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_delay(&mut rng))
            .collect();
        assert!(ds.len() > 10, "jitter should vary: {ds:?}");
    }

    #[test]
    fn degenerate_settings_are_safe() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(1));
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(b.next_delay(&mut rng) <= Duration::from_secs(2));
    }
}
