//! Health: the probes' verdict on each node, flipped only after N consecutive opposite results
//! so one lost probe doesn't take a node out (or one lucky probe bring it back), plus one
//! passive shortcut: a failed connect takes the node out at once ([`Health::mark_down`]).
//!
//! Why the shortcut, and why only down: after a node dies the probes need
//! `unhealthy_threshold` intervals (2 s by default) to agree, while the breaker, which opens
//! within a few failed attempts, goes half-open after `breaker.backoff_initial_ms` and lets a
//! *client* request through as the trial, so a dead node kept getting requests after the 1 s
//! the balancer promises. A refused or timed-out connect is as conclusive as a failed probe (the
//! probe is a connect too) and is seen within milliseconds of the death, by whichever request
//! needs a new connection first. Marking the node unhealthy then takes it out of every
//! worker's candidate list, breaker or not. Only probes bring it back (`healthy_threshold`
//! good ones in a row), so no client request is ever the trial for a node that was
//! unreachable; the breaker's half-open trial stays for nodes that accept connections but
//! answer badly (502/503/504, timeouts), where a real request is the only meaningful test.
//! A probe already under way when the node was marked down cannot count towards bringing it
//! back ([`Health::probe_started`]).
//!
//! `healthy` (this module) is kept apart from `draining` (what the node announced about itself):
//! a draining node may be perfectly healthy, and an unhealthy node may not know it is.
//! The probe itself is in [`http`]; the loop that runs it is in [`crate::background`].

pub mod http;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex,
};

pub use self::http::HttpHealthCheck;

/// A node's health verdict plus the streak of results that disagree with it.
#[derive(Debug)]
pub struct Health {
    /// The verdict the data path reads (one relaxed load per request).
    healthy: AtomicBool,
    /// Consecutive probe results that contradict the verdict.
    streak: Mutex<u32>,
    /// Passive mark-downs so far; a good probe started before the latest one is ignored.
    downs: AtomicU64,
    /// The verdict last handed to [`Health::take_change`] (by the health loop, for the
    /// console's event list), so that passive mark-downs on the workers are reported too
    /// without the data path touching anything but this node's atomics.
    reported: AtomicBool,
}

impl Health {
    /// A new node starts healthy, so a node that just announced itself gets traffic at once.
    pub fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            streak: Mutex::new(0),
            downs: AtomicU64::new(0),
            reported: AtomicBool::new(true),
        }
    }

    /// The current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Marks the node unhealthy at once (a connect to it failed). Returns whether it was
    /// healthy until now.
    pub fn mark_down(&self) -> bool {
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        *streak = 0;
        self.downs.fetch_add(1, Ordering::Relaxed);
        self.healthy.swap(false, Ordering::Relaxed)
    }

    /// The verdict, if it changed since the last call (a probe flip or a passive mark-down);
    /// `None` otherwise. One reader only: the health loop. A down-and-up between two calls is
    /// not seen, which only costs the console two events.
    pub fn take_change(&self) -> Option<bool> {
        let healthy = self.is_healthy();
        (self.reported.swap(healthy, Ordering::Relaxed) != healthy).then_some(healthy)
    }

    /// To be called before a probe starts; its result is then given to [`Health::observe`].
    pub fn probe_started(&self) -> u64 {
        self.downs.load(Ordering::Relaxed)
    }

    /// Records the result of a probe that started at `started` ([`Health::probe_started`]).
    /// Returns the new verdict when it flipped.
    ///
    /// 1. A good result from a probe that started before the latest [`Health::mark_down`] is
    ///    ignored: it may have connected just before the node died.
    /// 2. A result agreeing with the verdict resets the streak.
    /// 3. A disagreeing result extends it.
    /// 4. When the streak reaches the threshold for the opposite verdict, the verdict flips and
    ///    the streak starts over.
    pub fn observe(
        &self,
        started: u64,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        if ok && self.downs.load(Ordering::Relaxed) != started {
            return None;
        }
        let healthy = self.is_healthy();
        if ok == healthy {
            *streak = 0;
            return None;
        }
        *streak += 1;
        let needed = if ok {
            healthy_threshold
        } else {
            unhealthy_threshold
        };
        if *streak >= needed {
            *streak = 0;
            self.healthy.store(ok, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_only_after_threshold_consecutive_failures() {
        let health = Health::new();
        assert_eq!(health.observe(0, false, 2, 3), None);
        assert_eq!(health.observe(0, false, 2, 3), None);
        assert_eq!(
            health.observe(0, true, 2, 3),
            None,
            "an agreeing result resets the streak"
        );
        assert_eq!(health.observe(0, false, 2, 3), None);
        assert_eq!(health.observe(0, false, 2, 3), None);
        assert_eq!(health.observe(0, false, 2, 3), Some(false));
        assert!(!health.is_healthy());
    }

    #[test]
    fn healthy_again_after_threshold_consecutive_successes() {
        let health = Health::new();
        health.observe(0, false, 2, 1);
        assert!(!health.is_healthy());
        assert_eq!(health.observe(0, true, 2, 1), None);
        assert_eq!(health.observe(0, false, 2, 1), None);
        assert_eq!(health.observe(0, true, 2, 1), None);
        assert_eq!(health.observe(0, true, 2, 1), Some(true));
        assert!(health.is_healthy());
    }

    #[test]
    fn marked_down_at_once_and_back_only_after_probes_started_since() {
        let health = Health::new();
        let before = health.probe_started();
        assert!(health.mark_down());
        assert!(!health.is_healthy());
        assert!(!health.mark_down(), "already down");
        // Probes that started before the mark-down don't count, however many.
        for _ in 0..3 {
            assert_eq!(health.observe(before, true, 2, 2), None);
        }
        let since = health.probe_started();
        assert_eq!(health.observe(since, true, 2, 2), None);
        assert_eq!(health.observe(since, true, 2, 2), Some(true));
        assert!(health.is_healthy());
    }

    #[test]
    fn each_change_of_verdict_is_taken_once() {
        let health = Health::new();
        assert_eq!(
            health.take_change(),
            None,
            "starts healthy, nothing to report"
        );
        health.mark_down();
        assert_eq!(health.take_change(), Some(false));
        assert_eq!(health.take_change(), None);
        let since = health.probe_started();
        health.observe(since, true, 1, 1);
        assert_eq!(health.take_change(), Some(true));
    }
}
