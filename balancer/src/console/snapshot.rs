//! What the console shows, computed from what the balancer counts anyway: each node's
//! [`NodeStats`](crate::backend::NodeStats) counters and latency histogram, its health,
//! breaker and draining flag, and the settings.
//!
//! Rates, error ratios and p99s are differences between two ticks of the [`Sampler`], one
//! second apart; the p99 comes from the histogram's bucket counts by interpolation
//! ([`quantile`]), as Prometheus' `histogram_quantile` does, because the histogram keeps no
//! samples. The sampler exists only while a console is connected (see [`crate::console`]).

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

use prometheus::{core::Metric as _, Histogram};
use serde::Serialize;

use super::{now_ms, ConsoleEvent};
use crate::{
    admin::{node_view, NodeView},
    backend::{strategy_label, NodeState, Traffic},
    selection::HashKey,
    state::BalancerState,
};

/// Points of history kept per node: a minute at one tick per second.
pub const HISTORY: usize = 60;

/// The whole console view at one moment.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// When it was taken, Unix milliseconds.
    pub at_ms: i64,
    /// Nodes in the set.
    pub node_count: usize,
    /// Nodes that may get new work (ready, healthy, breaker not open).
    pub eligible_nodes: usize,
    /// Whether the panic threshold is crossed (health ignored).
    pub panic_mode: bool,
    /// How nodes are chosen.
    pub strategies: Strategies,
    /// The retry budget and what it has refused.
    pub retry: RetryView,
    /// Every node, sorted by id.
    pub nodes: Vec<ConsoleNode>,
    /// Recent events, oldest first; only in the first frame a console gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<ConsoleEvent>>,
}

/// The strategies in use.
#[derive(Debug, Serialize)]
pub struct Strategies {
    /// For HTTP requests.
    pub http: &'static str,
    /// For WebSocket upgrades.
    pub ws: &'static str,
    /// The key of `consistent-hash` (used only if one of the two is that).
    pub hash_key: String,
}

/// The retry settings and counts.
#[derive(Debug, Serialize)]
pub struct RetryView {
    /// Retries allowed as a fraction of the requests of the last 10 s.
    pub budget_ratio: f64,
    /// Retries always allowed per second.
    pub min_per_second: u32,
    /// Most nodes one request is tried on.
    pub max_attempts: u32,
    /// Retries sent so far.
    pub retries: u64,
    /// Retries refused because the budget was spent, so far.
    pub budget_exhausted: u64,
}

/// One node's row: the `/admin/nodes` fields plus the last second's figures.
#[derive(Debug, Serialize)]
pub struct ConsoleNode {
    /// What `/admin/nodes` says about the node.
    #[serde(flatten)]
    pub node: NodeView,
    /// Attempts per second over the last tick; `null` before the second tick.
    pub rate: Option<f64>,
    /// Failed attempts / attempts over the last tick; `null` without attempts.
    pub error_ratio: Option<f64>,
    /// 99th percentile of the time to response headers over the last tick, ms; `null`
    /// without responses.
    pub p99_ms: Option<f64>,
    /// The last [`HISTORY`] ticks, oldest first; only in the first frame a console gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

/// A node's recent figures, one entry per tick.
#[derive(Debug, Default, Serialize)]
pub struct History {
    /// Attempts per second.
    pub rate: Vec<f64>,
    /// p99 in milliseconds (`null` in ticks without responses).
    pub p99_ms: Vec<Option<f64>>,
}

/// Turns counters into per-tick figures; lives only while a console is connected.
#[derive(Debug)]
pub struct Sampler {
    /// Per node state (by [`NodeState::key`], so a node back at a new address starts afresh).
    series: HashMap<u64, Series>,
    /// When the counters in `series` were read.
    last: Instant,
}

/// One node's counters at the last tick and its history.
#[derive(Debug)]
struct Series {
    /// The counters when last read.
    counters: Counters,
    /// Figures of the last [`HISTORY`] ticks, oldest first.
    points: VecDeque<Point>,
}

/// A node's cumulative counts.
#[derive(Debug, Clone)]
struct Counters {
    requests: u64,
    errors: u64,
    /// Responses timed (the histogram's count).
    timed: u64,
    /// `(upper bound in seconds, cumulative count)` of each finite bucket.
    buckets: Vec<(f64, u64)>,
}

/// One tick's figures of a node.
#[derive(Debug, Clone, Copy)]
struct Point {
    rate: f64,
    error_ratio: Option<f64>,
    p99_ms: Option<f64>,
}

// === impl Sampler ===

impl Sampler {
    /// A sampler whose first tick measures from now.
    pub fn new(state: &BalancerState) -> Self {
        let series = state
            .membership
            .current()
            .iter()
            .map(|node| (node.key, Series::new(node)))
            .collect();
        Self {
            series,
            last: Instant::now(),
        }
    }

