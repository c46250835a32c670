//! `petmesh-dev redis-pool-bench`: for the node's hottest Redis command, is a pool of
//! exclusive connections or one multiplexed connection the right tool?
//!
//! Every authenticated request makes one revocation check: an `MGET` of the user's
//! revoked-token key and revoked-before key ([`RedisKeys::revoked_token`],
//! [`RedisKeys::sessions_revoked_before`]), which share the hash tag `{user:<id>}`. This
//! command runs that `MGET` from C concurrent tasks against a private standalone Redis
//! ([`RedisServer`]), through each of:
//!
//! - `multiplexed`: one `redis::aio::ConnectionManager`, cloned by every task, built by
//!   [`RedisTarget::lazy_connection`] exactly as the node builds its own: the tasks' commands
//!   are pipelined on one socket;
//! - `deadpool`: a `deadpool-redis` pool of P connections with its default recycling, which
//!   sends `UNWATCH` + `PING` on a connection each time it is checked out;
//! - `exclusive`: P connections checked out *without* that check. deadpool-redis has no
//!   switch to turn it off (its `Manager::recycle` always pings), so a semaphore and a stack
//!   of connections stand in for such a pool: what a pool costs when checking out is free.
//!
//! 1. Start Redis; build every variant (the pools connect all their connections first).
//! 2. For each round, each concurrency and each variant (the order rotated every round, so
//!    none always runs first): C tasks loop on the `MGET` for `warmup_secs`, then for
//!    `duration_secs` each records its latency (checkout included); Redis's CPU time and
//!    this process's are read from `/proc` when the window opens and closes.
//! 3. Print one `result key=value ...` line per measurement (stdout) for
//!    `scripts/bench-redis` to tabulate, and a readable line on stderr.
//!
//! The keys are absent, as they are for almost every request (nobody logged out), so each
//! reply is two nils; users and token ids vary per call so that nothing is cached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use petmesh_shared::redis_conn::{RedisConnection, RedisMode, RedisTarget};
use petmesh_shared::registry::RedisKeys;
use redis::aio::MultiplexedConnection;
use tokio::sync::Semaphore;

use super::fanout::procfs::{process_ticks, CpuProbe};
use super::fanout::stats::Latencies;
use crate::servers::RedisServer;

/// The cluster name in the keys, as a node named `b` would use.
const CLUSTER: &str = "b";

/// Distinct users whose keys are read, round-robin.
const USERS: u64 = 10_000;

/// Timeout of the multiplexed connection's commands, as nodes use by default.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `petmesh-dev redis-pool-bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct PoolBenchArgs {
    /// Concurrent tasks issuing the check (comma-separate for several).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    pub concurrency: Vec<usize>,
    /// Pool sizes for the `deadpool` and `exclusive` variants (comma-separate for several).
    #[arg(long = "pool-size", value_delimiter = ',', default_values_t = [8, 32])]
    pub pool_sizes: Vec<usize>,
    /// Rounds over every concurrency and variant.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Seconds each measurement runs before its window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
}

/// One way of reaching Redis, shared by the tasks of a measurement.
#[derive(Clone)]
enum Via {
    /// One multiplexed connection, as the node has.
    Multiplexed(RedisConnection),
    /// A deadpool-redis pool with its default recycling; the field is its size.
    Deadpool(deadpool_redis::Pool, usize),
    /// A pool without a check on checkout.
    Exclusive(Arc<Exclusive>),
}

/// Connections lent out one task at a time, with nothing sent on checkout.
struct Exclusive {
    /// One permit per connection: a task holding one may take a connection from `idle`.
    permits: Semaphore,
    /// The connections not lent out; a task pushes its connection back before it releases
    /// its permit, so a permit holder always finds one.
    idle: Mutex<Vec<MultiplexedConnection>>,
    /// How many connections there are.
    size: usize,
}

