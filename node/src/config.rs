//! The node's settings: the operator manual in code. Every field has a default, can be set in the
//! optional YAML file, and can be overridden by `PETMESH_NODE__<SECTION>__<FIELD>`.
//! `DATABASE_URL` and `REDIS_URL` are honoured when the prefixed variables are absent.
//!
//! This module holds the root [`Settings`], loading and validation; [`sections`] holds the
//! sections (one struct each, with its defaults and the clients it builds).

pub mod jwt;
mod outbox;
mod sections;

use std::{collections::HashMap, path::Path};

use petmesh_shared::{
    config::{self as layered, ConfigProblem, Sources},
    telemetry::{self, LogFormat},
};
use secrecy::ExposeSecret;
use serde::Deserialize;

pub use self::{outbox::OutboxSettings, sections::*};

/// Prefix of every node environment variable.
pub const ENV_PREFIX: &str = "PETMESH_NODE";

/// Where the node runs; decides the log format default and whether unsafe defaults are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine: pretty logs, the built-in JWT secret is accepted.
    Development,
    /// Automated tests: like production, with JSON logs.
    Test,
    /// Everything else. The default, so that forgetting to configure is safe.
    Production,
}

/// All node settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `development`, `test` or `production` (default).
    pub environment: Environment,
    /// This node's id in logs, metrics and the registry; generated (`node-<random>`) when empty.
    pub node_id: String,
    /// HTTP listener and request limits.
    pub server: ServerSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// Cluster membership.
    pub cluster: ClusterSettings,
    /// Tokens and passwords.
    pub auth: AuthSettings,
    /// Logging.
    pub log: LogSettings,
    /// The first admin account.
    pub bootstrap: BootstrapSettings,
    /// The durable job queue and its workers.
    pub jobs: JobSettings,
    /// The relay of committed domain events from PostgreSQL to Redis.
    pub outbox: OutboxSettings,
    /// The simulated payment gateway.
    pub payments: PaymentSettings,
    /// The Redis read cache.
    pub cache: CacheSettings,
    /// The pet catalogue (images).
    pub pets: PetSettings,
    /// The WebSocket endpoint and cluster broadcasts.
    pub realtime: RealtimeSettings,
    /// Request rate limits and client addresses behind proxies.
    pub rate_limit: RateLimitSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            environment: Environment::Production,
            node_id: String::new(),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            redis: RedisSettings::default(),
            cluster: ClusterSettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
            bootstrap: BootstrapSettings::default(),
            jobs: JobSettings::default(),
            outbox: OutboxSettings::default(),
            payments: PaymentSettings::default(),
            cache: CacheSettings::default(),
            pets: PetSettings::default(),
            realtime: RealtimeSettings::default(),
            rate_limit: RateLimitSettings::default(),
        }
    }
}

// === impl Settings ===

impl Settings {
    /// Loads defaults → `file` → `env`, then validates. Reports every problem found.
    pub fn load(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let sources = Sources {
            file,
            env,
            aliases: &[
                ("DATABASE_URL", "database.url"),
                ("REDIS_URL", "redis.url"),
                ("PETMESH_ADMIN_PASSWORD", "bootstrap.admin_password"),
            ],
        };
        layered::load(ENV_PREFIX, sources).validate(Settings::validate)
    }

