//! The sections of the node's settings: one struct per section (their defaults in
//! [`defaults`]), and the clients a section knows how to build (the PostgreSQL pool, the Redis
//! connection).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use petmesh_shared::{
    redis_conn::{RedisConnection, RedisMode, RedisTarget},
    telemetry::LogFormat,
};

use crate::client_ip::TrustedProxies;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod defaults;

/// The signing secret used when none is configured. It is public (it is in this file), so it is
/// refused outside `development`.
pub(super) const DEVELOPMENT_JWT_SECRET: &str =
    "petmesh-development-secret-do-not-use-in-production";

/// Default of `server.drain_delay_ms`. Balancers learn of `draining` over pub/sub within
/// milliseconds, but a request one of them picked this node for just before is still on its way
/// on a pooled keep-alive connection: closing idle connections at once would cut it off (a 502
/// for a POST, which is not retried). A second covers that with margin on a loaded machine.
const DEFAULT_DRAIN_DELAY_MS: u64 = 1000;

/// HTTP listener and request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: IpAddr,
    /// Port to bind; 0 picks a free one (logged as `listening` with its `addr`).
    pub port: u16,
    /// Largest accepted request body; larger ones get 413.
    pub body_limit_bytes: usize,
    /// A request taking longer is answered with 503, so draining can never hang.
    pub request_timeout_secs: u64,
    /// On SIGTERM, how long in-flight requests may take before the node exits anyway.
    pub grace_period_secs: u64,
    /// On SIGTERM, how long the node keeps accepting after announcing `draining`, so that
    /// balancers have stopped sending before the listener and idle connections close.
    pub drain_delay_ms: u64,
    /// Most header fields a request may have; more get 431.
    pub max_headers: usize,
    /// Most bytes of header names and values a request may have; more get 431.
    pub max_header_bytes: usize,
    /// Comma-separated browser origins allowed to call the API cross-origin (CORS, e.g.
    /// `https://shop.example`); empty: no cross-origin access.
    pub cors_allowed_origins: String,
}

/// PostgreSQL connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL (`DATABASE_URL` also works).
    pub url: SecretString,
    /// Pool size.
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing with 503.
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
}

/// Redis connection pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `standalone` (one server) or `cluster` (a Redis Cluster).
    pub mode: RedisMode,
    /// Connection URL (`REDIS_URL` also works); in cluster mode, seed URLs separated by commas.
    pub url: SecretString,
    /// How long connecting to Redis, or one command, may take before it counts as failed.
    pub timeout_ms: u64,
}

/// Cluster membership.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Prefixes every Redis key (`petmesh:{name}:`), so clusters can share one Redis.
    pub name: String,
    /// `host:port` balancers reach this node at, as registered; empty means the bound address
    /// with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback.
    pub advertise_addr: String,
    /// Relative capacity for weighted strategies; at least 1.
    pub weight: u32,
    /// Failure domain (rack, zone) reported in the registry; empty when unknown.
    pub zone: String,
}

/// Tokens and passwords.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HMAC-SHA256 key for access tokens (kid `default`); at least 32 bytes outside
    /// development. Optional when `jwt_keys` lists keys.
    pub jwt_secret: SecretString,
    /// More access-token keys, `kid=ALG:material` comma-separated (HS256 secrets, EdDSA keys;
    /// see [`super::jwt`]): every one verifies, one signs.
    pub jwt_keys: SecretString,
    /// The kid of the signing key; empty: `default` (the secret) when set, else the only key.
    pub jwt_signing_kid: String,
    /// `iss` claim written and required.
    pub jwt_issuer: String,
    /// `aud` claim written and required.
    pub jwt_audience: String,
    /// Access token lifetime.
    pub access_token_ttl_secs: u64,
    /// Refresh token lifetime.
    pub refresh_token_ttl_secs: u64,
    /// Consecutive failed logins for one login name (from any address) that lock it.
    pub login_max_failures: u32,
    /// How long the first lock lasts; each failure after a lock has ended locks the name again
    /// for twice as long as the lock before.
    pub login_lock_secs: u64,
    /// The longest lock.
    pub login_max_lock_secs: u64,
    /// Failed logins one client address may make (over any login names) per
    /// `login_ip_window_secs` before its logins are refused: against credential stuffing.
    pub login_ip_max_failures: u32,
    /// The window of `login_ip_max_failures`, counted from the address's first failure in it.
    pub login_ip_window_secs: u64,
}

