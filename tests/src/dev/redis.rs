//! `petmesh-dev redis`: a private Redis of a chosen shape, kept until SIGINT or SIGTERM.
//!
//! `scripts/bench-redis` compares fan-out over one standalone Redis, a Redis Cluster with one
//! master and one with three; it starts each shape in turn with this command, reads where it
//! listens and which processes to measure from stdout, and stops it with SIGTERM. The servers
//! are the harness's own ([`RedisServer`], [`RedisCluster`]): free loopback ports, no
//! persistence, removed on exit.

use std::io::Write as _;

use anyhow::Context as _;

use super::{signal_name, ShutdownSignals};
use crate::servers::{ClusterProcess, PrivateRedis, RedisCluster, RedisServer};

/// Options of `petmesh-dev redis`.
#[derive(clap::Args, Clone, Debug)]
pub struct RedisArgs {
    /// Masters of a Redis Cluster (1, or 3 and more); 0 starts one standalone server.
    #[arg(long, default_value_t = 0)]
    pub masters: usize,
    /// Replicas of each master (only with 3 and more masters).
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
}

/// Starts the Redis, prints it (see [`print`]) and `ready`, and keeps it until SIGINT or
/// SIGTERM. Returns 0, or 128 + the signal when it came during start-up.
pub async fn run(args: RedisArgs) -> anyhow::Result<i32> {
    let mut signals = ShutdownSignals::install()?;
    let redis = tokio::select! {
        redis = start(&args) => redis?,
        signal = signals.recv() => return Ok(128 + signal),
    };
    print(&redis).await.context("describing the Redis")?;
    let signal = signals.recv().await;
    eprintln!("petmesh-dev: got {}, stopping Redis", signal_name(signal));
    drop(redis);
    Ok(0)
}

/// A standalone server for `--masters 0`, else a Redis Cluster of that shape.
async fn start(args: &RedisArgs) -> anyhow::Result<PrivateRedis> {
    Ok(if args.masters == 0 {
        PrivateRedis::Single(RedisServer::start().await?)
    } else {
        PrivateRedis::Cluster(RedisCluster::start_with(args.masters, args.replicas).await?)
    })
}

/// Prints `redis url: <REDIS_URL>`, `redis mode: standalone|cluster`, `redis masters:
/// <pid,...>` (the processes that serve the data), `redis replicas: <pid,...>` (possibly
/// empty) and `ready`, one per line, and flushes.
async fn print(redis: &PrivateRedis) -> anyhow::Result<()> {
    let (masters, replicas) = match redis {
        PrivateRedis::Single(server) => (vec![server.pid()], vec![]),
        PrivateRedis::Cluster(cluster) => {
            let (masters, replicas) = cluster.roles().await?;
            let pids = |members: Vec<ClusterProcess>| members.iter().map(|m| m.pid).collect();
            (pids(masters), pids(replicas))
        }
    };
    let join = |pids: Vec<u32>| {
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "redis url: {}", redis.url())?;
    writeln!(out, "redis mode: {}", redis.mode().as_str())?;
    writeln!(out, "redis masters: {}", join(masters))?;
    writeln!(out, "redis replicas: {}", join(replicas))?;
    writeln!(out, "ready")?;
    out.flush()?;
    Ok(())
}
