//! `rolling-restart`: every node of three replaced in turn under steady mixed load (the
//! engine and mix of `node-kill`) with WebSocket subscribers of `pets`.
//!
//! 1. Start the cluster, prepare users and pets, connect the subscribers, start the load.
//! 2. After a warm-up, for each of the three original nodes, at fixed points of the run:
//!    SIGTERM it and wait for it to drain and exit, start a replacement (`node-4`, …), and
//!    wait until the balancer routes to it (`/admin/nodes` says so and a request through the
//!    proxy succeeds); the next SIGTERM never comes before that.
//! 3. When the load is over, wait for the outbox to be empty, read the `pets` topic's last
//!    offset from Redis, and let the subscribers catch up with it.
//!
//! PASS: no request failed (a drained node finishes what it accepted, so logins too must
//! succeed), every drained node exited with status 0, no subscriber lost or repeated an
//! event (they resume through the balancer with `since`), none was refused a resumption,
//! and every subscriber is connected at the end. Step timings are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::node_kill::last_offset;
use super::{mixed_load_setup, ms, pets_subscribers, three_node_cluster, Findings};
use crate::load::{HttpLoad, LoadOptions, Mix, RetryPolicy, RunningLoad};

/// The numbers of one form of the experiment.
struct Plan {
    rate: f64,
    /// How long the load runs: long enough for the three replacements.
    duration: Duration,
    /// When the first node gets SIGTERM.
    first_at: Duration,
    /// Time between two SIGTERMs (each replacement serves alone for a while before the next
    /// node goes; a step that takes longer delays the next).
    every: Duration,
    subscribers: usize,
    users: usize,
}

const FULL: Plan = Plan {
    rate: 150.0,
    duration: Duration::from_secs(90),
    first_at: Duration::from_secs(15),
    every: Duration::from_secs(25),
    subscribers: 60,
    users: 20,
};

const SHORT: Plan = Plan {
    rate: 100.0,
    duration: Duration::from_secs(30),
    first_at: Duration::from_secs(5),
    every: Duration::from_secs(8),
    subscribers: 30,
    users: 10,
};

/// Bound on one node's drain and exit after SIGTERM (its grace period is 10 s).
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// Bound on the balancer routing to a replacement.
const ROUTED_WITHIN: Duration = Duration::from_secs(30);

/// Bound on the outbox draining and on the subscribers catching up at the end.
const SETTLE: Duration = Duration::from_secs(30);

/// The timings of one replacement.
struct Step {
    old: String,
    new: String,
    /// SIGTERM until the process exited.
    exit: Duration,
    /// Exit until the replacement was ready (`/health/ready` 200).
    ready: Duration,
    /// Ready until the balancer routed to it.
    routed: Duration,
    /// Whether the old node exited with status 0.
    clean_exit: bool,
}

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
    let mut running = RunningLoad::start(load, options, Some(ws));
    let started = running.recorder().started();

    // Each SIGTERM comes at a fixed point of the run's timeline (a schedule, not a wait for
    // some state), and never before the previous replacement is routed to.
    let mut rolling = None;
    let mut steps = Vec::new();
    for step in 0..3u32 {
        tokio::time::sleep_until((started + plan.first_at + plan.every * step).into()).await;
        rolling.get_or_insert_with(Instant::now);
        // The oldest node is first: replacements are appended.
        let mut old = cluster.remove_node(0);
        let old_id = old.id().to_owned();
        println!(
            "chaos: SIGTERM to {old_id} at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let term = Instant::now();
        let status = old.terminate(EXIT_WITHIN).await?;
        let exit = term.elapsed();
        let exited = Instant::now();
        let new = cluster.spawn_node(|config| config).await?;
        let new_id = new.id().to_owned();
        let ready = exited.elapsed();
        let routed_from = Instant::now();
        cluster
            .balancer()
            .until_routing_to(&[new_id.as_str()], ROUTED_WITHIN)
            .await?;
        let routed = routed_from.elapsed();
        println!(
            "chaos: {old_id} exited ({status}) after {}, {new_id} ready {} later, routed to {} after that ({:.1} s)",
            ms(exit),
            ms(ready),
            ms(routed),
            started.elapsed().as_secs_f64()
        );
        steps.push(Step {
            old: old_id,
            new: new_id,
            exit,
            ready,
            routed,
            clean_exit: status.success(),
        });
    }
    let rolled = rolling.map_or(Duration::ZERO, |at| at.elapsed());
    let rolled_by = started.elapsed();

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
    for step in &steps {
        findings.figure(
            &format!("{} -> {}", step.old, step.new),
            format!(
                "drained and exited {}, replacement ready {}, routed to {}",
                ms(step.exit),
                ms(step.ready),
                ms(step.routed)
            ),
        );
    }
    findings.key(
        "rolling restart duration (first SIGTERM to last replacement routed)",
        ms(rolled),
    );
    findings.figure(
        "load time when the rolling restart ended",
        format!(
            "{:.1} s of {} s",
            rolled_by.as_secs_f64(),
            plan.duration.as_secs()
        ),
    );
    findings.figure("websocket subscribers", ws.subscribers);
    findings.figure("websocket reconnects", ws.reconnects);
    findings.figure("websocket events received", ws.events);
    findings.figure(
        "pets topic last offset",
        ws.final_offset.clone().unwrap_or_default(),
    );
    findings.check("failed requests", report.http.all.failed, 0);
    findings.check(
        "drained nodes that exited with a non-zero status",
        steps.iter().filter(|s| !s.clean_exit).count() as u64,
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
