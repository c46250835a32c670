//! Nodes as the balancer sees them: [`Backend`] (identity: id, address, weight), [`NodeState`]
//! (everything that must outlive a change of the node set: live counts, health, breaker), and
//! [`Membership`], the current set that the control plane replaces and the workers read.
//!
//! Why the split: a membership change rebuilds each worker's strategies, but counters and open
//! WebSocket tunnels must not notice. So a node's [`NodeState`] is created once per node id and
//! address, shared by `Arc` between every snapshot, strategy and tunnel that refers to it, and
//! only its *presence* in the published set changes.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::{
    breaker::{Breaker, BreakerState},
    config::Settings,
    health::Health,
    metrics::Metrics,
};

/// A node's identity as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Node id (`X-Petmesh-Node`, metric label, hash-ring key).
    pub id: String,
    /// `host:port` of the node's HTTP API.
    pub addr: String,
    /// Relative capacity for `weighted-round-robin` and the hash ring (≥ 1).
    pub weight: u32,
}

/// A backend plus what discovery says about its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// Who and where.
    pub backend: Backend,
    /// The node announced it is shutting down: no new work.
    pub draining: bool,
    /// Failure domain from the registry entry (rack, zone); empty when unknown or static.
    pub zone: String,
}

/// Which kind of load a strategy balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Plain HTTP requests; load = requests in flight.
    Http,
    /// WebSocket tunnels; load = open tunnels and handshakes waiting for the node's answer.
    Ws,
}

/// Live per-node figures. The handles point into the metric families, so the same atomics
/// serve strategies, `/admin/nodes` and `/metrics`.
#[derive(Debug)]
pub struct NodeStats {
    /// HTTP requests sent and not yet finished (response body done or dropped).
    pub in_flight: IntGauge,
    /// Open WebSocket tunnels.
    pub ws_connections: IntGauge,
    /// WebSocket handshakes sent and not yet answered ([`HandshakeInFlight`]). Counted in the
    /// load: a node paces a reconnect storm's handshakes (`realtime.handshakes_per_second`),
    /// and if least-connections counted only open tunnels, every handshake of the storm would
    /// go to the node that had the fewest when it began.
    pub ws_handshakes: AtomicI64,
    /// Attempts sent to the node.
    pub requests: IntCounter,
    /// Failed attempts.
    pub errors: IntCounter,
    /// Time to response headers.
    pub latency: Histogram,
    /// Times a strategy picked this node first, `[http, ws]`.
    pub picks: [IntCounter; 2],
}

/// One node's state, shared by every snapshot, request and tunnel that refers to it; dropped
/// when the node has left and the last of those is gone.
#[derive(Debug)]
pub struct NodeState {
    /// Identity.
    pub backend: Backend,
    /// Failure domain as the node registered it (empty when unknown); shown by the console.
    /// Taken when the state is created: a node does not move between zones while it runs.
    pub zone: String,
    /// The resolved address connections go to.
    pub sock_addr: SocketAddr,
    /// Unique per state (never reused), keys the per-worker connection pools so a node that
    /// comes back at a new address never gets an old connection.
    pub key: u64,
    /// Set by discovery (`draining` status or event): no new work, existing work finishes.
    pub draining: AtomicBool,
    /// The active probes' verdict.
    pub health: Health,
    /// Passive outcome tracking.
    pub breaker: Breaker,
    /// Counts and latency.
    pub stats: NodeStats,
    /// The id as the `X-Petmesh-Node` value, built once.
    pub id_header: http::HeaderValue,
}

/// Source of [`NodeState::key`].
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

// === impl Backend ===

impl Backend {
    /// Parses `[id=]host:port[@weight]`; the id defaults to `host:port`.
    pub fn parse(item: &str) -> Result<Self, String> {
        let (id, rest) = match item.split_once('=') {
            Some((id, rest)) => (Some(id.trim()), rest.trim()),
            None => (None, item),
        };
        let (addr, weight) = match rest.rsplit_once('@') {
            Some((addr, weight)) => {
                let weight: u32 = weight
                    .parse()
                    .ok()
                    .filter(|w| *w >= 1)
                    .ok_or_else(|| format!("`{item}`: weight must be a whole number ≥ 1"))?;
                (addr, weight)
            }
            None => (rest, 1),
        };
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            return Err(format!("`{item}` is not `[id=]host:port[@weight]`"));
        }
        let id = match id {
            Some("") => return Err(format!("`{item}`: empty node id")),
            Some(id) => id.to_owned(),
            None => addr.to_owned(),
        };
        Ok(Self {
            id,
            addr: addr.to_owned(),
            weight,
        })
    }
}

// === impl NodeState ===

