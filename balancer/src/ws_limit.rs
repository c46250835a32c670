//! The WebSocket limit per client address (`limits.ws_per_ip`), held across every balancer of
//! the cluster.
//!
//! Design:
//! - Each balancer process keeps, per client address, the number of tunnels it holds (`count`,
//!   reservations in progress included) and the sequence number of the last change (one
//!   counter for the whole process, so it only grows). That table is the truth about *this*
//!   balancer; Redis holds a copy of it per balancer (see [`cluster`]), under a lease.
//! - A handshake first reserves locally, then runs one Redis script that drops lapsed fields,
//!   adds up the other balancers' counts and admits the handshake only if the total with ours
//!   stays within the limit. Each write carries its sequence number and Redis never takes an
//!   older one, so writes arriving out of order (workers on several threads, the renewal task)
//!   cannot bring back a stale count.
//! - A closed tunnel (or a refused reservation) lowers the local count; the lease task then
//!   writes the new count. Every `limits.ws_lease_refresh_ms` it rewrites every count this
//!   balancer holds, which renews their leases and repairs whatever a Redis outage lost; a
//!   balancer that dies stops renewing, and its counts lapse after `limits.ws_lease_ms`.
//! - Redis unreachable: never refuse all and never allow all: each balancer admits up to
//!   `ws_per_ip / balancers` (the live balancers it last counted in Redis, at least 1 each)
//!   for the tunnels it holds itself, counts each such decision
//!   (`petmesh_balancer_websocket_limit_fallbacks_total`) and logs the outage once. Handshakes
//!   do not wait for a Redis known to be down; the lease task reconnects.
//!
//! Only WebSocket handshakes come here (one Redis round trip each); plain HTTP requests never
//! touch this module.

pub mod cluster;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;

use crate::metrics::Metrics;

pub use cluster::ClusterSlots;

/// What this balancer holds for one client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Tunnels open or being opened.
    pub count: u32,
    /// The sequence number of the last change.
    pub seq: u64,
}

/// The local table: counts per address and the process-wide sequence.
#[derive(Debug, Default)]
struct Table {
    /// Addresses with at least one tunnel open or being opened.
    by_ip: HashMap<IpAddr, Held>,
    /// The last sequence number given out.
    seq: u64,
}

/// The limiter every worker shares (in [`BalancerState`](crate::state::BalancerState)).
#[derive(Debug)]
pub struct WsLimiter {
    /// `limits.ws_per_ip`.
    limit: u32,
    /// Touched only on WebSocket open and close.
    table: Mutex<Table>,
    /// The cluster-wide count; `None` with static discovery (no Redis at all): then the limit
    /// holds per balancer.
    cluster: Option<Arc<ClusterSlots>>,
    /// Addresses whose count changed, for the lease task to write; `None` without Redis.
    changed: Option<mpsc::UnboundedSender<IpAddr>>,
    /// Every metric.
    metrics: Metrics,
}

/// Why a handshake gets no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl WsLimiter {
    /// A limiter of `limit` tunnels per address, cluster-wide through `cluster` when given
    /// (then `changed` feeds its lease task).
    pub fn new(
        limit: u32,
        cluster: Option<(Arc<ClusterSlots>, mpsc::UnboundedSender<IpAddr>)>,
        metrics: Metrics,
    ) -> Self {
        let (cluster, changed) = cluster.unzip();
        Self {
            limit,
            table: Mutex::new(Table::default()),
            cluster,
            changed,
            metrics,
        }
    }

    /// Reserves one of `ip`'s slots, cluster-wide when Redis is reachable.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<WsSlot, Refused> {
        let held = self.change(ip, true);
        // From here on, dropping the slot (refusal, or the tunnel ending) gives it back.
        let slot = WsSlot {
            limiter: self.clone(),
            ip,
        };
        let local_limit = match &self.cluster {
            None => self.limit,
            Some(cluster) => match cluster.acquire(ip, held, self.limit).await {
                Some(true) => return Ok(slot),
                Some(false) => return Err(Refused),
                None => {
                    self.metrics.websocket_limit_fallbacks.inc();
                    cluster.fallback_limit(self.limit)
                }
            },
        };
        if held.count > local_limit {
            return Err(Refused);
        }
        Ok(slot)
    }

    /// What this balancer holds for `ip` now; count 0 (with the latest sequence) when nothing.
    pub fn held(&self, ip: IpAddr) -> Held {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.by_ip.get(&ip).copied().unwrap_or(Held {
            count: 0,
            seq: table.seq,
        })
    }

    /// Every address this balancer holds tunnels for, with its count.
    pub fn all_held(&self) -> Vec<(IpAddr, Held)> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.by_ip.iter().map(|(ip, held)| (*ip, *held)).collect()
    }

    /// Adds or removes one of `ip`'s tunnels; returns the new state.
    fn change(&self, ip: IpAddr, add: bool) -> Held {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.seq += 1;
        let seq = table.seq;
        let entry = table.by_ip.entry(ip).or_insert(Held { count: 0, seq });
        entry.seq = seq;
        if add {
            entry.count += 1;
        } else {
            entry.count = entry.count.saturating_sub(1);
        }
        let held = *entry;
        if held.count == 0 {
            table.by_ip.remove(&ip);
        }
        held
    }
}

/// One tunnel of one client address (or a handshake on its way to becoming one); given back
/// on drop.
#[derive(Debug)]
pub struct WsSlot {
    /// The limiter it came from.
    limiter: Arc<WsLimiter>,
    /// The client address.
    ip: IpAddr,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.limiter.change(self.ip, false);
        if let Some(changed) = &self.limiter.changed {
            // The lease task writes the new count; if it has stopped, the lease lapses.
            let _ = changed.send(self.ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_slots_are_limited_per_ip_and_released_on_drop() {
        let limiter = Arc::new(WsLimiter::new(2, None, Metrics::new()));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let a = limiter.acquire(ip).await.unwrap();
        let _b = limiter.acquire(ip).await.unwrap();
        assert_eq!(limiter.acquire(ip).await.unwrap_err(), Refused);
        assert_eq!(
            limiter.held(ip).count,
            2,
            "a refusal gives its reservation back"
        );
        assert!(limiter.acquire([10, 0, 0, 2].into()).await.is_ok());
        drop(a);
        assert!(limiter.acquire(ip).await.is_ok());
    }

    #[test]
    fn every_change_gets_a_newer_sequence_number() {
        let limiter = WsLimiter::new(2, None, Metrics::new());
        let ip: IpAddr = [10, 0, 0, 1].into();
        let first = limiter.change(ip, true);
        let second = limiter.change([10, 0, 0, 2].into(), true);
        let third = limiter.change(ip, false);
        assert!(first.seq < second.seq && second.seq < third.seq);
        assert_eq!(third.count, 0);
        assert!(limiter.all_held().iter().all(|(held, _)| *held != ip));
        assert_eq!(limiter.held(ip).seq, third.seq);
    }
}
