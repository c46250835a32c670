//! Metrics of the WebSocket endpoint and the cluster broadcast.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Why connections close (`petmesh_node_ws_connections_closed_total{reason}`): the client
/// closed (`client_closed`), went away without a close handshake (`client_gone`), broke the
/// protocol (`error`), or the node closed it (the rest).
pub const CLOSE_REASONS: [&str; 9] = [
    "client_closed",
    "client_gone",
    "error",
    "closed",
    "idle_timeout",
    "frame_too_large",
    "node_restarting",
    "slow_consumer",
    "unauthenticated",
];

/// Real-time collectors, registered in the node's registry. (The open-connection gauge,
/// `petmesh_node_websocket_connections`, lives in [`super::Metrics`] because the registry
/// heartbeat reports it too.)
#[derive(Clone)]
pub struct RealtimeMetrics {
    /// `petmesh_node_ws_connections_opened_total`.
    pub opened: IntCounter,
    /// `petmesh_node_ws_connections_closed_total{reason}`.
    pub closed: IntCounterVec,
    /// `petmesh_node_ws_messages_in_total{type}`: requests by action (custom events as
    /// `custom`, unknown actions as `unknown`, so the label stays bounded).
    pub messages_in: IntCounterVec,
    /// `petmesh_node_ws_messages_out_total{type}`: `event`, `response`.
    pub messages_out: IntCounterVec,
    /// `petmesh_node_ws_broadcast_latency_seconds`: from an event's publication to its fan-out
    /// on this node.
    pub broadcast_latency: Histogram,
    /// `petmesh_node_ws_recoveries_total{result}`: `recovered`, `lost`.
    pub recoveries: IntCounterVec,
    /// `petmesh_node_ws_gap_fills_total`: events this node read from a topic's history because
    /// its pub/sub copy never arrived.
    pub gap_fills: IntCounter,
    /// `petmesh_node_ws_slow_consumer_disconnects_total`.
    pub slow_consumers: IntCounter,
    /// `petmesh_node_ws_handshakes_paced_total{outcome}`: `waited`, `refused`.
    pub handshakes_paced: IntCounterVec,
}

impl RealtimeMetrics {
    /// Creates the collectors and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let opened = IntCounter::new(
            "petmesh_node_ws_connections_opened_total",
            "WebSocket connections accepted.",
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "petmesh_node_ws_connections_closed_total",
                "WebSocket connections closed, by reason.",
            ),
            &["reason"],
        )?;
        let messages_in = IntCounterVec::new(
            Opts::new(
                "petmesh_node_ws_messages_in_total",
                "WebSocket requests received, by action.",
            ),
            &["type"],
        )?;
        let messages_out = IntCounterVec::new(
            Opts::new(
                "petmesh_node_ws_messages_out_total",
                "WebSocket frames queued for clients, by type (event, response).",
            ),
            &["type"],
        )?;
        let broadcast_latency = Histogram::with_opts(
            HistogramOpts::new(
                "petmesh_node_ws_broadcast_latency_seconds",
                "From an event's publication (its timestamp) to its fan-out on this node.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let recoveries = IntCounterVec::new(
            Opts::new(
                "petmesh_node_ws_recoveries_total",
                "Subscriptions that asked to resume from an offset, by result.",
            ),
            &["result"],
        )?;
        let gap_fills = IntCounter::new(
            "petmesh_node_ws_gap_fills_total",
            "Events read from a topic's history because their pub/sub copy was missed.",
        )?;
        let slow_consumers = IntCounter::new(
            "petmesh_node_ws_slow_consumer_disconnects_total",
            "Connections closed (1013) because their send queue was full.",
        )?;
        registry.register(Box::new(opened.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(messages_in.clone()))?;
        registry.register(Box::new(messages_out.clone()))?;
        registry.register(Box::new(broadcast_latency.clone()))?;
        registry.register(Box::new(recoveries.clone()))?;
        registry.register(Box::new(gap_fills.clone()))?;
        let handshakes_paced = IntCounterVec::new(
            Opts::new(
                "petmesh_node_ws_handshakes_paced_total",
                "WebSocket handshakes beyond realtime.handshakes_per_second, by outcome \
                 (waited for their turn, refused with 503).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(slow_consumers.clone()))?;
        registry.register(Box::new(handshakes_paced.clone()))?;
        for outcome in ["waited", "refused"] {
            handshakes_paced.with_label_values(&[outcome]);
        }
        for reason in CLOSE_REASONS {
            closed.with_label_values(&[reason]);
        }
        for kind in ["event", "response"] {
            messages_out.with_label_values(&[kind]);
        }
        for result in ["recovered", "lost"] {
            recoveries.with_label_values(&[result]);
        }
        Ok(Self {
            opened,
            closed,
            messages_in,
            messages_out,
            broadcast_latency,
            recoveries,
            gap_fills,
            slow_consumers,
            handshakes_paced,
        })
    }
}