impl NodeState {
    /// A fresh state for the `found` node at `sock_addr`, with its metric series.
    pub fn new(
        found: Discovered,
        sock_addr: SocketAddr,
        settings: &Settings,
        metrics: &Metrics,
    ) -> Self {
        let Discovered {
            backend,
            draining,
            zone,
        } = found;
        let id = backend.id.as_str();
        let strategies = [
            strategy_label(settings, Traffic::Http),
            strategy_label(settings, Traffic::Ws),
        ];
        let stats = NodeStats {
            in_flight: metrics.upstream_in_flight.with_label_values(&[id]),
            ws_connections: metrics.websocket_connections.with_label_values(&[id]),
            ws_handshakes: AtomicI64::new(0),
            requests: metrics.upstream_requests.with_label_values(&[id]),
            errors: metrics.upstream_errors.with_label_values(&[id]),
            latency: metrics.upstream_latency.with_label_values(&[id]),
            picks: [
                metrics
                    .picks
                    .with_label_values(&[strategies[0], "http", id]),
                metrics.picks.with_label_values(&[strategies[1], "ws", id]),
            ],
        };
        let breaker = Breaker::new(
            settings.breaker.consecutive_failures,
            Duration::from_millis(settings.breaker.backoff_initial_ms),
            Duration::from_millis(settings.breaker.backoff_max_ms),
            id,
            metrics.breaker_transitions.clone(),
        );
        for healthy in ["true", "false"] {
            metrics.health_transitions.with_label_values(&[id, healthy]);
        }
        let id_header = http::HeaderValue::from_str(id)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-node-id"));
        Self {
            id_header,
            backend,
            zone,
            sock_addr,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            draining: AtomicBool::new(draining),
            health: Health::new(),
            breaker,
            stats,
        }
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        &self.backend.id
    }

    /// Whether the node was announced as draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the node may get new work outside panic mode: not draining, healthy, breaker
    /// not open.
    pub fn is_eligible(&self) -> bool {
        !self.is_draining() && self.health.is_healthy() && self.breaker.permits()
    }

    /// A connect to the node failed (`reason`): marks it unhealthy at once, until the probes
    /// see it ready again (why: [`crate::health`]). Logs and counts the flip.
    pub fn mark_unreachable(&self, metrics: &Metrics, reason: &dyn std::fmt::Display) {
        if self.health.mark_down() {
            tracing::warn!(node = %self.id(), reason = %reason, "node unhealthy: connect failed");
            metrics
                .health_transitions
                .with_label_values(&[self.id(), "false"])
                .inc();
        }
    }

    /// Whether the node currently looks unhealthy (probe verdict or open breaker).
    pub fn looks_unhealthy(&self) -> bool {
        !self.health.is_healthy() || self.breaker.state() == BreakerState::Open
    }

    /// The load a strategy balances for `traffic`.
    pub fn load(&self, traffic: Traffic) -> i64 {
        match traffic {
            Traffic::Http => self.stats.in_flight.get(),
            Traffic::Ws => {
                self.stats.ws_connections.get() + self.stats.ws_handshakes.load(Ordering::Relaxed)
            }
        }
    }

    /// Nothing is flowing through this node any more.
    pub fn is_idle(&self) -> bool {
        self.stats.in_flight.get() == 0 && self.stats.ws_connections.get() == 0
    }
}

/// The `strategy` label value for `traffic`.
pub fn strategy_label(settings: &Settings, traffic: Traffic) -> &'static str {
    let name = match traffic {
        Traffic::Http => settings.strategy.http,
        Traffic::Ws => settings.strategy.ws,
    };
    crate::selection::strategy_name(name)
}

/// The current node set, replaced by the control plane (discovery) and read by the workers.
///
/// Workers don't take the lock per request: each keeps its own snapshot and compares
/// [`Membership::generation`] (one relaxed atomic load) to see whether to rebuild it.
#[derive(Debug, Default)]
pub struct Membership {
    /// Bumped after every change of `published`.
    generation: AtomicU64,
    /// The nodes that get traffic, sorted by id. Written only by the control plane.
    published: RwLock<Arc<[Arc<NodeState>]>>,
    /// Every state created and not yet forgotten: the published ones plus departed nodes whose
    /// requests or tunnels are still open (their metric series are kept until they finish).
    all: Mutex<BTreeMap<u64, Arc<NodeState>>>,
}

/// What [`Membership::update`] changed, for logs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Ids of nodes that joined (or came back at a new address).
    pub joined: Vec<String>,
    /// Ids of nodes that left.
    pub left: Vec<String>,
    /// Ids of nodes whose draining flag flipped on.
    pub draining: Vec<String>,
}

impl MembershipChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty() && self.draining.is_empty()
    }
}

// === impl Membership ===

