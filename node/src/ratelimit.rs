//! Request rate limits that hold for the whole cluster: each check is one Redis script (GCRA,
//! the generic cell rate algorithm) on the subject's bucket, evaluated with Redis' own clock, so
//! requests spread over any number of nodes spend one budget.
//!
//! Subjects: an authenticated user (valid bearer token) by user id, whatever address or node
//! its requests come from, with `rate_limit.authenticated_per_hour`; anyone else by client
//! address ([`crate::client_ip`]) with `rate_limit.anonymous_per_hour`. Route classes with
//! their own budget: logins and registrations (`rate_limit.login_per_hour`, by address) and
//! authenticated writes (`rate_limit.writes_per_hour`); 0 keeps them on the subject's general
//! budget. A budget of N per hour allows N at once and then one every hour / N.
//!
//! Redis unreachable: every node goes on limiting on its own, with limit ÷ (the number of nodes
//! it last saw in the registry), so the cluster as a whole stays near the limit and never goes
//! unlimited; each such check is counted (`petmesh_node_rate_limit_fallbacks_total`) and the
//! outage is logged once.

mod local;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, LazyLock,
    },
    time::Duration,
};

use petmesh_shared::registry::RedisKeys;
use poem::{
    http::{HeaderValue, Method},
    Endpoint, IntoResponse, Request, Response,
};
use uuid::Uuid;

use self::local::LocalLimiter;
use crate::{
    auth::{presented_token, tokens::TokenKeys},
    client_ip::ClientIp,
    config::{RateLimitSettings, Redis},
    error::ApiError,
    metrics::ratelimit::RateLimitMetrics,
};

/// GCRA. KEYS[1]: the bucket (its theoretical arrival time, Unix ms). ARGV[1]: emission
/// interval ms (hour / limit); ARGV[2]: the burst period ms (an hour). Returns
/// `{allowed, remaining, reset_ms, retry_after_ms}`.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = t[1] * 1000 + math.floor(t[2] / 1000)
        local interval, period = tonumber(ARGV[1]), tonumber(ARGV[2])
        local tat = tonumber(redis.call('GET', KEYS[1]) or now)
        if tat < now then tat = now end
        local new_tat = tat + interval
        local allow_at = new_tat - period
        if now < allow_at then
            return {0, 0, tat - now, allow_at - now}
        end
        redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
        return {1, math.floor((period - (new_tat - now)) / interval), new_tat - now, 0}
        ",
    )
});

/// The burst period: budgets are per hour.
const PERIOD: Duration = Duration::from_secs(3600);

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// An authenticated user.
    User(Uuid),
    /// An anonymous client, by address.
    Address(IpAddr),
}

/// Which budget of the subject: the general one or a route class of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Everything without a budget of its own.
    General,
    /// `POST /api/v1/auth/login` and `/register` (by address).
    Login,
    /// An authenticated user's `POST`, `PUT`, `PATCH` and `DELETE`.
    Write,
}

impl Class {
    /// The metric label and key part.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::General => "general",
            Self::Login => "login",
            Self::Write => "write",
        }
    }
}

/// The outcome of one check, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The budget (`RateLimit-Limit`).
    pub limit: u32,
    /// What is left of it after this request (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Until the whole budget is back (`RateLimit-Reset`).
    pub reset: Duration,
    /// When a refused request may be retried (`Retry-After`).
    pub retry_after: Duration,
}

/// The cluster-wide limiter of a node; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    /// Shared Redis connection.
    redis: Redis,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// The `rate_limit.*` settings.
    settings: Arc<RateLimitSettings>,
    /// Counters.
    metrics: RateLimitMetrics,
    /// The fallback while Redis is unreachable.
    local: Arc<LocalLimiter>,
    /// Nodes in the registry when last counted (at least 1): the fallback's divisor.
    nodes_seen: Arc<AtomicUsize>,
    /// Whether the current Redis outage has been logged.
    in_outage: Arc<AtomicBool>,
}

