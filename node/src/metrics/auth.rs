//! Metrics of logins and their protection against guessing.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The outcomes of a login attempt (`petmesh_node_login_attempts_total{result}`).
pub const LOGIN_RESULTS: [&str; 5] = [
    "success",
    "failure",
    "locked_out",
    "name_locked",
    "address_blocked",
];

/// Login collectors, registered in the node's registry.
#[derive(Clone)]
pub struct AuthMetrics {
    /// `petmesh_node_login_attempts_total{result}`: `success`; `failure` (wrong password or
    /// unknown name); `locked_out` (a failure that locked the name); `name_locked` and
    /// `address_blocked` (refused before the password was looked at).
    pub login_attempts: IntCounterVec,
    /// `petmesh_node_login_checks_skipped_total`: logins checked without lock-out protection
    /// because Redis was unreachable.
    pub login_checks_skipped: IntCounter,
}

impl AuthMetrics {
    /// Creates the collectors (every label value at 0) and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let login_attempts = IntCounterVec::new(
            Opts::new(
                "petmesh_node_login_attempts_total",
                "Password logins, by result (success, failure, locked_out, name_locked, address_blocked).",
            ),
            &["result"],
        )?;
        let login_checks_skipped = IntCounter::new(
            "petmesh_node_login_checks_skipped_total",
            "Logins checked without lock-out protection because Redis was unreachable.",
        )?;
        registry.register(Box::new(login_attempts.clone()))?;
        registry.register(Box::new(login_checks_skipped.clone()))?;
        for result in LOGIN_RESULTS {
            login_attempts.with_label_values(&[result]);
        }
        Ok(Self {
            login_attempts,
            login_checks_skipped,
        })
    }
}
