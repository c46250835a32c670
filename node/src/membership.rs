//! Cluster membership, node side: this node's entry in the Redis registry.
//!
//! The protocol is defined once, in [`petmesh_shared::registry`]; this module is the node's half:
//! 1. On start, write the [`NodeInfo`] entry with a TTL of [`NODE_TTL_SECS`], add the id to the
//!    node set, and publish `joined` on the membership channel.
//! 2. Every [`HEARTBEAT_INTERVAL_MS`], rewrite the entry with fresh load figures (TTL renewed).
//! 3. On shutdown, rewrite it with status `draining` and publish `draining`; keep heartbeating
//!    while in-flight work finishes.
//! 4. Finally delete the entry, remove the id from the set and publish `left`.
//!
//! [`Registration`] is the background task that does all the writing; [`Membership`] is the
//! handle `startup` drives it with. The task is the only writer of this node's entry, and it
//! writes sequentially, so a heartbeat can never resurrect an entry that deregistration has
//! just deleted.
//!
//! Redis being unreachable never stops the node from serving. The task keeps retrying once per
//! interval, warns when the outage starts and then at most every [`OUTAGE_LOG_EVERY`] (not
//! every second), counts failures in `petmesh_node_registry_heartbeat_failures_total`, and
//! announces the node again when Redis returns and its entry had expired meanwhile, so that
//! balancers take it back at once rather than on their next resync.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use petmesh_shared::registry::{
    MembershipEvent, MembershipKind, NodeInfo, NodeStatus, RedisKeys, HEARTBEAT_INTERVAL_MS,
    NODE_TTL_SECS,
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    config::{Redis, Settings},
    metrics::Metrics,
    state::AppState,
};

/// After the first warning of a registry outage, how long until the next one.
pub const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Where the node is in its life, as `startup` tells the registration task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving: heartbeat with status `ready`.
    Ready,
    /// Shutting down: heartbeat with status `draining`.
    Draining,
    /// Done: deregister and stop.
    Leaving,
}

/// The registration task: owns this node's registry entry from start to exit.
pub struct Registration {
    /// The handlers' Redis pool; the registry adds about one write per second to it.
    redis: Redis,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// The entry as last written. Id, address, version, weight, zone and start time are fixed;
    /// status, load figures and `updated_at_ms` are refreshed on every beat.
    info: NodeInfo,
    /// Source of the load figures, and where failed writes are counted.
    metrics: Arc<Metrics>,
    /// Bound on one registry write (`redis.timeout_ms`), so a hung Redis cannot stall a beat.
    timeout: Duration,
    /// The status of the last successful announcement (`None` before the first). The task is
    /// the only writer; [`Membership::drain`] watches it.
    announced: watch::Sender<Option<NodeStatus>>,
    /// Rate limit of the outage warnings.
    outage: OutageLog,
}

/// The handle `startup` keeps to drive the [`Registration`] task.
pub struct Membership {
    /// The phase the task should be in. Dropping the handle closes the channel, which makes the
    /// task deregister and stop too, so no path out of `startup` leaves a live entry behind.
    phase: watch::Sender<Phase>,
    /// The status the task last announced.
    announced: watch::Receiver<Option<NodeStatus>>,
    /// The task itself; awaited (boundedly) by [`Membership::leave`].
    task: JoinHandle<()>,
    /// The task's bound on one registry write.
    timeout: Duration,
}

/// Counts consecutive registry failures and decides which of them are worth a log line.
#[derive(Debug, Default)]
struct OutageLog {
    /// Failures since the last success.
    failures: u64,
    /// When the last warning of this outage was logged.
    last_warned: Option<Instant>,
}

// === impl Registration ===

impl Registration {
    /// The task for this node, registered as reachable at `http_addr` (see
    /// [`crate::config::ClusterSettings::advertised_addr`]). Nothing is written until
    /// [`Membership::spawn`] runs it.
    pub fn new(settings: &Settings, state: &AppState, http_addr: String) -> Self {
        let now = now_ms();
        let info = NodeInfo {
            id: state.node_id.to_string(),
            http_addr,
            version: env!("CARGO_PKG_VERSION").into(),
            weight: settings.cluster.weight,
            zone: settings.cluster.zone.clone(),
            status: NodeStatus::Ready,
            started_at_ms: now,
            updated_at_ms: now,
            in_flight: 0,
            ws_connections: 0,
        };
        Self {
            redis: state.redis.clone(),
            keys: state.keys.clone(),
            info,
            metrics: Arc::clone(&state.metrics),
            timeout: Duration::from_millis(settings.redis.timeout_ms),
            announced: watch::Sender::new(None),
            outage: OutageLog::default(),
        }
    }

