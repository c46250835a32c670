//! `node-kill`: SIGKILL one of three nodes under steady mixed load (browse, get, login,
//! keyed orders, open loop) with WebSocket subscribers of `pets` spread over the nodes.
//!
//! 1. Start the cluster, prepare users and pets, connect the subscribers, start the load.
//! 2. At a third of the run, SIGKILL `node-2`; watch the balancer's `/admin/nodes` every
//!    25 ms for 5 s to see when it last sent the dead node an attempt.
//! 3. When the load is over, wait for the outbox to be empty, read the `pets` topic's last
//!    offset from Redis, and let the subscribers catch up with it.
//!
//! PASS: no idempotent request (GET, keyed order) failed, no subscriber lost or repeated an
//! event, every subscriber is connected again at the end. Failed logins (not idempotent: one
//! cut off inside the dead node cannot be retried) and the timings are reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{mixed_load_setup, ms, pets_subscribers, three_node_cluster, Findings};
use crate::cluster::TestCluster;
use crate::load::{HttpLoad, LoadOptions, Mix, Offset, RetryPolicy, RunningLoad};

/// The numbers of one form of the experiment.
struct Plan {
    rate: f64,
    duration: Duration,
    kill_at: Duration,
    subscribers: usize,
    users: usize,
}

const FULL: Plan = Plan {
    rate: 150.0,
    duration: Duration::from_secs(60),
    kill_at: Duration::from_secs(20),
    subscribers: 60,
    users: 20,
};

const SHORT: Plan = Plan {
    rate: 100.0,
    duration: Duration::from_secs(20),
    kill_at: Duration::from_secs(7),
    subscribers: 30,
    users: 10,
};

/// The node killed (index 1: `node-2`).
const VICTIM: usize = 1;

/// How long and how often the balancer's view of the dead node is watched.
const WATCH_FOR: Duration = Duration::from_secs(5);
const WATCH_EVERY: Duration = Duration::from_millis(25);

/// Bound on the outbox draining and on the subscribers catching up at the end.
const SETTLE: Duration = Duration::from_secs(30);

pub(super) async fn run(short: bool) -> anyhow::Result<Findings> {
    let plan = if short { SHORT } else { FULL };
    let mut cluster = three_node_cluster(&[]).await?;
    let setup = mixed_load_setup(
        &cluster.balancer().base_url(),
        cluster.admin_password(),
        plan.users,
    )
    .await?;
    let ws = pets_subscribers(&setup, plan.subscribers).await?;
    let retry = RetryPolicy::default();
    let timeout = Duration::from_secs(10);
    let options = LoadOptions {
        rate: Some(plan.rate),
        connections: 256,
        duration: plan.duration,
        mix: Mix::default(),
        timeout,
        retry,
        progress: true,
    };
    let load = HttpLoad::new(Arc::clone(&setup), timeout, 256, retry)?;
    let running = RunningLoad::start(load, options, Some(ws));
    let started = running.recorder().started();

    // The kill comes at a fixed point of the run's timeline (what is measured is relative
    // to it), not as a wait for some state.
    tokio::time::sleep_until((started + plan.kill_at).into()).await;
    let victim = cluster.node(VICTIM).id().to_owned();
    let before = attempts(&cluster, &victim).await.unwrap_or(0);
    cluster.node_mut(VICTIM).kill()?;
    let killed_at = Instant::now();
    println!(
        "chaos: SIGKILLed {victim} at {:.1} s ({before} attempts sent to it)",
        started.elapsed().as_secs_f64()
    );
    let watch = watch_victim(&cluster, &victim, before, killed_at).await;

    let mut running = running;
    running.http_done().await;
    let last = last_offset(&cluster, "pets").await?;
    let report = running.finish(last, SETTLE).await;
    print!("{}", report.table());

    let ws = report.websocket.clone().unwrap_or_default();
    let mut findings = Findings::default();
    findings.figure("requests", report.http.all.requests);
    findings.key(
        "latency p50 / p99 / max (from the due time)",
        report.http.all.latency_ms.p50_p99_max(),
    );
    findings.figure(
        "order retries (same Idempotency-Key)",
        report.http.kinds.get("order").map_or(0, |t| t.retries),
    );
    findings.figure(
        "failed non-idempotent requests (logins)",
        report.http.failed_non_idempotent,
    );
    findings.figure(
        "balancer attempts sent to the dead node after the kill",
        watch.attempts_after_kill,
    );
    findings.key(
        "time until no request goes to the killed node",
        match watch.last_attempt {
            Some(at) => format!("{} (last attempt seen by then)", ms(at)),
            None => format!("none after the kill (first look {})", ms(WATCH_EVERY)),
        },
    );
    findings.figure(
        "killed node marked unhealthy by the balancer after",
        watch.unhealthy.map_or("not within 5 s".into(), ms),
    );
    findings.figure("websocket subscribers", ws.subscribers);
    findings.key("websocket reconnects", ws.reconnects);
    findings.figure("websocket events received", ws.events);
    findings.figure("websocket resyncs", ws.resyncs);
    findings.figure(
        "pets topic last offset",
        ws.final_offset.clone().unwrap_or_default(),
    );
    findings.check(
        "failed idempotent requests",
        report.http.failed_idempotent,
        0,
    );
    findings.check("websocket events lost", ws.lost, 0);
    findings.check("websocket events duplicated", ws.duplicates, 0);
    findings.check(
        "websocket subscribers not connected at the end",
        (ws.subscribers - ws.connected_at_end) as u64,
        0,
    );
    findings.check(
        "websocket resumptions refused (recovered: false)",
        ws.resyncs,
        0,
    );
    findings.detail = serde_json::to_value(&report)?;
    Ok(findings)
}

