//! Metrics of the store: orders, the job queue, the cache, published events, and the
//! dependency fallbacks that keep it serving (skipped revocation checks).

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The statuses an order enters (`petmesh_node_orders_total{status}`).
const ORDER_STATUSES: [&str; 4] = ["placed", "approved", "delivered", "cancelled"];

/// The job kinds the queue runs.
const JOB_KINDS: [&str; 1] = ["payment"];

/// The domain events the store publishes (room and custom events are counted as they come).
const DOMAIN_EVENTS: [&str; 6] = [
    "pet:created",
    "pet:updated",
    "pet:deleted",
    "order:created",
    "order:updated",
    "order:deleted",
];

/// Store collectors, registered in the node's registry.
pub struct StoreMetrics {
    /// `petmesh_node_orders_total{status}`: orders entering each status.
    pub orders: IntCounterVec,
    /// `petmesh_node_job_queue_depth`: jobs queued or running, cluster-wide (as last sampled).
    pub job_queue_depth: IntGauge,
    /// `petmesh_node_job_queue_dead_letters`: dead-letter jobs kept in the table, cluster-wide.
    pub job_queue_dead_letters: IntGauge,
    /// `petmesh_node_job_queue_oldest_age_seconds`: how long the oldest due job has waited.
    pub job_queue_oldest_age: Gauge,
    /// `petmesh_node_job_duration_seconds{kind,outcome}`: enqueue to final outcome.
    pub job_duration: HistogramVec,
    /// `petmesh_node_job_attempts{kind}`: attempts a job took to finish.
    pub job_attempts: HistogramVec,
    /// `petmesh_node_job_dead_letters_total{kind}`: jobs that gave up.
    pub job_dead_letters: IntCounterVec,
    /// `petmesh_node_cache_requests_total{cache,result}`: `hit`, `miss`, `error`.
    pub cache_requests: IntCounterVec,
    /// `petmesh_node_events_published_total{event,result}`: `ok`, `error`.
    pub events_published: IntCounterVec,
    /// `petmesh_node_revocation_checks_skipped_total`: token checks made without Redis.
    pub revocation_checks_skipped: IntCounter,
}

impl StoreMetrics {
    /// Creates the collectors and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let orders = IntCounterVec::new(
            Opts::new(
                "petmesh_node_orders_total",
                "Orders entering each status, by status.",
            ),
            &["status"],
        )?;
        let job_queue_depth = IntGauge::new(
            "petmesh_node_job_queue_depth",
            "Jobs queued or running in the cluster, as last sampled.",
        )?;
        let job_queue_dead_letters = IntGauge::new(
            "petmesh_node_job_queue_dead_letters",
            "Dead-letter jobs kept in the cluster's queue table, as last sampled.",
        )?;
        let job_queue_oldest_age = Gauge::new(
            "petmesh_node_job_queue_oldest_age_seconds",
            "How long the oldest due job of the cluster has been waiting (0 when none).",
        )?;
        let job_duration = HistogramVec::new(
            HistogramOpts::new(
                "petmesh_node_job_duration_seconds",
                "Time from enqueue to a job's final outcome.",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["kind", "outcome"],
        )?;
        let job_attempts = HistogramVec::new(
            HistogramOpts::new(
                "petmesh_node_job_attempts",
                "Attempts a job took to reach its final outcome.",
            )
            .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0]),
            &["kind"],
        )?;
        let job_dead_letters = IntCounterVec::new(
            Opts::new(
                "petmesh_node_job_dead_letters_total",
                "Jobs that exhausted their attempts.",
            ),
            &["kind"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "petmesh_node_cache_requests_total",
                "Cache lookups by result (hit, miss, error).",
            ),
            &["cache", "result"],
        )?;
        let events_published = IntCounterVec::new(
            Opts::new(
                "petmesh_node_events_published_total",
                "Domain events published to Redis, by result.",
            ),
            &["event", "result"],
        )?;
        let revocation_checks_skipped = IntCounter::new(
            "petmesh_node_revocation_checks_skipped_total",
            "Access tokens accepted without a revocation check because Redis was unreachable.",
        )?;
        registry.register(Box::new(revocation_checks_skipped.clone()))?;
        registry.register(Box::new(orders.clone()))?;
        registry.register(Box::new(job_queue_depth.clone()))?;
        registry.register(Box::new(job_queue_dead_letters.clone()))?;
        registry.register(Box::new(job_queue_oldest_age.clone()))?;
        registry.register(Box::new(job_duration.clone()))?;
        registry.register(Box::new(job_attempts.clone()))?;
        registry.register(Box::new(job_dead_letters.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(events_published.clone()))?;
        for status in ORDER_STATUSES {
            orders.with_label_values(&[status]);
        }
        for kind in JOB_KINDS {
            job_attempts.with_label_values(&[kind]);
            job_dead_letters.with_label_values(&[kind]);
            for outcome in ["done", "dead"] {
                job_duration.with_label_values(&[kind, outcome]);
            }
        }
        for result in ["hit", "miss", "error"] {
            cache_requests.with_label_values(&["pet", result]);
        }
        for event in DOMAIN_EVENTS {
            for result in ["ok", "error"] {
                events_published.with_label_values(&[event, result]);
            }
        }
        Ok(Self {
            orders,
            job_queue_depth,
            job_queue_dead_letters,
            job_queue_oldest_age,
            job_duration,
            job_attempts,
            job_dead_letters,
            cache_requests,
            events_published,
            revocation_checks_skipped,
        })
    }
}