    /// Reads every node's counters, adds one point per node, and returns the snapshot.
    pub fn tick(&mut self, state: &BalancerState) -> Snapshot {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        let nodes = state.membership.current();
        // Departed nodes take their history with them.
        self.series
            .retain(|key, _| nodes.iter().any(|node| node.key == *key));
        for node in nodes.iter() {
            match self.series.get_mut(&node.key) {
                Some(series) => series.advance(node, elapsed),
                None => {
                    self.series.insert(node.key, Series::new(node));
                }
            }
        }
        self.snapshot(state, &nodes, None)
    }

    /// The snapshot as of the last tick, with every node's history and `events`: what a
    /// console gets first.
    pub fn first(&self, state: &BalancerState, events: Vec<ConsoleEvent>) -> Snapshot {
        self.snapshot(state, &state.membership.current(), Some(events))
    }

    fn snapshot(
        &self,
        state: &BalancerState,
        nodes: &[std::sync::Arc<NodeState>],
        events: Option<Vec<ConsoleEvent>>,
    ) -> Snapshot {
        state.metrics.console_snapshots.inc();
        let with_history = events.is_some();
        let settings = &state.settings;
        let rows = nodes
            .iter()
            .map(|node| {
                let series = self.series.get(&node.key);
                let last = series.and_then(|s| s.points.back());
                ConsoleNode {
                    node: node_view(node),
                    rate: last.map(|p| p.rate),
                    error_ratio: last.and_then(|p| p.error_ratio),
                    p99_ms: last.and_then(|p| p.p99_ms),
                    history: with_history.then(|| series.map(Series::history).unwrap_or_default()),
                }
            })
            .collect();
        Snapshot {
            at_ms: now_ms(),
            node_count: nodes.len(),
            eligible_nodes: nodes.iter().filter(|n| n.is_eligible()).count(),
            panic_mode: state.metrics.panic_mode.get() != 0,
            strategies: Strategies {
                http: strategy_label(settings, Traffic::Http),
                ws: strategy_label(settings, Traffic::Ws),
                hash_key: hash_key_name(&settings.strategy.hash_key),
            },
            retry: RetryView {
                budget_ratio: settings.retry.budget_ratio,
                min_per_second: settings.retry.min_per_second,
                max_attempts: settings.retry.max_attempts,
                retries: state.metrics.retries.get(),
                budget_exhausted: state.metrics.retries_budget_exhausted.get(),
            },
            nodes: rows,
            events,
        }
    }
}

// === impl Series ===

impl Series {
    fn new(node: &NodeState) -> Self {
        Self {
            counters: Counters::read(node),
            points: VecDeque::with_capacity(HISTORY),
        }
    }

    /// Adds the point for the `elapsed` seconds since the counters were last read.
    fn advance(&mut self, node: &NodeState, elapsed: f64) {
        let now = Counters::read(node);
        let before = &self.counters;
        let requests = now.requests.saturating_sub(before.requests);
        let errors = now.errors.saturating_sub(before.errors);
        let timed = now.timed.saturating_sub(before.timed);
        let buckets: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .zip(&before.buckets)
            .map(|(&(bound, count), &(_, was))| (bound, count.saturating_sub(was)))
            .collect();
        let point = Point {
            rate: round(requests as f64 / elapsed, 100.0),
            error_ratio: (requests > 0).then(|| round(errors as f64 / requests as f64, 10_000.0)),
            p99_ms: quantile(0.99, &buckets, timed).map(|s| round(s * 1000.0, 1000.0)),
        };
        if self.points.len() == HISTORY {
            self.points.pop_front();
        }
        self.points.push_back(point);
        self.counters = now;
    }