    /// The entry this task writes (as of its last beat).
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Heartbeats until `phase` says [`Phase::Leaving`] (or its sender is dropped), then
    /// deregisters. Steps 1–4 of the module doc.
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        let interval = Duration::from_millis(HEARTBEAT_INTERVAL_MS);
        loop {
            let status = match *phase.borrow_and_update() {
                Phase::Ready => NodeStatus::Ready,
                Phase::Draining => NodeStatus::Draining,
                Phase::Leaving => break,
            };
            self.beat(status).await;
            // A phase change cuts the wait short, so `draining` is announced at once.
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        self.deregister().await;
    }

    /// One heartbeat (steps 1–3): writes the entry and announces a change of status.
    async fn beat(&mut self, status: NodeStatus) {
        self.info.status = status;
        self.refresh_load();
        match tokio::time::timeout(self.timeout, self.write()).await {
            Ok(Ok(())) => {
                if let Some(failures) = self.outage.succeeded() {
                    tracing::info!(failures, "registry reachable again, heartbeat resumed");
                }
            }
            Ok(Err(error)) => self.failed(&error),
            Err(_) => self.failed(&anyhow::anyhow!(
                "no answer from Redis within {} ms",
                self.timeout.as_millis()
            )),
        }
    }

    /// Writes the entry and adds the id to the set, then publishes an announcement when one is
    /// due (see [`announcement`]).
    async fn write(&mut self) -> anyhow::Result<()> {
        let key = self.keys.node(&self.info.id);
        let entry = serde_json::to_string(&self.info).context("encoding the registry entry")?;
        let mut conn = self.redis.clone();
        let (existed,): (bool,) = redis::pipe()
            .atomic()
            .exists(&key)
            .set_ex(&key, entry, NODE_TTL_SECS)
            .ignore()
            .sadd(self.keys.nodes(), &self.info.id)
            .ignore()
            .query_async(&mut conn)
            .await
            .context("writing the registry entry")?;
        let previous = *self.announced.borrow();
        if let Some(kind) = announcement(previous, existed, self.info.status) {
            let event = MembershipEvent {
                kind,
                node: self.info.clone(),
            };
            let message = serde_json::to_string(&event).context("encoding the announcement")?;
            redis::cmd("PUBLISH")
                .arg(self.keys.membership_channel())
                .arg(message)
                .query_async::<()>(&mut conn)
                .await
                .with_context(|| format!("publishing `{}`", kind_name(kind)))?;
            self.announced.send_replace(Some(self.info.status));
            tracing::info!(
                event = kind_name(kind),
                http_addr = %self.info.http_addr,
                again = previous == Some(self.info.status),
                "announced cluster membership"
            );
        }
        Ok(())
    }

    /// Step 4: deletes the entry, removes the id from the set and publishes `left`, all or
    /// nothing. On failure the entry still expires within [`NODE_TTL_SECS`].
    async fn deregister(&mut self) {
        self.refresh_load();
        let event = MembershipEvent {
            kind: MembershipKind::Left,
            node: self.info.clone(),
        };
        let result = tokio::time::timeout(self.timeout, async {
            let message = serde_json::to_string(&event).context("encoding the announcement")?;
            let mut conn = self.redis.clone();
            redis::pipe()
                .atomic()
                .del(self.keys.node(&self.info.id))
                .ignore()
                .srem(self.keys.nodes(), &self.info.id)
                .ignore()
                .publish(self.keys.membership_channel(), message)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .context("deleting the registry entry")
        })
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "no answer from Redis within {} ms",
                self.timeout.as_millis()
            ))
        });
        match result {
            Ok(()) => tracing::info!("deregistered from the cluster"),
            Err(error) => {
                self.metrics.registry_failures.inc();
                tracing::warn!(
                    error = format!("{error:#}"),
                    "could not deregister; the registry entry expires within {NODE_TTL_SECS} s"
                );
            }
        }
    }

    fn refresh_load(&mut self) {
        self.info.updated_at_ms = now_ms();
        self.info.in_flight = u64::try_from(self.metrics.http_in_flight.get()).unwrap_or(0);
        self.info.ws_connections = u64::try_from(self.metrics.ws_connections.get()).unwrap_or(0);
    }

    fn failed(&mut self, error: &anyhow::Error) {
        self.metrics.registry_failures.inc();
        if let Some(failures) = self.outage.failed(Instant::now()) {
            tracing::warn!(
                error = format!("{error:#}"),
                failures,
                "registry heartbeat failed; still serving, retrying every {HEARTBEAT_INTERVAL_MS} ms \
                 (next warning in {} s unless it recovers)",
                OUTAGE_LOG_EVERY.as_secs()
            );
        }
    }
}

/// What to publish after writing an entry with `status`, given the status last announced and
/// whether the entry existed before the write: a change of status is always announced, and so
/// is an entry that had expired (Redis was unreachable for longer than the TTL), because
/// readers treat an expired entry as a departed node.
fn announcement(
    previous: Option<NodeStatus>,
    existed: bool,
    status: NodeStatus,
) -> Option<MembershipKind> {
    if previous == Some(status) && existed {
        return None;
    }
    Some(match status {
        NodeStatus::Ready => MembershipKind::Joined,
        NodeStatus::Draining => MembershipKind::Draining,
    })
}

