//! Active health: the probes' verdict on each node, flipped only after N consecutive opposite
//! results so one lost probe doesn't take a node out (or one lucky probe bring it back).
//!
//! `healthy` (this module) is kept apart from `draining` (what the node announced about itself):
//! a draining node may be perfectly healthy, and an unhealthy node may not know it is.
//! The probe itself is in [`http`]; the loop that runs it is in [`crate::background`].

pub mod http;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

pub use self::http::HttpHealthCheck;

/// A node's health verdict plus the streak of results that disagree with it.
#[derive(Debug)]
pub struct Health {
    /// The verdict the data path reads (one relaxed load per request).
    healthy: AtomicBool,
    /// Consecutive probe results that contradict the verdict; only the prober writes it.
    streak: Mutex<u32>,
}

impl Health {
    /// A new node starts healthy, so a node that just announced itself gets traffic at once.
    pub fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            streak: Mutex::new(0),
        }
    }

    /// The current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one probe result. Returns the new verdict when it flipped.
    ///
    /// 1. A result agreeing with the verdict resets the streak.
    /// 2. A disagreeing result extends it.
    /// 3. When the streak reaches the threshold for the opposite verdict, the verdict flips and
    ///    the streak starts over.
    pub fn observe(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
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
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(
            health.observe(true, 2, 3),
            None,
            "an agreeing result resets the streak"
        );
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), None);
        assert_eq!(health.observe(false, 2, 3), Some(false));
        assert!(!health.is_healthy());
    }

    #[test]
    fn healthy_again_after_threshold_consecutive_successes() {
        let health = Health::new();
        health.observe(false, 2, 1);
        assert!(!health.is_healthy());
        assert_eq!(health.observe(true, 2, 1), None);
        assert_eq!(health.observe(false, 2, 1), None);
        assert_eq!(health.observe(true, 2, 1), None);
        assert_eq!(health.observe(true, 2, 1), Some(true));
        assert!(health.is_healthy());
    }
}
