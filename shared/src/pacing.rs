//! Pacing of WebSocket handshakes, the schedule both the node and the balancer use: when
//! thousands of clients reconnect at once (a node died, a network blip, a deploy), their
//! handshakes are admitted at a bounded rate after a burst instead of all at once. A
//! handshake beyond the rate waits for its turn, up to a longest wait; one that would wait
//! longer is refused (503 with `Retry-After`, each binary in its own error format).
//!
//! Why: a storm's handshakes (connections, token checks, subscriptions, buffers) would
//! otherwise take every core for a while, and the requests and event deliveries of everyone
//! already connected would queue behind them; paced, the storm takes a little longer and the
//! others hardly notice it (the `slow-consumers` chaos experiment, docs/benchmarks.md).
//!
//! The schedule is the generic cell rate algorithm with one bucket, waiting instead of
//! refusing: each handshake takes the next free slot of the theoretical arrival time; a slot
//! within the burst's tolerance is now.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A pacing schedule, shared by every task (and thread) that admits handshakes.
#[derive(Debug)]
pub struct Pacer {
    /// Time between two admitted handshakes (1 / rate); `None`: no pacing.
    interval: Option<Duration>,
    /// How far ahead of the schedule a handshake may go ((burst − 1) × interval: a burst's
    /// handshakes all go at once).
    tolerance: Duration,
    /// Longest a handshake waits for its slot.
    max_wait: Duration,
    /// The theoretical arrival time: when the schedule is free again.
    next_free: Mutex<Instant>,
}

/// A handshake refused because its slot was this far away, beyond the longest wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub Duration);

/// When a handshake may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Now.
    Now,
    /// After this wait.
    After(Duration),
    /// Not within the longest wait: it would have had to wait this long. Takes no slot.
    Refused(Duration),
}

impl Pacer {
    /// `per_second` handshakes a second after a burst of `burst` (at least one), each waiting
    /// at most `max_wait`; a rate of 0 admits everything at once.
    pub fn new(per_second: u32, burst: u32, max_wait: Duration) -> Self {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        Self {
            interval,
            tolerance: interval.unwrap_or_default() * burst.saturating_sub(1),
            max_wait,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this handshake's slot: `Ok(true)` if it had to wait, `Ok(false)` if its slot
    /// was now, or the refusal when the slot is further away than the longest wait.
    pub async fn admit(&self) -> Result<bool, Refused> {
        match self.reserve_at(Instant::now()) {
            Slot::Now => Ok(false),
            Slot::After(wait) => {
                tokio::time::sleep(wait).await;
                Ok(true)
            }
            Slot::Refused(wait) => Err(Refused(wait)),
        }
    }

    fn reserve_at(&self, now: Instant) -> Slot {
        let Some(interval) = self.interval else {
            return Slot::Now;
        };
        let mut next_free = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let scheduled = (*next_free).max(now);
        let wait = scheduled.saturating_duration_since(now + self.tolerance);
        if wait > self.max_wait {
            return Slot::Refused(wait);
        }
        *next_free = scheduled + interval;
        if wait.is_zero() {
            Slot::Now
        } else {
            Slot::After(wait)
        }
    }
}

impl Refused {
    /// Seconds for the refusal's `Retry-After`: the wait, rounded up, at least 1.
    pub fn retry_after_secs(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_goes_at_once_then_handshakes_wait_one_interval_each() {
        let pacer = Pacer::new(100, 3, SECOND);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(pacer.reserve_at(now), Slot::Now);
        }
        // 10 ms apart from here on.
        for n in 1..=5 {
            assert_eq!(
                pacer.reserve_at(now),
                Slot::After(Duration::from_millis(10 * n))
            );
        }
        // Time catches up with the schedule.
        let later = now + Duration::from_millis(50);
        assert_eq!(
            pacer.reserve_at(later),
            Slot::After(Duration::from_millis(10))
        );
    }

    #[test]
    fn beyond_the_longest_wait_a_handshake_is_refused_and_takes_no_slot() {
        let pacer = Pacer::new(10, 1, Duration::from_millis(250));
        let now = Instant::now();
        assert_eq!(pacer.reserve_at(now), Slot::Now);
        assert_eq!(
            pacer.reserve_at(now),
            Slot::After(Duration::from_millis(100))
        );
        assert_eq!(
            pacer.reserve_at(now),
            Slot::After(Duration::from_millis(200))
        );
        for _ in 0..2 {
            assert_eq!(
                pacer.reserve_at(now),
                Slot::Refused(Duration::from_millis(300))
            );
        }
        assert_eq!(Refused(Duration::from_millis(300)).retry_after_secs(), 1);
        assert_eq!(Refused(Duration::from_millis(1300)).retry_after_secs(), 2);
    }

    #[test]
    fn a_rate_of_zero_admits_everything_at_once() {
        let pacer = Pacer::new(0, 1, Duration::ZERO);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(pacer.reserve_at(now), Slot::Now);
        }
    }
}
