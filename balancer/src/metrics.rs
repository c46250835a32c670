//! Prometheus metrics, served as text on the admin port.
//!
//! Per-node series (`node` label) are created when a node joins and their handles are kept in
//! the node's [`NodeStats`](crate::backend::NodeStats), so the data path never looks a label up:
//! it bumps an atomic. Series of a departed node are removed once nothing references it.
//!
//! Every series whose labels are known in advance exists from start-up (at 0), as Prometheus'
//! instrumentation guidelines ask, so dashboards and alerts never see a metric appear late.
//! The per-node state gauges (`node_healthy`, `node_draining`, `node_breaker_state`) are
//! rewritten from the node set by the control plane's health loop, never by the data path.

use std::sync::Arc;

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{backend::NodeState, breaker::BreakerState, error::ErrorKind};

/// The values of the `state` label of `petmesh_balancer_nodes`.
const NODE_STATES: [&str; 3] = ["ready", "draining", "unhealthy"];

/// Every metric the balancer exports, registered in one private registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Registry,
    /// Requests forwarded to a node (every attempt), by node.
    pub upstream_requests: IntCounterVec,
    /// Failed attempts (connect errors, timeouts, 502/503/504), by node.
    pub upstream_errors: IntCounterVec,
    /// Time to the node's response headers, by node.
    pub upstream_latency: HistogramVec,
    /// HTTP requests currently open at a node, by node.
    pub upstream_in_flight: IntGaugeVec,
    /// Open WebSocket tunnels, by node.
    pub websocket_connections: IntGaugeVec,
    /// Nodes picked first by a strategy, by strategy, traffic (`http`/`ws`) and node.
    pub picks: IntCounterVec,
    /// Retries sent to another node.
    pub retries: IntCounter,
    /// Retries refused because the retry budget was spent.
    pub retries_budget_exhausted: IntCounter,
    /// Breaker state changes, by node and new state.
    pub breaker_transitions: IntCounterVec,
    /// Health verdict changes, by node and new verdict.
    pub health_transitions: IntCounterVec,
    /// Responses the balancer generated itself, by error kind.
    pub proxy_errors: IntCounterVec,
    /// Client connections currently open.
    pub client_connections: IntGauge,
    /// Client connections each worker serves, by worker index (see [`crate::spread`]).
    pub worker_connections: IntGaugeVec,
    /// Client connections closed at accept because `limits.max_connections` was reached.
    pub client_connections_refused: IntCounter,
    /// WebSocket handshakes that waited for their turn (`limits.ws_handshakes_per_second`);
    /// those refused are `proxy_errors_total{kind="too_many_handshakes"}`.
    pub ws_handshakes_paced: IntCounter,
    /// 1 while the panic threshold is crossed (health ignored), else 0.
    pub panic_mode: IntGauge,
    /// Nodes known, by state (`ready`, `draining`, `unhealthy`).
    pub nodes: IntGaugeVec,
    /// Failed discovery rounds (Redis unreachable, bad entries).
    pub discovery_failures: IntCounter,
    /// Nodes that left the set without draining first (their registry entry expired: crashed,
    /// killed or cut off from Redis).
    pub nodes_lost: IntCounter,
    /// 1 while the last read of the node registry succeeded (and its event stream is open),
    /// else 0.
    pub discovery_up: IntGauge,
    /// WebSocket handshakes this balancer admitted or refused alone (`ws_per_ip / balancers`)
    /// because Redis was unreachable.
    pub websocket_limit_fallbacks: IntCounter,
    /// Balancers registered in the cluster's Redis when last counted (the fallback divisor).
    pub balancers: IntGauge,
    /// 1 for the running version (`version` label).
    pub info: IntGaugeVec,
    /// 1 while a node in the set passes its health probes, by node.
    pub node_healthy: IntGaugeVec,
    /// 1 while a node in the set is draining, by node.
    pub node_draining: IntGaugeVec,
    /// 1 for each node's current breaker state (`closed`, `open`, `half_open`), 0 for the others.
    pub node_breaker_state: IntGaugeVec,
    /// Cluster consoles connected to `/admin/stream` (see [`crate::console`]).
    pub console_clients: IntGauge,
    /// Console snapshots computed; stays put while no console is connected.
    pub console_snapshots: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let node = &["node"];
        let m = Self {
            upstream_requests: IntCounterVec::new(
                opts("upstream_requests_total", "Requests forwarded to a node."),
                node,
            )
            .unwrap(),
            upstream_errors: IntCounterVec::new(
                opts(
                    "upstream_errors_total",
                    "Failed attempts at a node (connect errors, timeouts, 502/503/504).",
                ),
                node,
            )
            .unwrap(),
            upstream_latency: HistogramVec::new(
                HistogramOpts::new(
                    "petmesh_balancer_upstream_request_duration_seconds",
                    "Time from sending a request to a node to its response headers.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16).unwrap()),
                node,
            )
            .unwrap(),
            upstream_in_flight: IntGaugeVec::new(
                opts("upstream_in_flight", "HTTP requests open at a node."),
                node,
            )
            .unwrap(),
            websocket_connections: IntGaugeVec::new(
                opts("websocket_connections", "Open WebSocket tunnels to a node."),
                node,
            )
            .unwrap(),
            picks: IntCounterVec::new(
                opts(
                    "picks_total",
                    "Nodes chosen first by a strategy, by strategy, traffic and node.",
                ),
                &["strategy", "traffic", "node"],
            )
            .unwrap(),
            retries: IntCounter::with_opts(opts(
                "retries_total",
                "Requests retried on another node.",
            ))
            .unwrap(),
            retries_budget_exhausted: IntCounter::with_opts(opts(
                "retries_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
            ))
            .unwrap(),
            breaker_transitions: IntCounterVec::new(
                opts(
                    "breaker_transitions_total",
                    "Circuit breaker state changes, by node and new state.",
                ),
                &["node", "state"],
            )
            .unwrap(),
            health_transitions: IntCounterVec::new(
                opts(
                    "health_transitions_total",
                    "Health verdict changes, by node and new verdict.",
                ),
                &["node", "healthy"],
            )
            .unwrap(),
            proxy_errors: IntCounterVec::new(
                opts(
                    "proxy_errors_total",
                    "Responses generated by the balancer itself, by kind.",
                ),
                &["kind"],
            )
            .unwrap(),
            client_connections: IntGauge::with_opts(opts(
                "client_connections",
                "Client connections open.",
            ))
            .unwrap(),
            worker_connections: IntGaugeVec::new(
                opts(
                    "worker_connections",
                    "Client connections served by each worker thread.",
                ),
                &["worker"],
            )
            .unwrap(),
            client_connections_refused: IntCounter::with_opts(opts(
                "client_connections_refused_total",
                "Client connections closed at accept (limits.max_connections).",
            ))
            .unwrap(),
            ws_handshakes_paced: IntCounter::with_opts(opts(
                "ws_handshakes_paced_total",
                "WebSocket handshakes that waited for their turn (limits.ws_handshakes_per_second).",
            ))
            .unwrap(),
            panic_mode: IntGauge::with_opts(opts(
                "panic_mode",
                "1 while too few nodes are healthy and health is ignored.",
            ))
            .unwrap(),
            nodes: IntGaugeVec::new(opts("nodes", "Known nodes by state."), &["state"]).unwrap(),
            discovery_failures: IntCounter::with_opts(opts(
                "discovery_failures_total",
                "Failed discovery rounds.",
            ))
            .unwrap(),
            nodes_lost: IntCounter::with_opts(opts(
                "nodes_lost_total",
                "Nodes that left without draining (registry entry expired).",
            ))
            .unwrap(),
            discovery_up: IntGauge::with_opts(opts(
                "discovery_up",
                "1 while the last read of the node registry succeeded, else 0.",
            ))
            .unwrap(),
            websocket_limit_fallbacks: IntCounter::with_opts(opts(
                "websocket_limit_fallbacks_total",
                "WebSocket handshakes judged by this balancer alone (ws_per_ip / balancers) because Redis was unreachable.",
            ))
            .unwrap(),
            balancers: IntGauge::with_opts(opts(
                "balancers",
                "Balancers registered in the cluster's Redis when last counted.",
            ))
            .unwrap(),
            info: IntGaugeVec::new(opts("info", "The running version (value 1)."), &["version"])
                .unwrap(),
            node_healthy: IntGaugeVec::new(
                opts("node_healthy", "1 while the node passes its health probes."),
                node,
            )
            .unwrap(),
            node_draining: IntGaugeVec::new(
                opts(
                    "node_draining",
                    "1 while the node is draining (no new work).",
                ),
                node,
            )
            .unwrap(),
            node_breaker_state: IntGaugeVec::new(
                opts(
                    "node_breaker_state",
                    "1 for the node's current circuit breaker state, 0 for the others.",
                ),
                &["node", "state"],
            )
            .unwrap(),
            console_clients: IntGauge::with_opts(opts(
                "console_clients",
                "Cluster consoles connected to /admin/stream.",
            ))
            .unwrap(),
            console_snapshots: IntCounter::with_opts(opts(
                "console_snapshots_total",
                "Cluster console snapshots computed (only while a console is connected).",
            ))
            .unwrap(),
            registry,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.upstream_requests.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.upstream_latency.clone()),
            Box::new(m.upstream_in_flight.clone()),
            Box::new(m.websocket_connections.clone()),
            Box::new(m.picks.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.retries_budget_exhausted.clone()),
            Box::new(m.breaker_transitions.clone()),
            Box::new(m.health_transitions.clone()),
            Box::new(m.proxy_errors.clone()),
            Box::new(m.client_connections.clone()),
            Box::new(m.worker_connections.clone()),
            Box::new(m.client_connections_refused.clone()),
            Box::new(m.ws_handshakes_paced.clone()),
            Box::new(m.panic_mode.clone()),
            Box::new(m.nodes.clone()),
            Box::new(m.discovery_failures.clone()),
            Box::new(m.nodes_lost.clone()),
            Box::new(m.discovery_up.clone()),
            Box::new(m.websocket_limit_fallbacks.clone()),
            Box::new(m.balancers.clone()),
            Box::new(m.info.clone()),
            Box::new(m.node_healthy.clone()),
            Box::new(m.node_draining.clone()),
            Box::new(m.node_breaker_state.clone()),
            Box::new(m.console_clients.clone()),
            Box::new(m.console_snapshots.clone()),
        ];
        for collector in collectors {
            m.registry
                .register(collector)
                .expect("metric names are unique");
        }
        m.info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // This one, until it has counted the others in Redis.
        m.balancers.set(1);
        for kind in ErrorKind::ALL {
            m.proxy_errors.with_label_values(&[kind.as_str()]);
        }
        for state in NODE_STATES {
            m.nodes.with_label_values(&[state]);
        }
        m
    }

    /// Rewrites the per-node state gauges from `nodes` (the published set): departed nodes
    /// lose their series, the others get their health, draining flag and breaker state.
    pub fn observe_nodes(&self, nodes: &[Arc<NodeState>]) {
        self.node_healthy.reset();
        self.node_draining.reset();
        self.node_breaker_state.reset();
        for node in nodes {
            let id = node.id();
            self.node_healthy
                .with_label_values(&[id])
                .set(i64::from(node.health.is_healthy()));
            self.node_draining
                .with_label_values(&[id])
                .set(i64::from(node.is_draining()));
            let current = node.breaker.state();
            for state in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                self.node_breaker_state
                    .with_label_values(&[id, state.as_str()])
                    .set(i64::from(state == current));
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// Drops every per-node series of `node` (it left and nothing references it any more).
    pub fn forget_node(&self, node: &str, strategies: &[(&str, &str)]) {
        let _ = self.upstream_requests.remove_label_values(&[node]);
        let _ = self.upstream_errors.remove_label_values(&[node]);
        let _ = self.upstream_latency.remove_label_values(&[node]);
        let _ = self.upstream_in_flight.remove_label_values(&[node]);
        let _ = self.websocket_connections.remove_label_values(&[node]);
        for (strategy, traffic) in strategies {
            let _ = self.picks.remove_label_values(&[strategy, traffic, node]);
        }
        for state in ["closed", "open", "half_open"] {
            let _ = self.breaker_transitions.remove_label_values(&[node, state]);
        }
        for healthy in ["true", "false"] {
            let _ = self
                .health_transitions
                .remove_label_values(&[node, healthy]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Options for `petmesh_balancer_<name>`.
fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("petmesh_balancer_{name}"), help)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_carries_the_component_prefix() {
        let metrics = Metrics::new();
        metrics.upstream_requests.with_label_values(&["n1"]).inc();
        metrics
            .proxy_errors
            .with_label_values(&["no_healthy_node"])
            .inc();
        let text = metrics.encode();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("petmesh_balancer_"), "{line}");
        }
        assert!(text.contains("petmesh_balancer_upstream_requests_total{node=\"n1\"} 1"));
        metrics.forget_node("n1", &[]);
        assert!(!metrics.encode().contains("node=\"n1\""));
    }
}
