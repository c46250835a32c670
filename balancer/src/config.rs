//! The balancer's settings: the operator manual in code. Every field has a default, can be set in
//! the optional YAML file, and can be overridden by `PETMESH_BALANCER__<SECTION>__<FIELD>`.
//! `REDIS_URL` is honoured when `PETMESH_BALANCER__REDIS__URL` is absent.
//!
//! Loading goes through [`petmesh_shared::config`], so a refused configuration is reported the
//! same way as the node's: one line per problem naming the setting and its variable, exit 64.

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use petmesh_shared::{
    config::{self as layered, ConfigProblem, Sources},
    redis_conn::{RedisMode, RedisTarget},
    telemetry::LogFormat,
};
use serde::Deserialize;

use crate::{backend::Backend, selection::HashKey};

mod defaults;
mod validate;

/// Prefix of every balancer environment variable.
pub const ENV_PREFIX: &str = "PETMESH_BALANCER";

/// All balancer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The proxy listener (clients connect here).
    pub listen: ListenSettings,
    /// The admin listener (the console at `/`, `/admin/stream`, `/admin/nodes`, `/metrics`,
    /// `/health`, `/admin/sd`).
    pub admin: ListenSettings,
    /// Which cluster's registry to read.
    pub cluster: ClusterSettings,
    /// Redis, where the node registry lives.
    pub redis: RedisSettings,
    /// Where the node set comes from.
    pub discovery: DiscoverySettings,
    /// How a node is chosen for each request.
    pub strategy: StrategySettings,
    /// Active health probes.
    pub health: HealthSettings,
    /// The per-node circuit breaker.
    pub breaker: BreakerSettings,
    /// Retries of idempotent requests.
    pub retry: RetrySettings,
    /// Connection, size and time limits.
    pub limits: LimitSettings,
    /// When the fraction of healthy nodes drops below this, health is ignored and every
    /// enabled node gets traffic again (so the few survivors are not overloaded).
    pub panic_threshold: f64,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Event loops (one thread, runtime and listener each); 0 = one per CPU core.
    pub workers: usize,
    /// Logging.
    pub log: LogSettings,
}

/// A listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenSettings {
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind; 0 picks a free one (logged in the `listening` line).
    pub port: u16,
}

/// Which cluster this balancer fronts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Cluster name: the Redis key prefix `petmesh:{name}:` and the `cluster` SD label.
    pub name: String,
}

/// Redis connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `standalone` (one server) or `cluster` (a Redis Cluster).
    pub mode: RedisMode,
    /// Connection URL (`REDIS_URL` also works); in cluster mode, seed URLs separated by commas.
    pub url: String,
    /// Bound on connecting to Redis and on each registry read.
    pub timeout_ms: u64,
}

impl RedisSettings {
    /// Where Redis is (the registry, the WebSocket slots).
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        RedisTarget::new(self.mode, &self.url, Duration::from_millis(self.timeout_ms))
    }
}

/// Where nodes come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Comma-separated `[id=]host:port[@weight]`; when non-empty Redis is not used at all.
    pub static_upstreams: String,
    /// How often the whole registry is re-read, in addition to membership events.
    pub resync_interval_ms: u64,
}

/// A selection strategy name, as written in the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// Each node in turn.
    RoundRobin,
    /// Each node in proportion to its weight, interleaved (smooth).
    WeightedRoundRobin,
    /// The node with the fewest open requests (HTTP) or WebSockets (WS).
    LeastConnections,
    /// The less loaded of two random nodes.
    PowerOfTwo,
    /// A hash ring over `strategy.hash_key`, with bounded load.
    ConsistentHash,
    /// Uniformly random.
    Random,
}

/// How nodes are chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategySettings {
    /// Strategy for plain HTTP requests.
    pub http: StrategyName,
    /// Strategy for WebSocket upgrades.
    pub ws: StrategyName,
    /// Key for `consistent-hash`: `jwt-sub`, `header:<name>`, `cookie:<name>` or `client-ip`.
    /// Requests without the key fall back to the client IP.
    pub hash_key: HashKey,
    /// `consistent-hash` sends a key elsewhere when its node already carries more than this
    /// factor times the mean load (≥ 1.0).
    pub bounded_load_factor: f64,
    /// Virtual nodes per unit of weight on the hash ring.
    pub virtual_nodes: usize,
}

