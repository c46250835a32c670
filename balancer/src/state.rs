//! [`BalancerState`]: what every worker thread, the control plane and the admin API share.
//! Built once by [`Application::build`](crate::startup::Application::build), held by `Arc`,
//! dropped when the last worker and background task has stopped.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use petmesh_shared::pacing::Pacer;
use tokio::sync::mpsc;

use crate::{
    backend::Membership,
    config::Settings,
    console::Console,
    metrics::Metrics,
    ws_limit::{ClusterSlots, WsLimiter},
};

/// State shared by all threads.
#[derive(Debug)]
pub struct BalancerState {
    /// Validated settings.
    pub settings: Settings,
    /// The node set (written by discovery, read by workers and admin).
    pub membership: Membership,
    /// Every metric.
    pub metrics: Metrics,
    /// The cluster console's recent events and, while a console is connected, its sampler;
    /// touched by the control plane only.
    pub console: Console,
    /// Open WebSockets per client IP (cluster-wide with Redis); touched only on WebSocket open
    /// and close.
    pub ws_limit: Arc<WsLimiter>,
    /// The rate at which WebSocket handshakes are passed on to the nodes (all workers).
    pub handshakes: Pacer,
    /// Client connections open across all workers (for `limits.max_connections`).
    connections: AtomicUsize,
}

impl BalancerState {
    /// Fresh state for `settings`, with `metrics`; the WebSocket limit is cluster-wide through
    /// `ws_cluster` (the Redis side and the sender its lease task reads) when given.
    pub fn new(
        settings: Settings,
        metrics: Metrics,
        ws_cluster: Option<(Arc<ClusterSlots>, mpsc::UnboundedSender<IpAddr>)>,
    ) -> Self {
        let ws_limit = Arc::new(WsLimiter::new(
            settings.limits.ws_per_ip,
            ws_cluster,
            metrics.clone(),
        ));
        let limits = &settings.limits;
        let handshakes = Pacer::new(
            limits.ws_handshakes_per_second,
            limits.ws_handshake_burst,
            Duration::from_millis(limits.ws_handshake_max_wait_ms),
        );
        Self {
            settings,
            membership: Membership::default(),
            metrics,
            console: Console::new(),
            ws_limit,
            handshakes,
            connections: AtomicUsize::new(0),
        }
    }

    /// Admits one more client connection; `None` at `limits.max_connections`.
    pub fn admit_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        if before >= self.settings.limits.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics.client_connections_refused.inc();
            return None;
        }
        self.metrics.client_connections.inc();
        Some(ConnectionSlot {
            state: self.clone(),
        })
    }
}

/// Resolves once `shutdown` holds `true` (or its sender is gone).
///
/// The borrow `wait_for` returns is not `Send`; it is dropped in here, so callers can await
/// this inside `select!` in a `Send` future.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One admitted client connection; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: Arc<BalancerState>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.client_connections.dec();
    }
}
