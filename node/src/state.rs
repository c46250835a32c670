//! `AppState`: the one context every handler receives. Cheap to clone (pools and `Arc`s).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use petmesh_shared::registry::RedisKeys;
use tokio::sync::Notify;

use crate::{
    auth::{lockout::LoginGuard, revocation::Revocations, tokens::TokenKeys},
    cache::PetCache,
    client_ip::TrustedProxies,
    config::{JobSettings, PaymentSettings, Redis, Settings},
    events::{log::EventLog, Events},
    metrics::Metrics,
    ratelimit::RateLimiter,
    realtime::{hub::Hub, pacing::HandshakePacer},
};

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL pool: the source of truth.
    pub db: sqlx::PgPool,
    /// Redis: revocations, cache, events, registry (one shared multiplexed connection).
    pub redis: Redis,
    /// The cluster's Redis key layout.
    pub keys: RedisKeys,
    /// Access token signing and verification.
    pub tokens: TokenKeys,
    /// Revoked tokens, cluster-wide.
    pub revocations: Revocations,
    /// Failed-login lock-outs, cluster-wide.
    pub login_guard: LoginGuard,
    /// Request rate limits, cluster-wide.
    pub rate_limiter: RateLimiter,
    /// Whose `X-Forwarded-For` names the client (`rate_limit.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// Prometheus registry and the node's collectors.
    pub metrics: Arc<Metrics>,
    /// This node's id.
    pub node_id: Arc<str>,
    /// When the node started (for `/health`).
    pub started_at: Instant,
    /// Versioned Redis cache of pets.
    pub pet_cache: PetCache,
    /// Publisher of domain events.
    pub events: Events,
    /// Queue settings: the workers' concurrency, lease and backoff, and what orders consult
    /// (depth bound, attempts).
    pub jobs: JobSettings,
    /// The simulated payment gateway's settings.
    pub payments: PaymentSettings,
    /// Largest pet image accepted (`pets.max_image_bytes`).
    pub max_image_bytes: usize,
    /// This node's WebSocket connections and the cluster event feed.
    pub hub: Hub,
    /// The rate at which WebSocket handshakes are admitted.
    pub handshakes: Arc<HandshakePacer>,
    /// Wakes this node's idle job workers when it enqueues a job.
    pub job_wakeup: Arc<Notify>,
    /// Set when shutdown begins: `/health/ready` answers 503 so no new work arrives.
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// Builds the state from settings and already created pools.
    pub fn new(settings: &Settings, db: sqlx::PgPool, redis: Redis) -> anyhow::Result<Self> {
        let keys = RedisKeys::new(&settings.cluster.name);
        let development = settings.environment == crate::config::Environment::Development;
        let key_set = settings
            .auth
            .jwt_key_set(development)
            .map_err(|problems| anyhow::anyhow!("auth keys: {problems:?}"))?;
        let tokens = TokenKeys::new(&settings.auth, &key_set)?;
        let metrics = Arc::new(Metrics::new()?);
        let revocations = Revocations::new(
            redis.clone(),
            keys.clone(),
            tokens.access_ttl,
            metrics.store.revocation_checks_skipped.clone(),
        );
        let login_guard = LoginGuard::new(
            redis.clone(),
            keys.clone(),
            settings.auth.clone(),
            &metrics.auth,
        );
        let rate_limiter = RateLimiter::new(
            redis.clone(),
            keys.clone(),
            settings.rate_limit.clone(),
            metrics.rate_limits.clone(),
        );
        let pet_cache = PetCache::new(
            redis.clone(),
            keys.clone(),
            Duration::from_secs(settings.cache.pet_ttl_secs),
            metrics.store.cache_requests.clone(),
        );
        let target = settings.redis.target()?;
        let log = EventLog::new(
            redis.clone(),
            keys.clone(),
            target.sharded_pubsub(),
            settings.realtime.history_len,
            settings.realtime.history_ttl_secs,
        );
        let hub = Hub::new(
            target,
            keys.clone(),
            log.clone(),
            settings.node_id.as_str().into(),
            settings.realtime.clone(),
            Arc::clone(&metrics),
        );
        let events = Events::new(
            log,
            settings.node_id.clone(),
            metrics.store.events_published.clone(),
        );
        let handshakes = Arc::new(HandshakePacer::new(
            &settings.realtime,
            metrics.realtime.handshakes_paced.clone(),
        ));
        Ok(Self {
            db,
            redis,
            keys,
            tokens,
            revocations,
            login_guard,
            rate_limiter,
            trusted_proxies: settings.rate_limit.trusted_proxies.clone(),
            metrics,
            node_id: settings.node_id.as_str().into(),
            started_at: Instant::now(),
            pet_cache,
            events,
            jobs: settings.jobs.clone(),
            payments: settings.payments.clone(),
            max_image_bytes: settings.pets.max_image_bytes,
            hub,
            handshakes,
            job_wakeup: Arc::new(Notify::new()),
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Marks the node as draining (readiness turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining.set(1);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
