//! The control plane: two loops on the caller's runtime, apart from the workers.
//!
//! - Discovery: applies membership events as they arrive (a `joined` node is routable as soon
//!   as the event is read, a `draining` one gets no new work at once, a `left` one is removed)
//!   and re-reads the whole registry every `discovery.resync_interval_ms` to catch whatever an
//!   event missed (expired entries, a lost subscription). A failed round keeps the last known
//!   set, is logged and counted; the subscription is retried at the next resync.
//! - Health: probes every node every `health.interval_ms` (concurrently), flips verdicts after
//!   the thresholds, watches the panic threshold, and forgets departed nodes once idle.
//!
//! Both report what changed (joined, draining, left, healthy, unhealthy) to the cluster
//! console's event list ([`crate::console::Console::record`]).
//!
//! Two loops rather than one so that a slow probe round can never delay a membership event.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{stream::BoxStream, StreamExt as _};
use petmesh_shared::registry::{MembershipEvent, MembershipKind};
use tokio::sync::watch;

use crate::{
    backend::{strategy_label, Discovered, Traffic},
    console::EventKind,
    discovery::{self, ServiceDiscovery},
    health::HttpHealthCheck,
    state::BalancerState,
};

/// Reads the whole node set once and applies it; failures keep the last known set.
pub async fn refresh<D: ServiceDiscovery>(state: &BalancerState, discovery: &D) {
    match discovery.discover().await {
        Ok(found) => {
            state.metrics.discovery_up.set(1);
            apply(state, found).await
        }
        Err(err) => {
            state.metrics.discovery_failures.inc();
            state.metrics.discovery_up.set(0);
            tracing::warn!(
                error = format!("{err:#}"),
                "discovery failed; keeping the last known nodes"
            );
        }
    }
}

/// Runs the discovery loop until `shutdown` turns true, starting from `events` (opened by
/// [`subscribe`] *before* the first [`refresh`], so no change between the two is missed).
pub async fn run_discovery<D: ServiceDiscovery>(
    state: Arc<BalancerState>,
    discovery: D,
    mut events: Option<BoxStream<'static, MembershipEvent>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let resync = Duration::from_millis(state.settings.discovery.resync_interval_ms);
    let mut next_resync = tokio::time::Instant::now() + resync;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_resync) => {
                next_resync += resync;
                if events.is_none() {
                    events = subscribe(&state, &discovery).await;
                }
                refresh(&state, &discovery).await;
            }
            event = next_event(&mut events) => match event {
                Some(event) => apply_event(&state, event).await,
                None => {
                    state.metrics.discovery_failures.inc();
                    state.metrics.discovery_up.set(0);
                    tracing::warn!("membership event stream ended; resubscribing at the next resync");
                    events = None;
                }
            },
            _ = crate::state::stopped(&mut shutdown) => return,
        }
    }
}

/// Opens the event stream; `None` (logged) when that fails or the source has none.
pub async fn subscribe<D: ServiceDiscovery>(
    state: &BalancerState,
    discovery: &D,
) -> Option<BoxStream<'static, MembershipEvent>> {
    match discovery.watch().await {
        Ok(events) => events,
        Err(err) => {
            state.metrics.discovery_failures.inc();
            state.metrics.discovery_up.set(0);
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot subscribe to membership events"
            );
            None
        }
    }
}

/// The next event, or never when there is no stream.
async fn next_event(
    events: &mut Option<BoxStream<'static, MembershipEvent>>,
) -> Option<MembershipEvent> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Applies one membership event on top of the current set.
async fn apply_event(state: &BalancerState, event: MembershipEvent) {
    let id = event.node.id.clone();
    tracing::debug!(node = %id, kind = ?event.kind, "membership event");
    if event.kind == MembershipKind::Draining {
        let was_draining = state
            .membership
            .current()
            .iter()
            .any(|n| n.id() == id && n.is_draining());
        if state.membership.set_draining(&id) {
            if !was_draining {
                state.console.record(&id, EventKind::Draining, None);
            }
            tracing::info!(node = %id, "node draining: no new work");
            return;
        }
    }
    if event.kind == MembershipKind::Left {
        // Announced: a graceful departure, even if its `draining` announcement was missed.
        state.membership.set_draining(&id);
    }
    let mut found: Vec<Discovered> = state
        .membership
        .current()
        .iter()
        .filter(|n| n.id() != id)
        .map(|n| Discovered {
            backend: n.backend.clone(),
            draining: n.is_draining(),
            zone: n.zone.clone(),
        })
        .collect();
    if event.kind != MembershipKind::Left {
        let mut node = discovery::discovered(&event.node);
        node.draining |= event.kind == MembershipKind::Draining;
        found.push(node);
    }
    apply(state, found).await;
}

