//! The node-local limiter used while Redis is unreachable: the same GCRA as the Redis script,
//! over a map in memory.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::Decision;

/// Buckets kept before full ones (their time has passed) are swept out.
const SWEEP_ABOVE: usize = 100_000;

/// Theoretical arrival times by bucket key, measured from `epoch`.
#[derive(Debug)]
pub struct LocalLimiter {
    /// The clock's origin.
    epoch: Instant,
    /// Bucket key → theoretical arrival time (ms since `epoch`).
    buckets: Mutex<HashMap<String, u64>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalLimiter {
    /// Spends one request of `key`'s bucket of `limit` per `period`.
    pub fn check(&self, key: &str, limit: u32, period: Duration) -> Decision {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.check_at(key, limit, period, now)
    }

    fn check_at(&self, key: &str, limit: u32, period: Duration, now: u64) -> Decision {
        let period = period.as_millis() as u64;
        let interval = period / u64::from(limit.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, tat| *tat > now);
        }
        let tat = buckets.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat.saturating_sub(period);
        if now < allow_at {
            return Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset: Duration::from_millis(tat - now),
                retry_after: Duration::from_millis(allow_at - now),
            };
        }
        buckets.insert(key.to_owned(), new_tat);
        Decision {
            allowed: true,
            limit,
            remaining: ((period - (new_tat - now)) / interval) as u32,
            reset: Duration::from_millis(new_tat - now),
            retry_after: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_budget_is_spent_at_once_then_refills_one_interval_at_a_time() {
        let limiter = LocalLimiter::default();
        for expected_remaining in (0..4).rev() {
            let decision = limiter.check_at("k", 4, HOUR, 0);
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
        }
        let refused = limiter.check_at("k", 4, HOUR, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(900));
        assert_eq!(refused.reset, HOUR);
        // A quarter hour later, one more.
        assert!(limiter.check_at("k", 4, HOUR, 900_000).allowed);
        assert!(!limiter.check_at("k", 4, HOUR, 900_000).allowed);
        // Other keys have their own budget.
        assert!(limiter.check_at("other", 4, HOUR, 900_000).allowed);
    }
}
