//! The per-node circuit breaker, on crate `failsafe`: **Closed** (traffic flows) → **Open**
//! (rejecting, for a backoff) → **HalfOpen** (trial traffic) → Closed or Open again.
//!
//! Protocol, as implemented by `failsafe`'s state machine with our policy:
//! 1. Closed: every failed attempt (connect error, timeout, 502/503/504) extends a streak,
//!    every success resets it.
//! 2. After `breaker.consecutive_failures` failures in a row the breaker opens for the current
//!    backoff (first `backoff_initial_ms`).
//! 3. Once the backoff has passed, the next request that asks is let through: HalfOpen.
//!    (`failsafe` lets every request through while half-open, not only one.)
//! 4. A success in HalfOpen closes the breaker and resets the backoff; a failure opens it again
//!    with the backoff doubled (up to `backoff_max_ms`), no jitter, so tests are deterministic.
//!
//! Why not one task per node fed over a channel (as linkerd does): `failsafe` is a synchronous
//! state machine, so the proxy calls it directly. The state machine takes a mutex on every call,
//! so the hot path avoids it: the state is mirrored in an atomic by the instrument callbacks,
//! a closed breaker answers `permits` from the mirror, and successes are only reported while a
//! failure streak may be running.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc,
    },
    time::Duration,
};

use failsafe::{failure_policy::ConsecutiveFailures, Instrument, StateMachine};
use prometheus::IntCounterVec;

/// The breaker's state, as shown in `/admin/nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Traffic flows.
    Closed = 0,
    /// Rejecting until the backoff has passed.
    Open = 1,
    /// Trying the node again.
    HalfOpen = 2,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// One node's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// The `failsafe` state machine (its own `Arc` inside; cheap to keep by value).
    machine: StateMachine<ConsecutiveFailures<Doubling>, Mirror>,
    /// The state, mirrored by [`Mirror`] on every transition.
    state: Arc<AtomicU8>,
    /// A failure was recorded since the last reported success, so the policy's streak may be
    /// non-zero and the next success must be reported.
    streak_running: AtomicBool,
}

impl Breaker {
    /// A closed breaker for node `node` that opens after `failures` consecutive failures and
    /// backs off from `initial` doubling up to `max`; transitions are counted in `transitions`.
    pub fn new(
        failures: u32,
        initial: Duration,
        max: Duration,
        node: &str,
        transitions: IntCounterVec,
    ) -> Self {
        let state = Arc::new(AtomicU8::new(0));
        for to in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            transitions.with_label_values(&[node, to.as_str()]);
        }
        let mirror = Mirror {
            state: state.clone(),
            node: node.to_owned(),
            transitions,
        };
        let policy = failsafe::failure_policy::consecutive_failures(
            failures,
            Doubling { next: initial, max },
        );
        Self {
            machine: StateMachine::new(policy, mirror),
            state,
            streak_running: AtomicBool::new(false),
        }
    }

    /// Whether a request may go to the node now (may move Open → HalfOpen).
    pub fn permits(&self) -> bool {
        self.state() == BreakerState::Closed || self.machine.is_call_permitted()
    }

    /// Records the outcome of one attempt.
    pub fn record(&self, ok: bool) {
        if ok {
            if self.state() == BreakerState::Closed && !self.streak_running.load(Ordering::Relaxed)
            {
                return;
            }
            self.streak_running.store(false, Ordering::Relaxed);
            self.machine.on_success();
        } else {
            self.streak_running.store(true, Ordering::Relaxed);
            self.machine.on_error();
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// Backoff that doubles from `next` up to `max`, without jitter.
#[derive(Debug, Clone)]
struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(current)
    }
}

/// Mirrors transitions into the atomic state, logs them and counts them.
#[derive(Debug)]
struct Mirror {
    state: Arc<AtomicU8>,
    node: String,
    transitions: IntCounterVec,
}

impl Mirror {
    fn transition(&self, to: BreakerState) {
        let from = BreakerState::from_u8(self.state.swap(to as u8, Ordering::Relaxed));
        if from == to {
            return;
        }
        self.transitions
            .with_label_values(&[self.node.as_str(), to.as_str()])
            .inc();
        match to {
            BreakerState::Open => tracing::warn!(node = %self.node, "breaker open: node skipped"),
            BreakerState::HalfOpen => {
                tracing::info!(node = %self.node, "breaker half-open: trying node again")
            }
            BreakerState::Closed => tracing::info!(node = %self.node, "breaker closed: node back"),
        }
    }
}

impl Instrument for Mirror {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.transition(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.transition(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.transition(BreakerState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, IntCounterVec) {
        let transitions =
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["node", "state"]).unwrap();
        let breaker = Breaker::new(
            3,
            Duration::from_secs(1),
            Duration::from_secs(4),
            "n1",
            transitions.clone(),
        );
        (breaker, transitions)
    }

    // `failsafe` reads time through its own clock, not tokio's, so the test freezes that clock
    // (the equivalent of tokio's paused time) and advances it by hand.
    #[test]
    fn breaker_opens_half_opens_backs_off_and_closes() {
        failsafe::clock::freeze(|clock| {
            let (breaker, transitions) = breaker();
            // 1. Failures below the threshold, interrupted by a success, keep it closed.
            breaker.record(false);
            breaker.record(false);
            breaker.record(true);
            breaker.record(false);
            breaker.record(false);
            assert_eq!(breaker.state(), BreakerState::Closed);
            // 2. The third consecutive failure opens it.
            breaker.record(false);
            assert_eq!(breaker.state(), BreakerState::Open);
            assert!(!breaker.permits());
            // 3. After the first backoff (1 s) a request is let through: half-open.
            clock.advance(Duration::from_millis(1001));
            assert!(breaker.permits());
            assert_eq!(breaker.state(), BreakerState::HalfOpen);
            // 4. A failure re-opens it with the backoff doubled (2 s).
            breaker.record(false);
            assert_eq!(breaker.state(), BreakerState::Open);
            clock.advance(Duration::from_millis(1500));
            assert!(!breaker.permits(), "still inside the doubled backoff");
            clock.advance(Duration::from_millis(600));
            assert!(breaker.permits());
            // 5. A success closes it.
            breaker.record(true);
            assert_eq!(breaker.state(), BreakerState::Closed);
            assert!(breaker.permits());
            assert_eq!(transitions.with_label_values(&["n1", "open"]).get(), 2);
            assert_eq!(transitions.with_label_values(&["n1", "half_open"]).get(), 2);
            assert_eq!(transitions.with_label_values(&["n1", "closed"]).get(), 1);
        });
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let backoff = Doubling {
            next: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let steps: Vec<u128> = backoff.take(4).map(|d| d.as_millis()).collect();
        assert_eq!(steps, [100, 200, 350, 350]);
    }
}
