//! [`BalancerState`]: what every worker thread, the control plane and the admin API share.
//! Built once by [`Application::build`](crate::startup::Application::build), held by `Arc`,
//! dropped when the last worker and background task has stopped.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use crate::{backend::Membership, config::Settings, metrics::Metrics};

/// State shared by all threads.
#[derive(Debug)]
pub struct BalancerState {
    /// Validated settings.
    pub settings: Settings,
    /// The node set (written by discovery, read by workers and admin).
    pub membership: Membership,
    /// Every metric.
    pub metrics: Metrics,
    /// Open WebSockets per client IP; touched only on WebSocket open and close.
    ws_per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Client connections open across all workers (for `limits.max_connections`).
    connections: AtomicUsize,
}

impl BalancerState {
    /// Fresh state for `settings`.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            membership: Membership::default(),
            metrics: Metrics::new(),
            ws_per_ip: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
        }
    }

    /// Reserves one of `ip`'s WebSocket slots; `None` when it already has `limits.ws_per_ip`.
    pub fn acquire_ws_slot(self: &Arc<Self>, ip: IpAddr) -> Option<WsSlot> {
        let mut map = self.ws_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.settings.limits.ws_per_ip {
            return None;
        }
        *count += 1;
        Some(WsSlot {
            state: self.clone(),
            ip,
        })
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

/// One open WebSocket of one client IP; released on drop (when the tunnel ends).
#[derive(Debug)]
pub struct WsSlot {
    state: Arc<BalancerState>,
    ip: IpAddr,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut map = self
            .state
            .ws_per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_slots_are_limited_per_ip_and_released_on_drop() {
        let mut settings = Settings::default();
        settings.limits.ws_per_ip = 2;
        let state = Arc::new(BalancerState::new(settings));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = state.acquire_ws_slot(ip).unwrap();
        let _b = state.acquire_ws_slot(ip).unwrap();
        assert!(state.acquire_ws_slot(ip).is_none());
        assert!(state.acquire_ws_slot([10, 0, 0, 2].into()).is_some());
        drop(a);
        assert!(state.acquire_ws_slot(ip).is_some());
    }
}
