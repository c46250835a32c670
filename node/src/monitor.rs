//! What the node watches in the background so that `/metrics` shows it even when no request
//! asks: whether PostgreSQL and Redis answer, the PostgreSQL pool, the job queue (depth, dead
//! letters, the oldest due job), the event outbox (pending rows, the oldest), and how many nodes the registry lists (which the rate limits'
//! fallback divides by). The health endpoints use the same dependency checks.

use std::time::{Duration, Instant};

use crate::{jobs, outbox, state::AppState};

/// Time between two samples: well under the usual 15–30 s scrape interval, so a scrape shows
/// a state at most this old, while the queue query stays negligible (a few index scans).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How long one dependency check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of checking one dependency.
#[derive(Debug, Clone)]
pub struct Check {
    /// `postgres` or `redis` (see [`crate::metrics::dependencies::DEPENDENCIES`]).
    pub dependency: &'static str,
    /// How long the check took (at most the check timeout).
    pub took: Duration,
    /// Why the dependency counts as down; `None` when it answered.
    pub error: Option<String>,
}

/// Checks PostgreSQL (`select 1`) and Redis (`PING`) concurrently, each bounded by a timeout,
/// and records the outcome in the dependency metrics.
pub async fn check_dependencies(state: &AppState) -> [Check; 2] {
    let (postgres, redis) = tokio::join!(
        timed(async {
            sqlx::query("select 1")
                .execute(&state.db)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        timed(async {
            let mut conn = state.redis.clone();
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }),
    );
    let checks =
        [("postgres", postgres), ("redis", redis)].map(|(dependency, (took, error))| Check {
            dependency,
            took,
            error,
        });
    for check in &checks {
        state
            .metrics
            .dependencies
            .observe(check.dependency, check.error.is_none(), check.took);
    }
    checks
}

async fn timed(
    check: impl std::future::Future<Output = Result<(), String>>,
) -> (Duration, Option<String>) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())));
    (started.elapsed(), outcome.err())
}

/// Samples every [`SAMPLE_INTERVAL`] until dropped (the caller aborts the task on shutdown).
pub async fn run(state: AppState) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        sample(&state).await;
    }
}

/// One sample of everything this module watches.
pub async fn sample(state: &AppState) {
    let checks = check_dependencies(state).await;
    state.metrics.dependencies.observe_pool(&state.db);
    if checks[1].error.is_none() {
        match live_nodes(state).await {
            Ok(nodes) => {
                state.metrics.dependencies.registry_nodes.set(nodes as i64);
                state.rate_limiter.observe_nodes(nodes);
            }
            Err(err) => tracing::debug!(error = %err, "counting registry entries failed"),
        }
    }
    // Without PostgreSQL the queue figures keep their last values; `dependency_up` says why.
    if checks[0].error.is_none() {
        match jobs::queue_stats(&state.db).await {
            Ok(stats) => {
                let store = &state.metrics.store;
                store.job_queue_depth.set(stats.depth);
                store.job_queue_dead_letters.set(stats.dead_letters);
                store.job_queue_oldest_age.set(stats.oldest_due_secs);
            }
            Err(err) => tracing::warn!(error = %err, "sampling the job queue failed"),
        }
        match outbox::stats(&state.db).await {
            Ok(stats) => {
                let metrics = &state.metrics.outbox;
                metrics.pending.set(stats.pending);
                metrics.oldest_pending_age.set(stats.oldest_secs);
            }
            Err(err) => tracing::warn!(error = %err, "sampling the outbox failed"),
        }
    }
}

/// Nodes whose registry entry is alive: the members of the registry's set whose entry has not
/// expired (the set keeps ids until someone prunes them).
async fn live_nodes(state: &AppState) -> redis::RedisResult<usize> {
    let mut conn = state.redis.clone();
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(state.keys.nodes())
        .query_async(&mut conn)
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let keys: Vec<String> = ids.iter().map(|id| state.keys.node(id)).collect();
    redis::cmd("EXISTS").arg(keys).query_async(&mut conn).await
}
