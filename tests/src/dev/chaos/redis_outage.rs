//! `redis-outage`: the cluster's Redis killed under load, left down for 10 s, then started
//! again on the same port, empty (no persistence: registry, topic offsets, caches and
//! revocations are gone, as after a crash).
//!
//! 1. Start a cluster with a Redis of its own (3 nodes, the balancer), prepare users and
//!    pets, connect subscribers of `pets`, start two loads through the balancer: reads
//!    (browse and get, open loop) and keyed orders (open loop, so `pet:updated` events keep
//!    coming), and one probe subscriber that notes when each event arrives (reconnecting
//!    through the balancer whenever its connection ends).
//! 2. At a fixed point, kill Redis; 10 s later start it again.
//! 3. Every 100 ms after the restart, look at the registry in Redis (every node's entry and
//!    its id in the set), every node's `/health/ready` (200 only when PostgreSQL and Redis
//!    answer) and every node's pet cache hits (`/metrics`: more than at the restart, so the
//!    cache is filled and read again), until all three hold; the probe says when broadcasts
//!    came back.
//!
//! PASS: the reads answered during the outage (the seconds of the load's timeline that
//! overlap it) failed at most 1 % of the time, and the registry, every node's readiness, the
//! caches and the broadcasts were back within 30 s of the restart. The orders, the
//! subscribers' losses and resyncs across the restart (the topic's offsets start over in a
//! new epoch) and every timing are reported.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::node_kill::last_offset;
use super::{mixed_load_setup, ms, pets_subscribers, three_node_cluster_from, Findings};
use crate::client::ApiClient;
use crate::cluster::TestCluster;
use crate::load::{HttpLoad, LoadOptions, RetryPolicy, RunningLoad};
use crate::ws::WsClient;

/// The numbers of one form of the experiment.
struct Plan {
    /// Reads per second.
    reads: f64,
    /// Orders per second.
    orders: f64,
    duration: Duration,
    /// When Redis is killed.
    stop_at: Duration,
    subscribers: usize,
    users: usize,
}

const FULL: Plan = Plan {
    reads: 150.0,
    orders: 15.0,
    duration: Duration::from_secs(60),
    stop_at: Duration::from_secs(15),
    subscribers: 60,
    users: 20,
};

const SHORT: Plan = Plan {
    reads: 100.0,
    orders: 10.0,
    duration: Duration::from_secs(35),
    stop_at: Duration::from_secs(5),
    subscribers: 20,
    users: 10,
};

/// How long Redis stays down.
const OUTAGE: Duration = Duration::from_secs(10);

/// Bound on everything being healthy again after the restart (the PASS bound too).
const RECOVERY: Duration = Duration::from_secs(30);

/// How often the registry and the nodes' readiness are looked at after the restart.
const POLL: Duration = Duration::from_millis(100);

/// Bound on the outbox draining and on the subscribers catching up at the end.
const SETTLE: Duration = Duration::from_secs(30);

/// Failed reads allowed during the outage, per ten thousand (1 %).
const MAX_FAILED_PER_10K: u64 = 100;

