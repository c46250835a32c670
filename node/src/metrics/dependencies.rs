//! Metrics of the node's dependencies: whether PostgreSQL and Redis answer, how fast, how the
//! PostgreSQL pool is used, and how many nodes the registry lists. Written by [`crate::monitor`] and by every health check.

use std::time::Duration;

use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The values of the `dependency` label.
pub const DEPENDENCIES: [&str; 2] = ["postgres", "redis"];

/// Dependency collectors, registered in the node's registry.
#[derive(Clone)]
pub struct DependencyMetrics {
    /// `petmesh_node_dependency_up{dependency}`: 1 when the last check answered, else 0.
    pub up: IntGaugeVec,
    /// `petmesh_node_dependency_latency_seconds{dependency}`: how long the last check took.
    pub latency: GaugeVec,
    /// `petmesh_node_db_pool_connections{state}`: PostgreSQL connections `idle` or `in_use`.
    pub db_pool: IntGaugeVec,
    /// `petmesh_node_db_pool_max_connections`: the pool's size limit (`database.max_connections`).
    pub db_pool_max: IntGauge,
    /// `petmesh_node_registry_nodes`: live registry entries (this node included) when last
    /// counted; the rate limits' fallback divides by it.
    pub registry_nodes: IntGauge,
}

impl DependencyMetrics {
    /// Creates the collectors (every label value at 0) and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let up = IntGaugeVec::new(
            Opts::new(
                "petmesh_node_dependency_up",
                "1 when the dependency answered its last check, else 0.",
            ),
            &["dependency"],
        )?;
        let latency = GaugeVec::new(
            Opts::new(
                "petmesh_node_dependency_latency_seconds",
                "Duration of the dependency's last check.",
            ),
            &["dependency"],
        )?;
        let db_pool = IntGaugeVec::new(
            Opts::new(
                "petmesh_node_db_pool_connections",
                "PostgreSQL pool connections, by state (idle, in_use).",
            ),
            &["state"],
        )?;
        let db_pool_max = IntGauge::new(
            "petmesh_node_db_pool_max_connections",
            "Most connections the PostgreSQL pool opens.",
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(db_pool.clone()))?;
        let registry_nodes = IntGauge::new(
            "petmesh_node_registry_nodes",
            "Nodes with a live registry entry, as this node last counted them.",
        )?;
        registry.register(Box::new(db_pool_max.clone()))?;
        registry.register(Box::new(registry_nodes.clone()))?;
        for dependency in DEPENDENCIES {
            up.with_label_values(&[dependency]);
            latency.with_label_values(&[dependency]);
        }
        for state in ["idle", "in_use"] {
            db_pool.with_label_values(&[state]);
        }
        Ok(Self {
            up,
            latency,
            db_pool,
            db_pool_max,
            registry_nodes,
        })
    }

    /// Records one check of `dependency`.
    pub fn observe(&self, dependency: &str, up: bool, took: Duration) {
        self.up.with_label_values(&[dependency]).set(i64::from(up));
        self.latency
            .with_label_values(&[dependency])
            .set(took.as_secs_f64());
    }

    /// Records the pool's current use.
    pub fn observe_pool(&self, pool: &sqlx::PgPool) {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.db_pool.with_label_values(&["idle"]).set(idle);
        self.db_pool
            .with_label_values(&["in_use"])
            .set((size - idle).max(0));
        self.db_pool_max
            .set(i64::from(pool.options().get_max_connections()));
    }
}
