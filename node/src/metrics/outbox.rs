//! Metrics of durable event publication ([`crate::outbox`]): the backlog in PostgreSQL, what
//! the relay moved to Redis, its failures and the leases it holds.

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

/// Outbox collectors, registered in the node's registry.
#[derive(Clone)]
pub struct OutboxMetrics {
    /// `petmesh_node_outbox_pending_events`: outbox rows not yet delivered, cluster-wide (as
    /// last sampled).
    pub pending: IntGauge,
    /// `petmesh_node_outbox_oldest_pending_age_seconds`: how long the oldest undelivered event
    /// has waited (0 when none), cluster-wide (as last sampled).
    pub oldest_pending_age: Gauge,
    /// `petmesh_node_outbox_relayed_total`: outbox rows this node's relay appended to Redis.
    pub relayed: IntCounter,
    /// `petmesh_node_outbox_relay_errors_total`: relay passes that failed (Redis or
    /// PostgreSQL unreachable) and were retried after a backoff.
    pub relay_errors: IntCounter,
    /// `petmesh_node_outbox_leases_held`: topics this node relays now.
    pub leases_held: IntGauge,
}

impl OutboxMetrics {
    /// Creates the collectors and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let pending = IntGauge::new(
            "petmesh_node_outbox_pending_events",
            "Domain events committed but not yet appended to Redis, cluster-wide, as last sampled.",
        )?;
        let oldest_pending_age = Gauge::new(
            "petmesh_node_outbox_oldest_pending_age_seconds",
            "How long the oldest undelivered domain event has waited (0 when none), as last sampled.",
        )?;
        let relayed = IntCounter::new(
            "petmesh_node_outbox_relayed_total",
            "Domain events this node's relay appended to Redis.",
        )?;
        let relay_errors = IntCounter::new(
            "petmesh_node_outbox_relay_errors_total",
            "Relay passes that failed (Redis or PostgreSQL unreachable) and were retried.",
        )?;
        let leases_held = IntGauge::new(
            "petmesh_node_outbox_leases_held",
            "Topics whose relay lease this node holds.",
        )?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(oldest_pending_age.clone()))?;
        registry.register(Box::new(relayed.clone()))?;
        registry.register(Box::new(relay_errors.clone()))?;
        registry.register(Box::new(leases_held.clone()))?;
        Ok(Self {
            pending,
            oldest_pending_age,
            relayed,
            relay_errors,
            leases_held,
        })
    }
}