/// What the tasks of one measurement did in the window.
#[derive(Debug, Default)]
struct Tally {
    /// Latency of every check started in the window, µs.
    samples_us: Vec<u64>,
    /// Checks that failed.
    errors: u64,
    /// The last failure.
    last_error: Option<String>,
}

/// Starts Redis, runs every round, prints the results; returns 0, or 1 when a check failed.
pub async fn run(args: PoolBenchArgs) -> anyhow::Result<i32> {
    if args.concurrency.contains(&0) || args.pool_sizes.contains(&0) || args.rounds == 0 {
        bail!("--concurrency, --pool-size and --rounds must be at least 1");
    }
    if !(args.duration_secs > 0.0 && args.warmup_secs >= 0.0) {
        bail!("--duration-secs must be positive, --warmup-secs not negative");
    }
    let redis = RedisServer::start().await.context("starting Redis")?;
    let vias = build(&redis.url(), &args.pool_sizes).await?;
    eprintln!(
        "redis-pool-bench: Redis pid {}, {} variants, concurrency {:?}, {} round(s)",
        redis.pid(),
        vias.len(),
        args.concurrency,
        args.rounds
    );
    let cpu = CpuProbe::new(&[], &[redis.pid()], &[])?;
    let mut failed = false;
    for round in 1..=args.rounds {
        for &concurrency in &args.concurrency {
            let mut order = vias.clone();
            order.rotate_left((round - 1) % vias.len());
            for via in order {
                failed |= measure(&args, &cpu, round, concurrency, via).await? > 0;
            }
        }
    }
    Ok(i32::from(failed))
}

/// Every variant: the multiplexed connection, then a deadpool pool and an exclusive pool of
/// each size, each with all its connections open.
async fn build(url: &str, pool_sizes: &[usize]) -> anyhow::Result<Vec<Via>> {
    let multiplexed = RedisTarget::new(RedisMode::Standalone, url, COMMAND_TIMEOUT)?
        .lazy_connection()
        .context("the multiplexed connection")?;
    let mut vias = vec![Via::Multiplexed(multiplexed)];
    for &size in pool_sizes {
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(deadpool_redis::PoolConfig::new(size));
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .context("creating a deadpool-redis pool")?;
        // Check out every connection at once, so that all exist before the first window.
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(
                pool.get()
                    .await
                    .context("filling the deadpool-redis pool")?,
            );
        }
        drop(held);
        vias.push(Via::Deadpool(pool, size));

        let client = redis::Client::open(url)?;
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(client.get_multiplexed_async_connection().await?);
        }
        vias.push(Via::Exclusive(Arc::new(Exclusive {
            permits: Semaphore::new(size),
            idle: Mutex::new(idle),
            size,
        })));
    }
    Ok(vias)
}