    /// Checks what types alone cannot, returning all problems at once.
    pub fn validate(mut self) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |setting: &str, message: &str| {
            problems.push(ConfigProblem::new(ENV_PREFIX, setting, message));
        };
        if let Err(key_problems) = self
            .auth
            .jwt_key_set(self.environment == Environment::Development)
        {
            for (setting, message) in key_problems {
                problem(setting, &message);
            }
        }
        if self.auth.jwt_issuer.is_empty() {
            problem("auth.jwt_issuer", "must not be empty");
        }
        if self.auth.jwt_audience.is_empty() {
            problem("auth.jwt_audience", "must not be empty");
        }
        let auth = &self.auth;
        for (name, value) in [
            ("auth.access_token_ttl_secs", auth.access_token_ttl_secs),
            ("auth.refresh_token_ttl_secs", auth.refresh_token_ttl_secs),
            ("auth.login_max_failures", auth.login_max_failures.into()),
            ("auth.login_lock_secs", auth.login_lock_secs),
            (
                "auth.login_ip_max_failures",
                auth.login_ip_max_failures.into(),
            ),
            ("auth.login_ip_window_secs", auth.login_ip_window_secs),
        ] {
            if value == 0 {
                problem(name, "must be at least 1");
            }
        }
        if auth.login_max_lock_secs < auth.login_lock_secs {
            problem(
                "auth.login_max_lock_secs",
                "must be at least auth.login_lock_secs",
            );
        }
        if self.server.body_limit_bytes == 0 {
            problem("server.body_limit_bytes", "must be at least 1");
        }
        for (name, value) in [
            (
                "rate_limit.anonymous_per_hour",
                self.rate_limit.anonymous_per_hour,
            ),
            (
                "rate_limit.authenticated_per_hour",
                self.rate_limit.authenticated_per_hour,
            ),
        ] {
            if value == 0 {
                problem(
                    name,
                    "must be at least 1 (set rate_limit.enabled=false to lift limits)",
                );
            }
        }
        if self.server.max_headers == 0 {
            problem("server.max_headers", "must be at least 1");
        }
        if self.server.max_header_bytes < 1024 {
            problem("server.max_header_bytes", "must be at least 1024");
        }
        for origin in self.server.cors_origins() {
            let scheme_host = origin.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
            });
            if !scheme_host {
                problem(
                    "server.cors_allowed_origins",
                    "origins are `scheme://host[:port]`, comma-separated (no paths, no `*`)",
                );
                break;
            }
        }
        if self.server.request_timeout_secs == 0 {
            problem("server.request_timeout_secs", "must be at least 1");
        }
        if self.database.max_connections == 0 {
            problem("database.max_connections", "must be at least 1");
        }
        if self.cluster.name.is_empty() || self.cluster.name.contains([':', ' ', '{', '}']) {
            problem(
                "cluster.name",
                "must be non-empty without ':', spaces or braces",
            );
        }
        if !self.cluster.advertise_addr.is_empty() && !is_host_port(&self.cluster.advertise_addr) {
            problem(
                "cluster.advertise_addr",
                "must be `host:port` with a port from 1 to 65535, or empty for the bound address",
            );
        }
        if self.cluster.weight == 0 {
            problem("cluster.weight", "must be at least 1");
        }
        if let Some(password) = &self.bootstrap.admin_password {
            if !(8..=128).contains(&password.expose_secret().chars().count()) {
                problem(
                    "bootstrap.admin_password",
                    "must be 8–128 characters, like every password",
                );
            }
        }
        if self.jobs.concurrency == 0 {
            problem("jobs.concurrency", "must be at least 1");
        }
        if self.jobs.lease_secs == 0 {
            problem("jobs.lease_secs", "must be at least 1");
        }
        if self.jobs.backoff_base_ms == 0 || self.jobs.backoff_cap_ms < self.jobs.backoff_base_ms {
            problem(
                "jobs.backoff_cap_ms",
                "needs 0 < jobs.backoff_base_ms <= jobs.backoff_cap_ms",
            );
        }
        if self.jobs.max_attempts < 1 {
            problem("jobs.max_attempts", "must be at least 1");
        }
        if self.jobs.max_queue_depth < 1 {
            problem("jobs.max_queue_depth", "must be at least 1");
        }
        if self.outbox.lease_secs == 0 {
            problem("outbox.lease_secs", "must be at least 1");
        }
        if self.outbox.poll_interval_ms == 0 || self.outbox.retry_max_ms == 0 {
            problem(
                "outbox.poll_interval_ms",
                "outbox.poll_interval_ms and outbox.retry_max_ms must be at least 1",
            );
        }
        if !(1..=10_000).contains(&self.outbox.batch_size) {
            problem("outbox.batch_size", "must be 1–10000");
        }
        if !(0.0..=1.0).contains(&self.payments.success_rate) {
            problem("payments.success_rate", "must be between 0 and 1");
        }
        if self.pets.max_image_bytes == 0 || self.pets.max_image_bytes > i32::MAX as usize {
            problem("pets.max_image_bytes", "must be between 1 and 2147483647");
        }
        if self.cache.pet_ttl_secs == 0 {
            problem("cache.pet_ttl_secs", "must be at least 1");
        }
        let rt = &self.realtime;
        for (name, value) in [
            ("realtime.history_len", rt.history_len),
            ("realtime.history_ttl_secs", rt.history_ttl_secs),
            ("realtime.send_queue", rt.send_queue as u64),
            ("realtime.max_frame_bytes", rt.max_frame_bytes as u64),
            ("realtime.auth_timeout_ms", rt.auth_timeout_ms),
            ("realtime.ping_interval_secs", rt.ping_interval_secs),
            ("realtime.rate_per_minute", u64::from(rt.rate_per_minute)),
            ("realtime.rate_burst", u64::from(rt.rate_burst)),
            ("realtime.request_timeout_ms", rt.request_timeout_ms),
            ("realtime.handshake_burst", u64::from(rt.handshake_burst)),
        ] {
            if value == 0 {
                problem(name, "must be at least 1");
            }
        }
        if rt.idle_timeout_secs <= rt.ping_interval_secs {
            problem(
                "realtime.idle_timeout_secs",
                "must be longer than realtime.ping_interval_secs (a ping needs time to be answered)",
            );
        }
        if !telemetry::is_valid_level(&self.log.level) {
            problem(
                "log.level",
                "not a valid filter directive (try `info` or `petmesh_node=debug,info`)",
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        if self.node_id.is_empty() {
            self.node_id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        }
        Ok(self)
    }

    /// The log format in effect.
    pub fn log_format(&self) -> LogFormat {
        self.log.format.unwrap_or(match self.environment {
            Environment::Development => LogFormat::Pretty,
            _ => LogFormat::Json,
        })
    }
}