/// Request rate limits (cluster-wide, kept in Redis) and client addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Whether requests to `/api/v1/**` and WebSocket handshakes and actions are limited.
    pub enabled: bool,
    /// Requests per hour of an anonymous client, by address.
    pub anonymous_per_hour: u32,
    /// Requests per hour of an authenticated user, by user, from any address and node.
    pub authenticated_per_hour: u32,
    /// Logins and registrations per hour per client address, apart from its other requests;
    /// 0: they spend the general budget.
    pub login_per_hour: u32,
    /// `POST`/`PUT`/`PATCH`/`DELETE` requests per hour of an authenticated user, apart from its
    /// reads; 0: they spend the general budget.
    pub writes_per_hour: u32,
    /// Comma-separated CIDRs of proxies whose `X-Forwarded-For` is believed (balancers, an
    /// ingress): a request from one of them is attributed to the right-most forwarded address
    /// that is not itself trusted; any other request to its TCP peer.
    pub trusted_proxies: TrustedProxies,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` or `pretty`; defaults to pretty in development and JSON elsewhere.
    pub format: Option<LogFormat>,
    /// Filter directive, e.g. `info` or `petmesh_node=debug,info` (`RUST_LOG` wins when set).
    pub level: String,
}

/// The first admin account, created by `serve` when it does not exist yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// Username of the bootstrap admin.
    pub admin_username: String,
    /// Email of the bootstrap admin.
    pub admin_email: String,
    /// Password of the bootstrap admin (`PETMESH_ADMIN_PASSWORD` also works); no admin is
    /// created when unset.
    pub admin_password: Option<SecretString>,
}

/// The durable job queue (PostgreSQL) and the workers every node runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// Jobs this node processes at once.
    pub concurrency: usize,
    /// How often an idle worker looks for due jobs (jobs enqueued on this node wake it at once).
    pub poll_interval_ms: u64,
    /// How long a claimed job stays leased to its node; renewed while it runs. A node that dies
    /// loses its jobs to another node once the lease runs out.
    pub lease_secs: u64,
    /// Delay before the first retry; each retry doubles it (with jitter), up to the cap.
    pub backoff_base_ms: u64,
    /// Longest delay between retries.
    pub backoff_cap_ms: u64,
    /// Attempts before a job becomes a dead letter.
    pub max_attempts: i32,
    /// When more jobs than this are waiting, new orders get 503 with `Retry-After`.
    pub max_queue_depth: i64,
}

/// The simulated payment gateway: `tok_ok` succeeds, `tok_declined` fails for good,
/// `tok_flaky_<n>` fails `n` times then succeeds; orders without a token succeed with
/// probability `success_rate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentSettings {
    /// Probability (0–1) that a payment without a token is approved.
    pub success_rate: f64,
    /// How long the gateway takes to answer.
    pub simulated_latency_ms: u64,
}

/// The Redis read cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// How long a cached pet lives; also bounds staleness if Redis missed an update while it was
    /// unreachable.
    pub pet_ttl_secs: u64,
}

/// The pet catalogue.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PetSettings {
    /// Largest image `POST /api/v1/pets/{id}/uploadImage` accepts (its `file` part); bigger
    /// ones get 413. The request body may exceed it by the multipart framing.
    pub max_image_bytes: usize,
}

impl RealtimeSettings {
    /// Whether a WebSocket handshake from `origin` (its `Origin` header, if any) is allowed.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let mut allowed = self
            .allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .peekable();
        allowed.peek().is_none() || allowed.any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// The WebSocket endpoint (`/ws`) and the per-topic event history in Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSettings {
    /// Events kept per topic in its Redis stream for recovery after a reconnect.
    pub history_len: u64,
    /// A topic's history (and its offset counter) expires after this long without events.
    pub history_ttl_secs: u64,
    /// Frames queued for one connection before it counts as a slow consumer (closed 1013).
    pub send_queue: usize,
    /// Largest frame a client may send; bigger ones close the connection (1009).
    pub max_frame_bytes: usize,
    /// Time a connection has to authenticate before it is closed (4401).
    pub auth_timeout_ms: u64,
    /// The server pings a connection it has not heard from for this long.
    pub ping_interval_secs: u64,
    /// A connection silent (no frame, no pong) for this long is closed (1001).
    pub idle_timeout_secs: u64,
    /// Requests a connection may send per minute (token bucket refill).
    pub rate_per_minute: u32,
    /// Requests a connection may send in a burst (token bucket size).
    pub rate_burst: u32,
    /// Longest a request may take before it is answered with a `TIMEOUT` error.
    pub request_timeout_ms: u64,
    /// WebSocket handshakes this node admits per second after a burst (a reconnect storm is
    /// paced, [`crate::realtime::pacing`]); 0 admits every handshake at once.
    pub handshakes_per_second: u32,
    /// Handshakes admitted at once before the pacing starts.
    pub handshake_burst: u32,
    /// Longest a handshake waits for its turn; one that would wait longer gets 503.
    pub handshake_max_wait_ms: u64,
    /// Comma-separated browser origins allowed to open a WebSocket (`Origin` header, e.g.
    /// `https://shop.example`); empty allows any. Requests without `Origin` (non-browser
    /// clients) are always allowed.
    pub allowed_origins: String,
}