    fn history(&self) -> History {
        History {
            rate: self.points.iter().map(|p| p.rate).collect(),
            p99_ms: self.points.iter().map(|p| p.p99_ms).collect(),
        }
    }
}

impl Counters {
    fn read(node: &NodeState) -> Self {
        let stats = &node.stats;
        let (timed, buckets) = buckets(&stats.latency);
        Self {
            requests: stats.requests.get(),
            errors: stats.errors.get(),
            timed,
            buckets,
        }
    }
}

/// The count and `(upper bound, cumulative count)` buckets of `histogram`, read together so
/// the two agree.
fn buckets(histogram: &Histogram) -> (u64, Vec<(f64, u64)>) {
    let metric = histogram.metric();
    let proto = metric.get_histogram();
    let buckets = proto
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    (proto.get_sample_count(), buckets)
}

/// The `q` quantile (0 < q ≤ 1) of `total` observations counted in `buckets`, which are
/// `(upper bound, cumulative count)` in ascending order of the finite bounds (the `+Inf`
/// bucket is `total`). Estimated as Prometheus' `histogram_quantile` does: the bucket holding
/// the rank, and linear interpolation between its bounds (the first bucket starts at 0); a rank
/// beyond the last finite bound yields that bound. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0);
    for &(upper, count) in buckets {
        if count as f64 >= rank {
            let (low_bound, below) = lower;
            let inside = (count - below) as f64;
            if inside == 0.0 {
                return Some(upper);
            }
            return Some(low_bound + (upper - low_bound) * (rank - below as f64) / inside);
        }
        lower = (upper, count);
    }
    Some(lower.0)
}

/// `value` rounded to `1 / per` (keeps the frames short; the page shows fewer digits anyway).
fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

/// `strategy.hash_key` as written in the settings.
fn hash_key_name(key: &HashKey) -> String {
    match key {
        HashKey::JwtSub => "jwt-sub".to_owned(),
        HashKey::Header(name) => format!("header:{name}"),
        HashKey::Cookie(name) => format!("cookie:{name}"),
        HashKey::ClientIp => "client-ip".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets of 1, 2, 4, 8 ms with these counts each (not cumulative).
    fn ms_buckets(per_bucket: [u64; 4]) -> Vec<(f64, u64)> {
        let mut cumulative = 0;
        [0.001, 0.002, 0.004, 0.008]
            .into_iter()
            .zip(per_bucket)
            .map(|(bound, n)| {
                cumulative += n;
                (bound, cumulative)
            })
            .collect()
    }

    #[test]
    fn quantile_interpolates_within_the_bucket_that_holds_the_rank() {
        // 100 observations: 50 below 1 ms, 40 in (1, 2], 10 in (2, 4].
        let buckets = ms_buckets([50, 40, 10, 0]);
        // Rank 50 is the top of the first bucket.
        assert_eq!(quantile(0.5, &buckets, 100), Some(0.001));
        // Rank 70 is halfway through (1, 2].
        assert!((quantile(0.7, &buckets, 100).unwrap() - 0.0015).abs() < 1e-12);
        // Rank 99 is 9/10 through (2, 4].
        assert!((quantile(0.99, &buckets, 100).unwrap() - 0.0038).abs() < 1e-12);
        // The first bucket starts at 0.
        assert!((quantile(0.25, &buckets, 100).unwrap() - 0.0005).abs() < 1e-12);
    }

    #[test]
    fn quantile_beyond_the_last_finite_bound_is_that_bound_and_none_without_data() {
        // 10 observations, 5 of them slower than 8 ms (only in the +Inf bucket).
        let buckets = ms_buckets([5, 0, 0, 0]);
        assert_eq!(quantile(0.99, &buckets, 10), Some(0.008));
        assert_eq!(quantile(0.99, &ms_buckets([0; 4]), 0), None);
    }

    #[test]
    fn a_tick_turns_counter_differences_into_rate_error_ratio_and_p99() {
        let settings = crate::config::Settings::default();
        let state = BalancerState::new(settings.clone(), crate::metrics::Metrics::new(), None);
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 10_000).into();
        let found = crate::backend::Discovered {
            backend: crate::backend::Backend {
                id: "n1".into(),
                addr: addr.to_string(),
                weight: 1,
            },
            draining: false,
            zone: "eu-1a".into(),
        };
        state
            .membership
            .update(vec![(found, addr)], &settings, &state.metrics);
        let node = state.membership.current()[0].clone();
        let mut sampler = Sampler::new(&state);
        for i in 0..100 {
            node.stats.requests.inc();
            node.stats
                .latency
                .observe(if i < 98 { 0.0004 } else { 0.003 });
        }
        node.stats.errors.inc();
        let snapshot = sampler.tick(&state);
        let row = &snapshot.nodes[0];
        assert_eq!(row.node.zone, "eu-1a");
        assert!(row.rate.unwrap() > 0.0);
        assert_eq!(row.error_ratio, Some(0.01));
        // Rank 99 of 100: the second of the two observations in (2, 4] ms.
        assert_eq!(row.p99_ms, Some(3.0));
        assert!(row.history.is_none(), "history only in the first frame");
        let first = sampler.first(&state, Vec::new());
        assert_eq!(first.nodes[0].history.as_ref().unwrap().rate.len(), 1);
    }
}