impl Membership {
    /// The generation of the published set.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The published set.
    pub fn current(&self) -> Arc<[Arc<NodeState>]> {
        self.published
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the set with `nodes` (resolved addresses given), keeping the state of every
    /// node whose id, address and weight are unchanged.
    pub fn update(
        &self,
        nodes: Vec<(Discovered, SocketAddr)>,
        settings: &Settings,
        metrics: &Metrics,
    ) -> MembershipChange {
        let current = self.current();
        let mut change = MembershipChange::default();
        let mut next: Vec<Arc<NodeState>> = Vec::with_capacity(nodes.len());
        for (found, sock_addr) in nodes {
            let existing = current
                .iter()
                .find(|s| s.backend == found.backend && s.sock_addr == sock_addr);
            match existing {
                Some(state) => {
                    if found.draining && !state.draining.swap(true, Ordering::Relaxed) {
                        change.draining.push(state.id().to_owned());
                    } else if !found.draining {
                        state.draining.store(false, Ordering::Relaxed);
                    }
                    next.push(state.clone());
                }
                None => {
                    change.joined.push(found.backend.id.clone());
                    let state = Arc::new(NodeState::new(found, sock_addr, settings, metrics));
                    self.all
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(state.key, state.clone());
                    next.push(state);
                }
            }
        }
        next.sort_by(|a, b| a.backend.id.cmp(&b.backend.id));
        next.dedup_by(|a, b| a.backend.id == b.backend.id);
        for old in current.iter() {
            if !next.iter().any(|n| n.key == old.key) && !change.joined.contains(&old.backend.id) {
                change.left.push(old.id().to_owned());
            }
        }
        let membership_changed = next.len() != current.len()
            || next.iter().zip(current.iter()).any(|(a, b)| a.key != b.key);
        if membership_changed {
            *self.published.write().unwrap_or_else(|e| e.into_inner()) = next.into();
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        change
    }

    /// Marks node `id` draining at once (a `draining` event); returns whether it was known.
    pub fn set_draining(&self, id: &str) -> bool {
        match self.current().iter().find(|n| n.id() == id) {
            Some(node) => {
                node.draining.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Forgets departed nodes that nothing flows through any more, returning their ids (the
    /// caller removes their metric series).
    pub fn collect_departed(&self) -> Vec<String> {
        let published = self.current();
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<u64> = all
            .iter()
            .filter(|(key, state)| {
                !published.iter().any(|p| p.key == **key)
                    && state.is_idle()
                    && !published.iter().any(|p| p.id() == state.id())
            })
            .map(|(key, _)| *key)
            .collect();
        gone.into_iter()
            .filter_map(|key| all.remove(&key))
            .map(|state| state.id().to_owned())
            .collect()
    }
}

/// A WebSocket handshake waiting for a node's answer, counted in its load while it lives.
#[derive(Debug)]
pub struct HandshakeInFlight<'a>(&'a NodeStats);

impl<'a> HandshakeInFlight<'a> {
    /// Counts a handshake sent to the node of `stats` until the guard is dropped.
    pub fn start(stats: &'a NodeStats) -> Self {
        stats.ws_handshakes.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for HandshakeInFlight<'_> {
    fn drop(&mut self) {
        self.0.ws_handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovered(id: &str, port: u16) -> (Discovered, SocketAddr) {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        (
            Discovered {
                backend: Backend {
                    id: id.into(),
                    addr: addr.to_string(),
                    weight: 1,
                },
                draining: false,
                zone: String::new(),
            },
            addr,
        )
    }

    #[test]
    fn backend_parse_accepts_the_documented_forms() {
        assert_eq!(Backend::parse("h:1").unwrap().id, "h:1");
        let b = Backend::parse("n1=10.0.0.1:80@4").unwrap();
        assert_eq!(
            (b.id.as_str(), b.addr.as_str(), b.weight),
            ("n1", "10.0.0.1:80", 4)
        );
        assert!(Backend::parse("nohost").is_err());
        assert!(Backend::parse("h:0").is_err());
        assert!(Backend::parse("h:1@0").is_err());
        assert!(Backend::parse("=h:1").is_err());
    }

    #[test]
    fn node_state_survives_a_membership_change() {
        let settings = Settings::default();
        let metrics = Metrics::new();
        let membership = Membership::default();
        membership.update(
            vec![discovered("a", 1), discovered("b", 2)],
            &settings,
            &metrics,
        );
        let a = membership.current()[0].clone();
        a.stats.ws_connections.inc();
        let generation = membership.generation();

        let change = membership.update(
            vec![discovered("a", 1), discovered("c", 3)],
            &settings,
            &metrics,
        );
        assert_eq!(change.joined, ["c"]);
        assert_eq!(change.left, ["b"]);
        assert!(membership.generation() > generation);
        let a_again = membership.current()[0].clone();
        assert!(Arc::ptr_eq(&a, &a_again), "same state object");
        assert_eq!(a_again.stats.ws_connections.get(), 1);
        assert_eq!(membership.collect_departed(), ["b"]);
    }

    #[test]
    fn unchanged_set_keeps_the_generation_and_draining_is_immediate() {
        let settings = Settings::default();
        let metrics = Metrics::new();
        let membership = Membership::default();
        membership.update(vec![discovered("a", 1)], &settings, &metrics);
        let generation = membership.generation();
        let change = membership.update(vec![discovered("a", 1)], &settings, &metrics);
        assert!(change.is_empty());
        assert_eq!(membership.generation(), generation);
        assert!(membership.set_draining("a"));
        assert!(!membership.current()[0].is_eligible());
    }
}