/// Active health probes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Time between two probes of a node.
    pub interval_ms: u64,
    /// A probe not answered within this counts as failed.
    pub timeout_ms: u64,
    /// Consecutive good probes that turn an unhealthy node healthy.
    pub healthy_threshold: u32,
    /// Consecutive failed probes that turn a healthy node unhealthy.
    pub unhealthy_threshold: u32,
    /// Path probed with `GET`; 2xx means ready.
    pub path: String,
}

/// The per-node circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failed requests that open the breaker.
    pub consecutive_failures: u32,
    /// How long the breaker stays open the first time.
    pub backoff_initial_ms: u64,
    /// The open time doubles on every failed half-open probe, up to this.
    pub backoff_max_ms: u64,
}

/// Retries.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    /// Retries allowed as a fraction of the requests of the last 10 seconds.
    pub budget_ratio: f64,
    /// Retries always allowed per second regardless of traffic (split across workers).
    pub min_per_second: u32,
    /// Most nodes one request is tried on (1 = never retry).
    pub max_attempts: u32,
}

/// Connection, size and time limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Open WebSockets allowed per client IP across every balancer of the cluster (counted in
    /// Redis, see [`crate::ws_limit`]); the next one gets 429. While Redis is unreachable each
    /// balancer allows `ws_per_ip / balancers` (at least 1) on its own.
    pub ws_per_ip: u32,
    /// WebSocket handshakes this balancer passes on per second after a burst: a reconnect
    /// storm's connections then reach the nodes spread out instead of all at once
    /// ([`petmesh_shared::pacing`]); 0 passes every handshake on at once.
    pub ws_handshakes_per_second: u32,
    /// Handshakes passed on at once before the pacing starts.
    pub ws_handshake_burst: u32,
    /// Longest a handshake waits for its turn; one that would wait longer gets 503
    /// (`too_many_handshakes`).
    pub ws_handshake_max_wait_ms: u64,
    /// How long a balancer's count of an address's WebSockets stays in Redis without being
    /// renewed: a balancer that dies stops renewing, and its counts lapse after this.
    pub ws_lease_ms: u64,
    /// How often a balancer renews the leases of the counts it holds (below `ws_lease_ms`).
    pub ws_lease_refresh_ms: u64,
    /// A client must send its request headers within this time (Slowloris guard); the clock
    /// runs while a keep-alive connection waits for its next request, so it is also the idle
    /// timeout of client connections.
    pub header_read_timeout_ms: u64,
    /// Largest request body; a larger `Content-Length` gets 413, a larger chunked body is cut.
    pub max_body_bytes: u64,
    /// Largest request head (request line and header fields) a client may send; larger ones get
    /// 431 from the HTTP parser (hyper's read buffer bound; at least 8192). Header fields are
    /// also limited to 100 by the parser.
    pub max_header_bytes: usize,
    /// Bound on opening a connection to a node.
    pub connect_timeout_ms: u64,
    /// Bound on a node's response headers after the request was sent; 504 beyond.
    pub response_timeout_ms: u64,
    /// Bound on passing one chunk (up to 16 KiB) through a WebSocket tunnel to either side: a
    /// client (or node) that stops reading for this long ends the tunnel, which otherwise
    /// would stay open with its slots held even after the other side closed (nginx's
    /// `proxy_send_timeout`, HAProxy's `timeout tunnel` for a stalled peer).
    pub ws_send_timeout_ms: u64,
    /// Client connections open at once (all workers); further ones are closed at accept.
    pub max_connections: usize,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// After SIGTERM, how long in-flight requests and WebSocket tunnels may take.
    pub grace_period_secs: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (default) or `pretty`.
    pub format: LogFormat,
    /// Filter directive, e.g. `info` or `petmesh_balancer=debug,info` (`RUST_LOG` wins).
    pub level: String,
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
            aliases: &[("REDIS_URL", "redis.url")],
        };
        layered::load(ENV_PREFIX, sources).validate(Settings::validate)
    }

    /// The static upstream list, parsed; empty when discovery is through Redis.
    pub fn static_backends(&self) -> Result<Vec<Backend>, String> {
        let mut backends: Vec<Backend> = Vec::new();
        for item in self.discovery.static_upstreams.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let backend = Backend::parse(item)?;
            if backends.iter().any(|b| b.id == backend.id) {
                return Err(format!("node id `{}` appears twice", backend.id));
            }
            backends.push(backend);
        }
        Ok(backends)
    }

    /// Event loops to run: `workers`, or the number of cores when 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The graceful-shutdown bound.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.shutdown.grace_period_secs)
    }
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

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let settings = Settings::load(None, env(&[])).unwrap();
        assert_eq!(settings.listen.port, 8080);
        assert_eq!(settings.admin.port, 8081);
        assert_eq!(settings.cluster.name, "default");
        assert_eq!(settings.strategy.http, StrategyName::RoundRobin);
        assert_eq!(settings.strategy.ws, StrategyName::LeastConnections);
        assert_eq!(settings.limits.ws_per_ip, 10);
        assert_eq!(settings.limits.ws_lease_ms, 15_000);
        assert_eq!(settings.limits.ws_lease_refresh_ms, 5_000);
        assert_eq!(settings.health.path, "/health/ready");
        assert!(settings.worker_count() >= 1);
    }

    #[test]
    fn nested_variables_and_redis_url_alias_are_honoured() {
        let settings = Settings::load(
            None,
            env(&[
                ("REDIS_URL", "redis://10.0.0.1:6379"),
                ("PETMESH_BALANCER__STRATEGY__HTTP", "consistent-hash"),
                ("PETMESH_BALANCER__STRATEGY__HASH_KEY", "header:x-user"),
                ("PETMESH_BALANCER__LISTEN__PORT", "0"),
                ("PETMESH_BALANCER__PANIC_THRESHOLD", "0.3"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.redis.url, "redis://10.0.0.1:6379");
        assert_eq!(settings.strategy.http, StrategyName::ConsistentHash);
        assert_eq!(settings.strategy.hash_key, HashKey::Header("x-user".into()));
        assert_eq!(settings.listen.port, 0);
        assert_eq!(settings.panic_threshold, 0.3);
    }

    #[test]
    fn static_upstreams_accept_ids_and_weights() {
        let settings = Settings::load(
            None,
            env(&[(
                "PETMESH_BALANCER__DISCOVERY__STATIC_UPSTREAMS",
                "127.0.0.1:9001, b=127.0.0.1:9002@3",
            )]),
        )
        .unwrap();
        let backends = settings.static_backends().unwrap();
        assert_eq!(backends[0].id, "127.0.0.1:9001");
        assert_eq!(backends[0].weight, 1);
        assert_eq!(backends[1].id, "b");
        assert_eq!(backends[1].weight, 3);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = Settings::load(
            None,
            env(&[
                ("PETMESH_BALANCER__DISCOVERY__STATIC_UPSTREAMS", "nonsense"),
                ("PETMESH_BALANCER__RETRY__MAX_ATTEMPTS", "0"),
                ("PETMESH_BALANCER__STRATEGY__BOUNDED_LOAD_FACTOR", "0.5"),
                ("PETMESH_BALANCER__PANIC_THRESHOLD", "2"),
            ]),
        )
        .unwrap_err();
        let settings: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "discovery.static_upstreams",
                "retry.max_attempts",
                "strategy.bounded_load_factor",
                "panic_threshold"
            ]
        );
        assert_eq!(problems[1].env_var, "PETMESH_BALANCER__RETRY__MAX_ATTEMPTS");
    }

    #[test]
    fn unknown_strategy_or_hash_key_names_the_setting() {
        let problems = Settings::load(None, env(&[("PETMESH_BALANCER__STRATEGY__WS", "fastest")]))
            .unwrap_err();
        assert_eq!(problems[0].setting, "strategy.ws");
        let problems = Settings::load(
            None,
            env(&[("PETMESH_BALANCER__STRATEGY__HASH_KEY", "header:")]),
        )
        .unwrap_err();
        assert_eq!(problems[0].setting, "strategy.hash_key");
    }
}
