//! The retry budget: retries may add at most `budget_ratio` of the recent request rate (plus a
//! small floor for quiet periods), so when every node is failing, retries cannot multiply the
//! load on them (linkerd's and Finagle's retry budget).
//!
//! The budget is kept per worker, over a 10-second window of one-second buckets, so requests
//! never touch shared state to deposit; the floor (`min_per_second`) is split between workers.
//! Which requests may be retried at all is decided in [`crate::proxy`].

use std::time::Instant;

/// Length of the window, in one-second buckets.
const WINDOW_SECS: usize = 10;

/// Requests and retries in one second.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which second (since the budget was created) this bucket holds.
    second: u64,
    requests: u64,
    retries: u64,
}

/// One worker's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    /// When the budget was created; seconds are counted from here.
    epoch: Instant,
    /// Retries allowed per request in the window.
    ratio: f64,
    /// Retries allowed per second regardless of traffic (this worker's share).
    min_per_second: f64,
    /// Ring of the last [`WINDOW_SECS`] seconds.
    buckets: [Bucket; WINDOW_SECS],
}

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_per_second` per second.
    pub fn new(ratio: f64, min_per_second: f64, now: Instant) -> Self {
        Self {
            epoch: now,
            ratio,
            min_per_second,
            buckets: [Bucket::default(); WINDOW_SECS],
        }
    }

    /// Counts one original request.
    pub fn deposit(&mut self, now: Instant) {
        self.bucket(now).requests += 1;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let second = self.second(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .filter(|b| b.second + (WINDOW_SECS as u64) > second && b.second <= second)
            .fold((0, 0), |(q, r), b| (q + b.requests, r + b.retries));
        let allowed = self.min_per_second * WINDOW_SECS as f64 + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            self.bucket(now).retries += 1;
            true
        } else {
            false
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// The bucket for `now`, emptied first if it still holds an older second.
    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = self.second(now);
        let bucket = &mut self.buckets[(second as usize) % WINDOW_SECS];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_are_capped_at_the_ratio_of_recent_requests() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(0.2, 0.0, start);
        for _ in 0..100 {
            budget.deposit(start);
        }
        let granted = (0..50).filter(|_| budget.try_withdraw(start)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_allows_retries_without_traffic_and_the_window_expires() {
        let start = Instant::now();
        let mut budget = RetryBudget::new(0.2, 1.0, start);
        let granted = (0..50).filter(|_| budget.try_withdraw(start)).count();
        assert_eq!(granted, 10, "1 per second over a 10 s window");
        let later = start + Duration::from_secs(11);
        assert!(budget.try_withdraw(later), "old retries left the window");
    }
}