/// What the balancer did with the dead node after the kill.
struct VictimWatch {
    /// When its attempt count last grew (after the kill), if it did.
    last_attempt: Option<Duration>,
    /// When it was first seen unhealthy or gone.
    unhealthy: Option<Duration>,
    /// Attempts sent to it after the kill.
    attempts_after_kill: u64,
}

/// Polls `/admin/nodes` for [`WATCH_FOR`].
async fn watch_victim(
    cluster: &TestCluster,
    victim: &str,
    before: u64,
    killed_at: Instant,
) -> VictimWatch {
    let mut watch = VictimWatch {
        last_attempt: None,
        unhealthy: None,
        attempts_after_kill: 0,
    };
    let mut seen = before;
    while killed_at.elapsed() < WATCH_FOR {
        tokio::time::sleep(WATCH_EVERY).await;
        let row = row(cluster, victim).await;
        let at = killed_at.elapsed();
        let healthy = row.as_ref().is_some_and(|r| r["healthy"] == true);
        if !healthy && watch.unhealthy.is_none() {
            watch.unhealthy = Some(at);
        }
        if let Some(count) = row.and_then(|r| r["requests"].as_u64()) {
            if count > seen {
                seen = count;
                watch.last_attempt = Some(at);
            }
        }
    }
    watch.attempts_after_kill = seen - before;
    watch
}

async fn row(cluster: &TestCluster, id: &str) -> Option<serde_json::Value> {
    let table = cluster.balancer().admin_nodes().await.ok()?;
    table.as_array()?.iter().find(|r| r["id"] == id).cloned()
}

async fn attempts(cluster: &TestCluster, id: &str) -> Option<u64> {
    row(cluster, id).await?["requests"].as_u64()
}

/// The last offset of `topic` once the outbox holds none of its events: what every
/// subscriber must have reached.
pub(super) async fn last_offset(
    cluster: &TestCluster,
    topic: &str,
) -> anyhow::Result<Option<Offset>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let waiting: i64 = sqlx::query_scalar("select count(*) from outbox where topic = $1")
            .bind(topic)
            .fetch_one(cluster.db())
            .await?;
        if waiting == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("{waiting} events of {topic} still in the outbox after {SETTLE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = petmesh_shared::registry::RedisKeys::new(cluster.cluster_name()).topic_offsets(topic);
    let mut redis = cluster.redis_connection().await?;
    let (epoch, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("epoch")
        .arg("seq")
        .query_async(&mut redis)
        .await
        .context("reading the topic's offset")?;
    Ok(epoch.zip(seq).map(|(epoch, seq)| Offset { epoch, seq }))
}