/// The wire name of `kind` (`joined`, ...), for logs.
fn kind_name(kind: MembershipKind) -> &'static str {
    match kind {
        MembershipKind::Joined => "joined",
        MembershipKind::Draining => "draining",
        MembershipKind::Left => "left",
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// === impl Membership ===

impl Membership {
    /// Starts `registration` on the runtime: the node registers (and announces `joined`) at once.
    pub fn spawn(registration: Registration) -> Self {
        let (phase, phase_rx) = watch::channel(Phase::Ready);
        let announced = registration.announced.subscribe();
        let timeout = registration.timeout;
        let task = tokio::spawn(registration.run(phase_rx));
        Self {
            phase,
            announced,
            task,
            timeout,
        }
    }

    /// Turns the entry `draining` and waits until that has been announced, or until two
    /// Redis timeouts have passed (a beat in progress, then the draining one). Returns whether
    /// it was announced; when it wasn't, balancers still notice through `/health/ready`.
    pub async fn drain(&mut self) -> bool {
        self.phase.send_replace(Phase::Draining);
        let announced = self
            .announced
            .wait_for(|status| *status == Some(NodeStatus::Draining));
        let done = matches!(
            tokio::time::timeout(self.timeout * 2, announced).await,
            Ok(Ok(_))
        );
        if !done {
            tracing::warn!(
                "could not announce draining in time; balancers will see /health/ready turn 503"
            );
        }
        done
    }

    /// Deregisters (step 4) and waits for the task to finish, at most two Redis timeouts.
    pub async fn leave(self) {
        self.phase.send_replace(Phase::Leaving);
        let mut task = self.task;
        match tokio::time::timeout(self.timeout * 2, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the registration task failed"),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    "deregistration did not finish in time; the registry entry expires within \
                     {NODE_TTL_SECS} s"
                );
            }
        }
    }
}

// === impl OutageLog ===

impl OutageLog {
    /// Records a failure at `now`; returns the failure count when it deserves a warning (the
    /// first of an outage, then one per [`OUTAGE_LOG_EVERY`]).
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        let due = self
            .last_warned
            .is_none_or(|at| now.duration_since(at) >= OUTAGE_LOG_EVERY);
        if due {
            self.last_warned = Some(now);
            Some(self.failures)
        } else {
            None
        }
    }

    /// Records a success; returns how many failures it ends, if any.
    fn succeeded(&mut self) -> Option<u64> {
        self.last_warned = None;
        Some(std::mem::take(&mut self.failures)).filter(|&failures| failures > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_announces_joined_and_steady_beats_announce_nothing() {
        assert_eq!(
            announcement(None, false, NodeStatus::Ready),
            Some(MembershipKind::Joined)
        );
        // A leftover entry of an earlier run with the same id: still a join.
        assert_eq!(
            announcement(None, true, NodeStatus::Ready),
            Some(MembershipKind::Joined)
        );
        assert_eq!(
            announcement(Some(NodeStatus::Ready), true, NodeStatus::Ready),
            None
        );
    }

    #[test]
    fn draining_is_announced_once() {
        assert_eq!(
            announcement(Some(NodeStatus::Ready), true, NodeStatus::Draining),
            Some(MembershipKind::Draining)
        );
        assert_eq!(
            announcement(Some(NodeStatus::Draining), true, NodeStatus::Draining),
            None
        );
    }

    #[test]
    fn an_expired_entry_is_announced_again_with_its_status() {
        assert_eq!(
            announcement(Some(NodeStatus::Ready), false, NodeStatus::Ready),
            Some(MembershipKind::Joined)
        );
        assert_eq!(
            announcement(Some(NodeStatus::Draining), false, NodeStatus::Draining),
            Some(MembershipKind::Draining)
        );
    }

    #[test]
    fn an_outage_is_logged_when_it_starts_then_rarely_and_its_end_once() {
        let mut log = OutageLog::default();
        let start = Instant::now();
        assert_eq!(log.succeeded(), None, "no outage, nothing to report");
        assert_eq!(log.failed(start), Some(1));
        for second in 1..30 {
            assert_eq!(log.failed(start + Duration::from_secs(second)), None);
        }
        assert_eq!(log.failed(start + OUTAGE_LOG_EVERY), Some(31));
        assert_eq!(
            log.failed(start + OUTAGE_LOG_EVERY + Duration::from_secs(1)),
            None
        );
        assert_eq!(log.succeeded(), Some(32));
        assert_eq!(log.succeeded(), None);
        // A new outage warns at once again.
        assert_eq!(log.failed(start + Duration::from_secs(100)), Some(1));
    }
}
