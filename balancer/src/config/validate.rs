//! What the balancer's settings must satisfy beyond their types.

use petmesh_shared::{config::ConfigProblem, telemetry};

use super::{Settings, ENV_PREFIX};

impl Settings {
    /// Checks what types alone cannot, returning all problems at once.
    pub fn validate(self) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |setting: &str, message: &str| {
            problems.push(ConfigProblem::new(ENV_PREFIX, setting, message));
        };
        if self.limits.max_header_bytes < 8192 {
            problem("limits.max_header_bytes", "must be at least 8192");
        }
        if self.cluster.name.is_empty() || self.cluster.name.contains([':', ' ', '{', '}']) {
            problem(
                "cluster.name",
                "must be non-empty without ':', spaces or braces",
            );
        }
        if let Err(message) = self.static_backends() {
            problem("discovery.static_upstreams", &message);
        }
        let positive = [
            (
                "discovery.resync_interval_ms",
                self.discovery.resync_interval_ms,
            ),
            ("health.interval_ms", self.health.interval_ms),
            ("health.timeout_ms", self.health.timeout_ms),
            (
                "health.healthy_threshold",
                self.health.healthy_threshold.into(),
            ),
            (
                "health.unhealthy_threshold",
                self.health.unhealthy_threshold.into(),
            ),
            (
                "breaker.consecutive_failures",
                self.breaker.consecutive_failures.into(),
            ),
            (
                "breaker.backoff_initial_ms",
                self.breaker.backoff_initial_ms,
            ),
            ("retry.max_attempts", self.retry.max_attempts.into()),
            ("limits.ws_per_ip", self.limits.ws_per_ip.into()),
            ("limits.ws_lease_ms", self.limits.ws_lease_ms),
            (
                "limits.ws_handshake_burst",
                self.limits.ws_handshake_burst.into(),
            ),
            (
                "limits.ws_lease_refresh_ms",
                self.limits.ws_lease_refresh_ms,
            ),
            (
                "limits.header_read_timeout_ms",
                self.limits.header_read_timeout_ms,
            ),
            ("limits.max_body_bytes", self.limits.max_body_bytes),
            ("limits.connect_timeout_ms", self.limits.connect_timeout_ms),
            (
                "limits.response_timeout_ms",
                self.limits.response_timeout_ms,
            ),
            ("limits.ws_send_timeout_ms", self.limits.ws_send_timeout_ms),
            ("limits.max_connections", self.limits.max_connections as u64),
            ("strategy.virtual_nodes", self.strategy.virtual_nodes as u64),
            ("redis.timeout_ms", self.redis.timeout_ms),
        ];
        for (setting, value) in positive {
            if value == 0 {
                problem(setting, "must be at least 1");
            }
        }
        if self.breaker.backoff_max_ms < self.breaker.backoff_initial_ms {
            problem(
                "breaker.backoff_max_ms",
                "must not be below breaker.backoff_initial_ms",
            );
        }
        if self.limits.ws_lease_refresh_ms >= self.limits.ws_lease_ms {
            problem(
                "limits.ws_lease_refresh_ms",
                "must be below limits.ws_lease_ms (a lease must be renewed before it lapses)",
            );
        }
        let factor = self.strategy.bounded_load_factor;
        if factor.is_nan() || factor < 1.0 {
            problem("strategy.bounded_load_factor", "must be at least 1.0");
        }
        if !(0.0..=1.0).contains(&self.retry.budget_ratio) {
            problem("retry.budget_ratio", "must be between 0.0 and 1.0");
        }
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            problem("panic_threshold", "must be between 0.0 and 1.0");
        }
        if !self.health.path.starts_with('/') {
            problem("health.path", "must start with '/'");
        }
        if self.workers > 256 {
            problem("workers", "must be at most 256 (0 = one per core)");
        }
        if self.static_backends().is_ok_and(|b| b.is_empty()) {
            let schemes = ["redis://", "rediss://", "unix://"];
            let urls_ok =
                self.redis.url.split(',').map(str::trim).all(|url| {
                    url.is_empty() || schemes.iter().any(|scheme| url.starts_with(scheme))
                });
            if !urls_ok {
                problem("redis.url", "must be a redis:// URL");
            } else if let Err(err) = self.redis.target() {
                problem("redis.url", &format!("{err:#}"));
            }
        }
        if !telemetry::is_valid_level(&self.log.level) {
            problem(
                "log.level",
                "not a valid filter directive (try `info` or `petmesh_balancer=debug,info`)",
            );
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }
}