/// Resolves addresses and replaces the membership, logging what changed.
async fn apply(state: &BalancerState, found: Vec<Discovered>) {
    let mut resolved = Vec::with_capacity(found.len());
    let current = state.membership.current();
    for node in found {
        let known = current
            .iter()
            .find(|n| n.backend == node.backend)
            .map(|n| n.sock_addr);
        match known {
            Some(addr) => resolved.push((node, addr)),
            None => match resolve(&node.backend.addr).await {
                Some(addr) => resolved.push((node, addr)),
                None => {
                    state.metrics.discovery_failures.inc();
                    tracing::warn!(node = %node.backend.id, addr = %node.backend.addr, "cannot resolve node address; skipping it");
                }
            },
        }
    }
    let change = state
        .membership
        .update(resolved, &state.settings, &state.metrics);
    let console = &state.console;
    for id in &change.joined {
        console.record(id, EventKind::Joined, None);
        tracing::info!(node = %id, "node joined");
    }
    for id in &change.left {
        let drained = current.iter().any(|n| n.id() == id && n.is_draining());
        if drained {
            console.record(id, EventKind::Left, None);
            tracing::info!(node = %id, "node left");
        } else {
            console.record(id, EventKind::Left, Some("lost: gone without draining"));
            state.metrics.nodes_lost.inc();
            tracing::warn!(node = %id, "node lost: it left the registry without draining (crashed, killed or cut off)");
        }
    }
    for id in &change.draining {
        console.record(id, EventKind::Draining, None);
        tracing::info!(node = %id, "node draining: no new work");
    }
}

async fn resolve(addr: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Runs the health loop until `shutdown` turns true.
pub async fn run_health(state: Arc<BalancerState>, mut shutdown: watch::Receiver<bool>) {
    let settings = &state.settings.health;
    let check = HttpHealthCheck::new(
        settings.path.clone(),
        Duration::from_millis(settings.timeout_ms),
    );
    let interval = Duration::from_millis(settings.interval_ms);
    let mut panicking = false;
    loop {
        let nodes = state.membership.current();
        let started: Vec<u64> = nodes.iter().map(|n| n.health.probe_started()).collect();
        let results = futures_util::future::join_all(
            nodes
                .iter()
                .map(|node| check.check(&node.backend.addr, node.sock_addr)),
        )
        .await;
        for ((node, result), started) in nodes.iter().zip(results).zip(started) {
            let flipped = node.health.observe(
                started,
                result.is_ok(),
                settings.healthy_threshold,
                settings.unhealthy_threshold,
            );
            match (flipped, result) {
                (Some(true), _) => {
                    tracing::info!(node = %node.id(), "node healthy again");
                }
                (Some(false), Err(reason)) => {
                    tracing::warn!(node = %node.id(), reason = %reason, "node unhealthy");
                }
                _ => {}
            }
            if let Some(healthy) = flipped {
                state
                    .metrics
                    .health_transitions
                    .with_label_values(&[node.id(), if healthy { "true" } else { "false" }])
                    .inc();
            }
        }
        // Every verdict change since the last round, the workers' passive mark-downs included.
        for node in nodes.iter() {
            if let Some(healthy) = node.health.take_change() {
                let kind = if healthy {
                    EventKind::Healthy
                } else {
                    EventKind::Unhealthy
                };
                state.console.record(node.id(), kind, None);
            }
        }
        panicking = update_gauges(&state, panicking);
        let strategies = [
            (strategy_label(&state.settings, Traffic::Http), "http"),
            (strategy_label(&state.settings, Traffic::Ws), "ws"),
        ];
        for id in state.membership.collect_departed() {
            state.metrics.forget_node(&id, &strategies);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::state::stopped(&mut shutdown) => return,
        }
    }
}

/// Refreshes the node-state gauges and the panic flag; logs when panic mode starts or ends.
fn update_gauges(state: &BalancerState, was_panicking: bool) -> bool {
    let nodes = state.membership.current();
    let draining = nodes.iter().filter(|n| n.is_draining()).count();
    let enabled = nodes.len() - draining;
    let unhealthy = nodes
        .iter()
        .filter(|n| !n.is_draining() && n.looks_unhealthy())
        .count();
    let metrics = &state.metrics;
    metrics.observe_nodes(&nodes);
    metrics
        .nodes
        .with_label_values(&["ready"])
        .set((enabled - unhealthy) as i64);
    metrics
        .nodes
        .with_label_values(&["unhealthy"])
        .set(unhealthy as i64);
    metrics
        .nodes
        .with_label_values(&["draining"])
        .set(draining as i64);
    let healthy = (enabled - unhealthy) as f64;
    let panicking = enabled > 0 && healthy < state.settings.panic_threshold * enabled as f64;
    metrics.panic_mode.set(i64::from(panicking));
    if panicking && !was_panicking {
        tracing::error!(
            healthy = enabled - unhealthy,
            enabled,
            "panic threshold crossed: routing to all nodes regardless of health"
        );
    } else if !panicking && was_panicking {
        tracing::info!(healthy = enabled - unhealthy, enabled, "panic mode over");
    }
    panicking
}