impl ServerSettings {
    /// The origins of `cors_allowed_origins`.
    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The node's Redis connection (see [`RedisSettings::connect`]); clones share it.
pub type Redis = RedisConnection;

impl ClusterSettings {
    /// The `host:port` registered for this node bound to `bound`: `advertise_addr` when set
    /// (an IPv6 host given without brackets, as `$(POD_IP):8080` is on an IPv6 pod, gets them),
    /// else `bound` with an unspecified IP replaced by loopback (a registry entry saying
    /// `0.0.0.0` would send balancers nowhere).
    pub fn advertised_addr(&self, bound: SocketAddr) -> String {
        if !self.advertise_addr.is_empty() {
            return match self.advertise_addr.rsplit_once(':') {
                Some((host, port)) if host.parse::<Ipv6Addr>().is_ok() => {
                    format!("[{host}]:{port}")
                }
                _ => self.advertise_addr.clone(),
            };
        }
        let ip = match bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, bound.port()).to_string()
    }
}

impl DatabaseSettings {
    /// Connection options parsed from the URL.
    pub fn connect_options(&self) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        self.url.expose_secret().parse()
    }

    /// A lazily connecting pool: the node starts (and reports not-ready) while PostgreSQL is down.
    pub fn lazy_pool(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_millis(self.acquire_timeout_ms))
            .connect_lazy_with(self.connect_options()?))
    }
}

impl RedisSettings {
    /// Where Redis is, for connections of their own (the WebSocket hub's pub/sub subscriber).
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        RedisTarget::new(
            self.mode,
            self.url.expose_secret(),
            Duration::from_millis(self.timeout_ms),
        )
    }

    /// The node's Redis connection: one multiplexed connection shared by every request (commands
    /// from concurrent requests are pipelined on it; in cluster mode one per Redis node),
    /// connected lazily and re-established in the background, with every command bounded by
    /// `timeout_ms`. A pool of connections would cost a health-check round trip per checkout,
    /// which measured as half of an authenticated request's time.
    pub fn connect(&self) -> anyhow::Result<Redis> {
        self.target()?.lazy_connection()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_origins_are_checked_only_when_listed() {
        let mut realtime = RealtimeSettings::default();
        assert!(realtime.allows_origin(Some("https://anywhere.example")));
        realtime.allowed_origins = "https://shop.example, https://admin.example".into();
        assert!(realtime.allows_origin(Some("https://shop.example")));
        assert!(realtime.allows_origin(Some("https://ADMIN.example")));
        assert!(!realtime.allows_origin(Some("https://evil.example")));
        assert!(realtime.allows_origin(None));
    }

    #[test]
    fn advertised_address_defaults_to_the_bound_one_made_reachable() {
        let mut cluster = ClusterSettings::default();
        let bound = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            cluster.advertised_addr(bound("0.0.0.0:8080")),
            "127.0.0.1:8080"
        );
        assert_eq!(cluster.advertised_addr(bound("[::]:8080")), "[::1]:8080");
        assert_eq!(cluster.advertised_addr(bound("10.1.2.3:9")), "10.1.2.3:9");
        cluster.advertise_addr = "fd00::7:8080".into();
        assert_eq!(
            cluster.advertised_addr(bound("[::]:8080")),
            "[fd00::7]:8080"
        );
        cluster.advertise_addr = "[fd00::7]:8080".into();
        assert_eq!(
            cluster.advertised_addr(bound("[::]:8080")),
            "[fd00::7]:8080"
        );
        cluster.advertise_addr = "node-1.petmesh:8080".into();
        assert_eq!(
            cluster.advertised_addr(bound("0.0.0.0:8080")),
            "node-1.petmesh:8080"
        );
        assert_eq!((cluster.weight, cluster.zone.as_str()), (1, ""));
    }
}
