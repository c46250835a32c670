//! Metrics of the request rate limits.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Rate-limit collectors, registered in the node's registry.
#[derive(Clone)]
pub struct RateLimitMetrics {
    /// `petmesh_node_rate_limit_requests_total{class,result}`: checked requests, `allowed` or
    /// `limited`, by budget class (`general`, `login`, `write`).
    pub requests: IntCounterVec,
    /// `petmesh_node_rate_limit_fallbacks_total`: checks made by the node alone because Redis
    /// was unreachable.
    pub fallbacks: IntCounter,
}

impl RateLimitMetrics {
    /// Creates the collectors (every label value at 0) and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "petmesh_node_rate_limit_requests_total",
                "Requests checked against a rate limit, by budget class and result (allowed, limited).",
            ),
            &["class", "result"],
        )?;
        let fallbacks = IntCounter::new(
            "petmesh_node_rate_limit_fallbacks_total",
            "Rate-limit checks made by this node alone (limit / nodes) because Redis was unreachable.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        for class in ["general", "login", "write"] {
            for result in ["allowed", "limited"] {
                requests.with_label_values(&[class, result]);
            }
        }
        Ok(Self {
            requests,
            fallbacks,
        })
    }
}