pub(super) async fn run(short: bool) -> anyhow::Result<Findings> {
    let plan = if short { SHORT } else { FULL };
    let mut cluster = three_node_cluster_from(TestCluster::builder().own_redis(), &[]).await?;
    let setup = mixed_load_setup(
        &cluster.balancer().base_url(),
        cluster.admin_password(),
        plan.users,
    )
    .await?;
    let ws = pets_subscribers(&setup, plan.subscribers).await?;
    let probe = Probe::start(setup.base_url.clone(), setup.users[0].token.clone());
    let retry = RetryPolicy::default();
    let timeout = Duration::from_secs(10);
    let options = |rate: f64, mix: &str, progress: bool| -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions {
            rate: Some(rate),
            connections: 256,
            duration: plan.duration,
            mix: mix.parse()?,
            timeout,
            retry,
            progress,
        })
    };
    let reads = RunningLoad::start(
        HttpLoad::new(Arc::clone(&setup), timeout, 256, retry)?,
        options(plan.reads, "browse=50,get=50", true)?,
        Some(ws),
    );
    let orders = RunningLoad::start(
        HttpLoad::new(Arc::clone(&setup), timeout, 64, retry)?,
        options(plan.orders, "order=1", false)?,
        None,
    );
    let started = reads.recorder().started();

    // The outage comes at a fixed point of the run's timeline, and lasts a fixed time: the
    // failure is the schedule, not something to wait for.
    tokio::time::sleep_until((started + plan.stop_at).into()).await;
    cluster.own_redis().stop();
    let stopped_at = started.elapsed();
    println!("chaos: Redis killed at {:.1} s", stopped_at.as_secs_f64());
    tokio::time::sleep(OUTAGE).await;
    cluster.own_redis().restart().await?;
    let restarted = Instant::now();
    let restarted_at = started.elapsed();
    println!(
        "chaos: Redis started again (empty) at {:.1} s",
        restarted_at.as_secs_f64()
    );

    let ids: Vec<String> = cluster.nodes().iter().map(|n| n.id().to_owned()).collect();
    let hits_at_restart = cache_hits(&cluster).await;
    let mut registry_back = None;
    let mut ready_back = None;
    let mut caches_back = None;
    while restarted.elapsed() < RECOVERY
        && (registry_back.is_none() || ready_back.is_none() || caches_back.is_none())
    {
        if registry_back.is_none() && registered(&cluster, &ids).await {
            registry_back = Some(restarted.elapsed());
        }
        if ready_back.is_none() && all_ready(&cluster).await {
            ready_back = Some(restarted.elapsed());
        }
        if caches_back.is_none() {
            let hits = cache_hits(&cluster).await;
            if hits
                .iter()
                .zip(&hits_at_restart)
                .all(|(now, then)| now > then)
            {
                caches_back = Some(restarted.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    // The probe has seen an event after the restart by now, or gets until the bound.
    let broadcast_back = probe.first_event_after(restarted, RECOVERY).await;
    probe.stop();

    let mut orders = orders;
    orders.http_done().await;
    let mut reads = reads;
    reads.http_done().await;
    let last = last_offset(&cluster, "pets").await?;
    let orders = orders.finish(None, SETTLE).await;
    let report = reads.finish(last, SETTLE).await;
    print!("{}", report.table());
    print!("{}", orders.table());

    // The seconds of the timeline that overlap the outage (a request is counted in the
    // second it finished).
    let (first, last_second) = (stopped_at.as_secs(), restarted_at.as_secs());
    let (gap_done, gap_ok, gap_failed) = report
        .http
        .timeline
        .iter()
        .filter(|s| (first..=last_second).contains(&s.second))
        .fold((0, 0, 0), |(d, o, f), s| {
            (d + s.done, o + s.ok, f + s.failed)
        });
    let failed_per_10k = (gap_failed * 10_000).div_ceil(gap_done.max(1));
    let back = [registry_back, ready_back, caches_back, broadcast_back];
    let all_back = back
        .iter()
        .all(Option::is_some)
        .then(|| back.iter().flatten().max().copied())
        .flatten();

    let ws = report.websocket.clone().unwrap_or_default();
    let mut findings = Findings::default();
    let never = || format!("not within {} s", RECOVERY.as_secs());
    findings.figure("outage", format!("{} s", OUTAGE.as_secs()));
    findings.key(
        "reads answered in the outage's seconds (ok / failed)",
        format!(
            "{gap_done} ({gap_ok} / {gap_failed}): {:.2} % available (seconds {first} to {last_second})",
            100.0 * gap_ok as f64 / gap_done.max(1) as f64
        ),
    );
    findings.figure(
        "reads overall (requests / failed)",
        format!("{} / {}", report.http.all.requests, report.http.all.failed),
    );
    findings.figure(
        "read latency p50 / p99 / max (from the due time)",
        report.http.all.latency_ms.p50_p99_max(),
    );
    findings.figure(
        "orders (requests / failed after every retry / retries)",
        format!(
            "{} / {} / {}",
            orders.http.all.requests, orders.http.all.failed, orders.http.all.retries
        ),
    );
    findings.figure(
        "registry complete again after the restart",
        registry_back.map_or_else(never, ms),
    );
    findings.figure(
        "every node ready again (PostgreSQL and Redis answer) after the restart",
        ready_back.map_or_else(never, ms),
    );
    findings.figure(
        "every node's pet cache hit again after the restart",
        caches_back.map_or_else(never, ms),
    );
    findings.key(
        "first broadcast received after the restart",
        broadcast_back.map_or_else(never, ms),
    );
    findings.figure("websocket subscribers", ws.subscribers);
    findings.figure("websocket reconnects", ws.reconnects);
    findings.figure("websocket events received", ws.events);
    findings.figure(
        "websocket events lost (offsets start over after the restart)",
        ws.lost,
    );
    findings.figure("websocket resyncs", ws.resyncs);
    findings.figure(
        "websocket subscribers connected at the end",
        ws.connected_at_end,
    );
    findings.check_at_most(
        "failed reads during the outage, per ten thousand",
        failed_per_10k,
        MAX_FAILED_PER_10K,
    );
    findings.check_at_most(
        "ms until registry, readiness, caches and broadcasts are back",
        all_back.map_or(u64::MAX, |d| d.as_millis() as u64),
        RECOVERY.as_millis() as u64,
    );
    findings.detail = serde_json::json!({ "reads": report, "orders": orders });
    Ok(findings)
}

/// Whether every node in `ids` has its registry entry and its id in the set again.
async fn registered(cluster: &TestCluster, ids: &[String]) -> bool {
    let keys = petmesh_shared::registry::RedisKeys::new(cluster.cluster_name());
    let Ok(mut redis) = cluster.redis_connection().await else {
        return false;
    };
    let members: Vec<String> = match redis::cmd("SMEMBERS")
        .arg(keys.nodes())
        .query_async(&mut redis)
        .await
    {
        Ok(members) => members,
        Err(_) => return false,
    };
    for id in ids {
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.node(id))
            .query_async(&mut redis)
            .await
            .unwrap_or(false);
        if !exists || !members.contains(id) {
            return false;
        }
    }
    true
}

/// Every node's count of pet cache hits (`-1` when its `/metrics` cannot be read).
async fn cache_hits(cluster: &TestCluster) -> Vec<f64> {
    let mut hits = Vec::new();
    for node in cluster.nodes() {
        let count = match ApiClient::new(node.base_url()).get("/metrics").await {
            Ok(resp) if resp.status == 200 => crate::metrics::value(
                &resp.text,
                r#"petmesh_node_cache_requests_total{cache="pet",result="hit"}"#,
            ),
            _ => None,
        };
        hits.push(count.unwrap_or(-1.0));
    }
    hits
}

/// Whether every node answers `/health/ready` with 200.
async fn all_ready(cluster: &TestCluster) -> bool {
    for node in cluster.nodes() {
        match ApiClient::new(node.base_url()).get("/health/ready").await {
            Ok(resp) if resp.status == 200 => {}
            _ => return false,
        }
    }
    true
}

/// One subscriber of `pets` through the balancer that notes when events arrive.
struct Probe {
    /// When each event arrived.
    arrivals: Arc<Mutex<Vec<Instant>>>,
    /// Wakes a waiter at each event.
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Connects (with the token as a Bearer token) and subscribes, again after every failure,
    /// 100 ms apart, until stopped.
    fn start(base_url: String, token: String) -> Self {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (arrivals_in, notify_in) = (Arc::clone(&arrivals), Arc::clone(&notify));
        let task = tokio::spawn(async move {
            loop {
                if let Ok(mut client) = WsClient::connect(&base_url, Some(&token)).await {
                    let subscribed = client
                        .request("subscribe", serde_json::json!({ "topics": ["pets"] }))
                        .await
                        .is_ok_and(|r| r.frame["status"] == "success");
                    if subscribed {
                        while client.next_event().await.is_ok() {
                            arrivals_in
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(Instant::now());
                            notify_in.notify_waiters();
                        }
                    }
                }
                // Redis or the node may be down: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            arrivals,
            notify,
            task,
        }
    }

    /// How long after `since` the first event arrived, waiting up to `bound` after `since`.
    async fn first_event_after(&self, since: Instant, bound: Duration) -> Option<Duration> {
        let deadline = since + bound;
        loop {
            let notified = self.notify.notified();
            if let Some(at) = self
                .arrivals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|at| **at >= since)
            {
                return Some(*at - since);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    fn stop(self) {
        self.task.abort();
    }
}