impl RateLimiter {
    /// A limiter over `redis` with the `rate_limit.*` settings.
    pub fn new(
        redis: Redis,
        keys: RedisKeys,
        settings: RateLimitSettings,
        metrics: RateLimitMetrics,
    ) -> Self {
        Self {
            redis,
            keys,
            settings: Arc::new(settings),
            metrics,
            local: Arc::new(LocalLimiter::default()),
            nodes_seen: Arc::new(AtomicUsize::new(1)),
            in_outage: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether limits apply at all (`rate_limit.enabled`).
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The budget per hour of `subject` in `class`, and the subject the class bills (login
    /// budgets are by address even for a caller with a token).
    fn budget(&self, subject: Subject, class: Class, address: IpAddr) -> (u32, Subject, Class) {
        let s = &self.settings;
        match (class, subject) {
            (Class::Login, _) if s.login_per_hour > 0 => {
                (s.login_per_hour, Subject::Address(address), Class::Login)
            }
            (Class::Write, Subject::User(_)) if s.writes_per_hour > 0 => {
                (s.writes_per_hour, subject, Class::Write)
            }
            (_, Subject::User(_)) => (s.authenticated_per_hour, subject, Class::General),
            (_, Subject::Address(_)) => (s.anonymous_per_hour, subject, Class::General),
        }
    }

    /// Spends one request of `subject`'s budget for `class` (`address`: the client's, which
    /// login budgets are kept by).
    pub async fn check(&self, subject: Subject, class: Class, address: IpAddr) -> Decision {
        let (limit, subject, class) = self.budget(subject, class, address);
        let key = match subject {
            Subject::User(id) => self.keys.rate_limit(class.as_str(), &format!("user:{id}")),
            Subject::Address(ip) => self.keys.rate_limit(class.as_str(), &format!("ip:{ip}")),
        };
        let interval = PERIOD.as_millis() as u64 / u64::from(limit.max(1));
        let mut conn = self.redis.clone();
        let answer: redis::RedisResult<(u8, u64, u64, u64)> = GCRA
            .key(&key)
            .arg(interval)
            .arg(PERIOD.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        let decision = match answer {
            Ok((allowed, remaining, reset_ms, retry_ms)) => {
                if self.in_outage.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again: rate limits are cluster-wide again");
                }
                Decision {
                    allowed: allowed == 1,
                    limit,
                    remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                    reset: Duration::from_millis(reset_ms),
                    retry_after: Duration::from_millis(retry_ms),
                }
            }
            Err(err) => {
                self.metrics.fallbacks.inc();
                let nodes = self.nodes_seen.load(Ordering::Relaxed).max(1);
                if !self.in_outage.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %err, nodes, "Redis unreachable: each node enforces rate limits on its own, at limit / nodes");
                }
                let share = (limit / nodes as u32).max(1);
                self.local.check(&key, share, PERIOD)
            }
        };
        self.metrics
            .requests
            .with_label_values(&[
                class.as_str(),
                if decision.allowed {
                    "allowed"
                } else {
                    "limited"
                },
            ])
            .inc();
        decision
    }

    /// Records how many nodes the registry lists (the fallback divides by it).
    pub fn observe_nodes(&self, nodes: usize) {
        self.nodes_seen.store(nodes.max(1), Ordering::Relaxed);
    }
}

/// Whether a request path is limited: the API and WebSocket handshakes (health, metrics and
/// documentation are not).
fn is_limited(path: &str) -> bool {
    path.starts_with("/api/v1/") || path == "/ws"
}

/// The budget class of a request.
fn class_of(method: &Method, path: &str, authenticated: bool) -> Class {
    match (method, path) {
        (&Method::POST, "/api/v1/auth/login" | "/api/v1/auth/register") => Class::Login,
        (&Method::POST | &Method::PUT | &Method::PATCH | &Method::DELETE, _) if authenticated => {
            Class::Write
        }
        _ => Class::General,
    }
}

impl Decision {
    /// Writes `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (whole seconds,
    /// rounded up) into `headers`.
    pub fn write_headers(&self, headers: &mut poem::http::HeaderMap) {
        let reset = self.reset.as_millis().div_ceil(1000);
        for (name, value) in [
            ("ratelimit-limit", u128::from(self.limit)),
            ("ratelimit-remaining", u128::from(self.remaining)),
            ("ratelimit-reset", reset),
        ] {
            headers.insert(name, HeaderValue::from(value as u64));
        }
    }
}

impl RateLimiter {
    /// Middleware body: spends the request's budget (a valid bearer token: the user's, else the
    /// client address's); a refused request gets 429 with `Retry-After` and the common error
    /// body. Every answer of a limited route carries the `RateLimit-*` headers.
    pub async fn apply<E: Endpoint>(
        &self,
        tokens: &TokenKeys,
        next: E,
        req: Request,
    ) -> poem::Result<Response> {
        if !self.enabled() || !is_limited(req.uri().path()) {
            return next.call(req).await.map(IntoResponse::into_response);
        }
        let address = req
            .extensions()
            .get::<ClientIp>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |ip| ip.0);
        // Signature and expiry only: a revoked token still names its user, whose budget it
        // spends; the handler refuses it.
        let user = presented_token(&req).and_then(|token| tokens.verify(&token).ok());
        let subject = user.as_ref().map_or(Subject::Address(address), |claims| {
            Subject::User(claims.sub)
        });
        let class = class_of(req.method(), req.uri().path(), user.is_some());
        let decision = self.check(subject, class, address).await;
        let mut resp = if decision.allowed {
            match next.call(req).await {
                Ok(resp) => resp.into_response(),
                Err(err) => err.into_response(),
            }
        } else {
            let wait = decision.retry_after.as_millis().div_ceil(1000).max(1) as u64;
            ApiError::too_many_requests(
                format!(
                    "rate limit of {} requests per hour reached; retry in {wait} s",
                    decision.limit
                ),
                wait,
            )
            .into_response()
        };
        decision.write_headers(resp.headers_mut());
        Ok(resp)
    }
}