/// Whether `value` is `host:port` with a non-empty host free of spaces and a port of 1–65535
/// (`[::1]:80` included). Host names are allowed: they are resolved by the balancers.
fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|port| port != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn default_secret_is_refused_outside_development() {
        let problems = Settings::load(None, env(&[])).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].setting, "auth.jwt_secret");
        assert_eq!(problems[0].env_var, "PETMESH_NODE__AUTH__JWT_SECRET");
    }

    #[test]
    fn default_secret_is_accepted_in_development() {
        let settings =
            Settings::load(None, env(&[("PETMESH_NODE__ENVIRONMENT", "development")])).unwrap();
        assert_eq!(settings.log_format(), LogFormat::Pretty);
        assert!(settings.node_id.starts_with("node-"));
    }

    #[test]
    fn conventional_urls_are_honoured() {
        let settings = Settings::load(
            None,
            env(&[
                ("PETMESH_NODE__AUTH__JWT_SECRET", SECRET),
                ("DATABASE_URL", "postgres://x@h/db"),
                ("REDIS_URL", "redis://h:1"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.database.url.expose_secret(), "postgres://x@h/db");
        assert_eq!(settings.redis.url.expose_secret(), "redis://h:1");
        assert_eq!(settings.log_format(), LogFormat::Json);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let problems = Settings::load(
            None,
            env(&[
                ("PETMESH_NODE__AUTH__JWT_SECRET", "short"),
                ("PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS", "0"),
                ("PETMESH_NODE__LOG__LEVEL", "=="),
            ]),
        )
        .unwrap_err();
        let settings: Vec<_> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            ["auth.jwt_secret", "auth.access_token_ttl_secs", "log.level"]
        );
    }

    #[test]
    fn cluster_settings_are_validated_together() {
        let problems = Settings::load(
            None,
            env(&[
                ("PETMESH_NODE__AUTH__JWT_SECRET", SECRET),
                ("PETMESH_NODE__CLUSTER__ADVERTISE_ADDR", "10.0.0.7"),
                ("PETMESH_NODE__CLUSTER__WEIGHT", "0"),
            ]),
        )
        .unwrap_err();
        let settings: Vec<_> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(settings, ["cluster.advertise_addr", "cluster.weight"]);
        for bad in ["host:0", ":80", "a b:80", "host:http", "host:70000"] {
            assert!(!is_host_port(bad), "{bad}");
        }
        for good in ["10.0.0.7:8080", "node-1.petmesh.svc:80", "[::1]:8080"] {
            assert!(is_host_port(good), "{good}");
        }
    }

    #[test]
    fn unknown_environment_names_the_setting() {
        let problems =
            Settings::load(None, env(&[("PETMESH_NODE__ENVIRONMENT", "prod")])).unwrap_err();
        assert_eq!(problems[0].setting, "environment", "{}", problems[0]);
    }
}
