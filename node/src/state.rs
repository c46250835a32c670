//! `AppState`: the one context every handler receives. Cheap to clone (pools and `Arc`s).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use petmesh_shared::registry::RedisKeys;

use crate::{
    auth::{revocation::Revocations, tokens::TokenKeys},
    config::Settings,
    metrics::Metrics,
};

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL pool: the source of truth.
    pub db: sqlx::PgPool,
    /// Redis pool: revocations, cache, pub/sub publishing.
    pub redis: deadpool_redis::Pool,
    /// The cluster's Redis key layout.
    pub keys: RedisKeys,
    /// Access token signing and verification.
    pub tokens: TokenKeys,
    /// Revoked tokens, cluster-wide.
    pub revocations: Revocations,
    /// Prometheus registry and the node's collectors.
    pub metrics: Arc<Metrics>,
    /// This node's id.
    pub node_id: Arc<str>,
    /// When the node started (for `/health`).
    pub started_at: Instant,
    /// Set when shutdown begins: `/health/ready` answers 503 so no new work arrives.
    draining: Arc<AtomicBool>,
}

impl AppState {
    /// Builds the state from settings and already created pools.
    pub fn new(
        settings: &Settings,
        db: sqlx::PgPool,
        redis: deadpool_redis::Pool,
    ) -> anyhow::Result<Self> {
        let keys = RedisKeys::new(&settings.cluster.name);
        let tokens = TokenKeys::new(&settings.auth);
        let revocations = Revocations::new(redis.clone(), keys.clone(), tokens.access_ttl);
        Ok(Self {
            db,
            redis,
            keys,
            tokens,
            revocations,
            metrics: Arc::new(Metrics::new()?),
            node_id: settings.node_id.as_str().into(),
            started_at: Instant::now(),
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Marks the node as draining (readiness turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