/// One measurement: `concurrency` tasks on `via` for the warm-up and the window; prints its
/// result and returns its error count.
async fn measure(
    args: &PoolBenchArgs,
    cpu: &CpuProbe,
    round: usize,
    concurrency: usize,
    via: Via,
) -> anyhow::Result<u64> {
    let open_at = Instant::now() + Duration::from_secs_f64(args.warmup_secs);
    let close_at = open_at + Duration::from_secs_f64(args.duration_secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| tokio::spawn(check_loop(via.clone(), task as u64, open_at, close_at)))
        .collect();
    tokio::time::sleep_until(open_at.into()).await;
    let (before, client_before) = (cpu.sample()?, process_ticks(std::process::id())?);
    tokio::time::sleep_until(close_at.into()).await;
    let (after, client_after) = (cpu.sample()?, process_ticks(std::process::id())?);
    let mut tally = Tally::default();
    for task in tasks {
        let done = task.await.context("check task")?;
        tally.samples_us.extend(done.samples_us);
        tally.errors += done.errors;
        tally.last_error = done.last_error.or(tally.last_error);
    }
    let window = args.duration_secs;
    let seconds = cpu.seconds_between(&before, &after);
    let redis_cpu = seconds.redis.unwrap_or(0.0);
    let client_cpu =
        cpu.ticks_to_seconds(client_after.total().saturating_sub(client_before.total()));
    let other = (seconds.machine - redis_cpu - client_cpu).max(0.0);
    let ops = tally.samples_us.len();
    let latencies = Latencies::new(tally.samples_us);
    let ms = |v: Option<f64>| v.map_or("nan".into(), |v| format!("{v:.3}"));
    let (p50, p99) = (
        ms(latencies.percentile_ms(50.0)),
        ms(latencies.percentile_ms(99.0)),
    );
    let ops_per_s = ops as f64 / window;
    eprintln!(
        "redis-pool-bench: round {round}, {concurrency} tasks, {}: {ops_per_s:.0} ops/s, \
         p50 {p50} ms, p99 {p99} ms; CPU s: Redis {redis_cpu:.2}, this process \
         {client_cpu:.2}, anything else {other:.2}{}",
        via.label(),
        tally.last_error.as_ref().map_or(String::new(), |e| format!(
            "; {} errors, last: {e}",
            tally.errors
        )),
    );
    println!(
        "result via={} pool_size={} concurrency={concurrency} round={round} window_s={window:.3} \
         ops={ops} ops_per_s={ops_per_s:.1} p50_ms={p50} p99_ms={p99} errors={} \
         redis_cpu_s={redis_cpu:.3} client_cpu_s={client_cpu:.3} other_cpu_s={other:.3}",
        via.kind(),
        via.size(),
        tally.errors,
    );
    Ok(tally.errors)
}

/// Runs checks back to back until `close_at`, keeping the latencies of those started from
/// `open_at` on. Task `task` reads users `task`, `task + 1000`, … (mod [`USERS`]) with a fresh
/// token id each time.
async fn check_loop(via: Via, task: u64, open_at: Instant, close_at: Instant) -> Tally {
    let keys = RedisKeys::new(CLUSTER);
    let mut tally = Tally::default();
    let mut n = 0u64;
    loop {
        let started = Instant::now();
        if started >= close_at {
            return tally;
        }
        let user = ((task + n * 1000) % USERS).to_string();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys.revoked_token(&user, &format!("jti-{task}-{n}")))
            .arg(keys.sessions_revoked_before(&user));
        n += 1;
        let result = via.query(&cmd).await;
        if started < open_at {
            continue;
        }
        match result {
            Ok(()) => tally
                .samples_us
                .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Err(e) => {
                tally.errors += 1;
                tally.last_error = Some(format!("{e:#}"));
            }
        }
    }
}

// === impl Via ===

impl Via {
    /// Sends `cmd` (the `MGET`) and reads its reply as the node does.
    async fn query(&self, cmd: &redis::Cmd) -> anyhow::Result<()> {
        type Reply = (Option<String>, Option<i64>);
        match self {
            Self::Multiplexed(conn) => {
                let mut conn = conn.clone();
                cmd.query_async::<Reply>(&mut conn).await?;
            }
            Self::Deadpool(pool, _) => {
                let mut conn = pool.get().await?;
                cmd.query_async::<Reply>(&mut conn).await?;
            }
            Self::Exclusive(pool) => {
                let _permit = pool.permits.acquire().await?;
                let mut conn = pool
                    .idle
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .pop()
                    .context("a permit without a connection")?;
                let result = cmd.query_async::<Reply>(&mut conn).await;
                pool.idle
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(conn);
                result?;
            }
        }
        Ok(())
    }

    /// `multiplexed`, `deadpool` or `exclusive`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Multiplexed(_) => "multiplexed",
            Self::Deadpool(..) => "deadpool",
            Self::Exclusive(_) => "exclusive",
        }
    }

    /// The pool size; 1 for the one multiplexed connection.
    fn size(&self) -> usize {
        match self {
            Self::Multiplexed(_) => 1,
            Self::Deadpool(_, size) => *size,
            Self::Exclusive(pool) => pool.size,
        }
    }

    /// `kind` and size, for humans.
    fn label(&self) -> String {
        format!("{} ({})", self.kind(), self.size())
    }
}
