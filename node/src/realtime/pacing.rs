//! Pacing of WebSocket handshakes: when thousands of clients reconnect at once (a node died, a
//! network blip, a deploy), this node admits their handshakes at a bounded rate
//! (`realtime.handshakes_per_second`, after a burst of `realtime.handshake_burst`) instead of
//! all at once. A handshake beyond the rate waits for its turn, at most
//! `realtime.handshake_max_wait_ms`; one that would wait longer is refused with 503 and a
//! `Retry-After`.
//!
//! Why: a storm's handshakes (token checks, subscriptions, buffers) would otherwise take every
//! core for a few seconds, and the requests and event deliveries of everyone already connected
//! would queue behind them; paced, the storm takes a little longer and the others do not
//! notice it (the `slow-consumers` chaos experiment, docs/benchmarks.md). The node, not the
//! balancer, paces: its CPU is what a handshake costs most of, and the cluster's rate then
//! grows with its nodes, however many balancers there are.
//!
//! The schedule is the generic cell rate algorithm (as in [`crate::ratelimit`]) with one
//! bucket and waiting instead of refusing: each handshake takes the next free slot of the
//! theoretical arrival time; a slot within the burst's tolerance is now.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::IntCounterVec;

use crate::{config::RealtimeSettings, error::ApiError};

/// The node's handshake schedule.
#[derive(Debug)]
pub struct HandshakePacer {
    /// Time between two admitted handshakes (1 / rate); `None`: no pacing.
    interval: Option<Duration>,
    /// How far ahead of the schedule a handshake may go ((burst − 1) × interval: a burst's
    /// handshakes all go at once).
    tolerance: Duration,
    /// Longest a handshake waits for its slot.
    max_wait: Duration,
    /// The theoretical arrival time: when the schedule is free again.
    next_free: Mutex<Instant>,
    /// `petmesh_node_ws_handshakes_paced_total{outcome}`.
    outcomes: IntCounterVec,
}

/// When a handshake may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Now.
    Now,
    /// After this wait.
    After(Duration),
    /// Not within the longest wait: it would have had to wait this long.
    Refused(Duration),
}

impl HandshakePacer {
    /// The pacer `settings` describe; `outcomes` counts the handshakes that waited or were
    /// refused.
    pub fn new(settings: &RealtimeSettings, outcomes: IntCounterVec) -> Self {
        let interval = (settings.handshakes_per_second > 0)
            .then(|| Duration::from_secs(1) / settings.handshakes_per_second);
        Self {
            interval,
            tolerance: interval.unwrap_or_default() * settings.handshake_burst.saturating_sub(1),
            max_wait: Duration::from_millis(settings.handshake_max_wait_ms),
            next_free: Mutex::new(Instant::now()),
            outcomes,
        }
    }

    /// Waits for this handshake's turn, or refuses it (503, `Retry-After`) when the wait
    /// would be longer than `realtime.handshake_max_wait_ms`.
    pub async fn admit(&self) -> Result<(), ApiError> {
        match self.reserve(Instant::now()) {
            Slot::Now => Ok(()),
            Slot::After(wait) => {
                self.outcomes.with_label_values(&["waited"]).inc();
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Slot::Refused(wait) => {
                self.outcomes.with_label_values(&["refused"]).inc();
                Err(ApiError::overloaded(
                    "too many WebSocket handshakes at once on this node; try again shortly",
                    wait.as_secs_f64().ceil().max(1.0) as u64,
                ))
            }
        }
    }

    /// Takes the next slot of the schedule at `now`, if it is within the longest wait.
    fn reserve(&self, now: Instant) -> Slot {
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

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn pacer(per_second: u32, burst: u32, max_wait_ms: u64) -> HandshakePacer {
        let settings = RealtimeSettings {
            handshakes_per_second: per_second,
            handshake_burst: burst,
            handshake_max_wait_ms: max_wait_ms,
            ..RealtimeSettings::default()
        };
        let outcomes = IntCounterVec::new(Opts::new("paced", "test"), &["outcome"]).unwrap();
        HandshakePacer::new(&settings, outcomes)
    }

    #[test]
    fn a_burst_goes_at_once_then_handshakes_wait_one_interval_each() {
        let pacer = pacer(100, 3, 1000);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(pacer.reserve(now), Slot::Now);
        }
        // 10 ms apart from here on.
        for n in 1..=5 {
            assert_eq!(
                pacer.reserve(now),
                Slot::After(Duration::from_millis(10 * n))
            );
        }
        // Time catches up with the schedule.
        let later = now + Duration::from_millis(50);
        assert_eq!(pacer.reserve(later), Slot::After(Duration::from_millis(10)));
    }

    #[test]
    fn beyond_the_longest_wait_a_handshake_is_refused_and_takes_no_slot() {
        let pacer = pacer(10, 1, 250);
        let now = Instant::now();
        assert_eq!(pacer.reserve(now), Slot::Now);
        assert_eq!(pacer.reserve(now), Slot::After(Duration::from_millis(100)));
        assert_eq!(pacer.reserve(now), Slot::After(Duration::from_millis(200)));
        assert_eq!(
            pacer.reserve(now),
            Slot::Refused(Duration::from_millis(300))
        );
        // The refusal took nothing: the next one is refused the same.
        assert_eq!(
            pacer.reserve(now),
            Slot::Refused(Duration::from_millis(300))
        );
    }

    #[test]
    fn a_rate_of_zero_admits_everything_at_once() {
        let pacer = pacer(0, 1, 0);
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(pacer.reserve(now), Slot::Now);
        }
    }
}
