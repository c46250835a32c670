//! `petmesh-dev`: private servers and a local cluster for developers and scripts.
//!
//! `scripts/test` runs the test suite under `petmesh-dev with-servers`, `scripts/cluster`
//! execs `petmesh-dev cluster`, `scripts/bench-realtime` drives `petmesh-dev fanout` and
//! `petmesh-dev idle-memory`, `scripts/bench-redis` adds `petmesh-dev redis` and
//! `petmesh-dev redis-pool-bench`, and `scripts/bench-scale` measures around `wrk` with
//! `petmesh-dev cpu-window`. The work is done in `petmesh_tests::dev`; this file only
//! parses arguments and turns results into exit codes.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use petmesh_tests::dev::{
    self, ChaosArgs, ClusterArgs, CpuWindowArgs, FanoutArgs, IdleArgs, PoolBenchArgs, RedisArgs,
};

/// Development helpers for petmesh.
#[derive(Debug, Parser)]
#[command(name = "petmesh-dev", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start private PostgreSQL and Redis servers, run COMMAND with DATABASE_URL (the
    /// maintenance database), REDIS_URL and PETMESH_TEST_REDIS_MODE set, then stop them.
    /// Exits with COMMAND's code. With PETMESH_TEST_REDIS=cluster, Redis is a Redis Cluster
    /// of six processes and REDIS_URL its comma-separated seed list.
    WithServers {
        /// The command and its arguments (put `--` before it).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Run a local cluster until Ctrl-C: servers (unless DATABASE_URL and REDIS_URL are set),
    /// database `petmesh`, migrations, seed data, N nodes. Prints `ready` when it is up.
    Cluster(ClusterArgs),
    /// Measure cross-node fan-out (petmesh or Socket.IO): subscribers spread over the nodes,
    /// one publisher at a fixed rate; prints deliveries per second, latency percentiles,
    /// losses and the servers' CPU time as one `result` line.
    Fanout(FanoutArgs),
    /// Open many idle connections to one node and print the growth of its resident memory
    /// per connection as one `result` line.
    IdleMemory(IdleArgs),
    /// Run a private Redis until Ctrl-C: one server, or a Redis Cluster with N masters
    /// (and R replicas each). Prints its URL, mode, master and replica pids, then `ready`.
    Redis(RedisArgs),
    /// Measure the node's revocation check (one MGET) from many tasks through one
    /// multiplexed connection and through deadpool-redis pools, against a private Redis;
    /// prints one `result` line per variant and round.
    RedisPoolBench(PoolBenchArgs),
    /// Run COMMAND (a load generator) and print the CPU time that groups of processes
    /// (`--group name=pid,...`, each with its descendants), the command itself and the rest
    /// of the machine used meanwhile, as one `result` line after the command's output.
    CpuWindow(CpuWindowArgs),
    /// Run chaos experiments (node-kill, order-burst, rolling-restart, redis-outage,
    /// postgres-restart, slow-consumers, or all), each on a private 3-node cluster under
    /// load, printing its figures and a PASS or FAIL line, then with several a summary table
    /// (exit 0 only if every one passed).
    Chaos(ChaosArgs),
}

impl Cmd {
    /// The runtime the command runs on. The load generators need every core, or they would
    /// measure themselves; the others spawn children, and run on one thread: every child is
    /// spawned from the thread that lives as long as the process, which is what the
    /// parent-death signal is tied to.
    fn runtime(&self) -> tokio::runtime::Builder {
        match self {
            // Chaos experiments are load generators too; their children are spawned from
            // runtime workers, which live as long as the process.
            Self::Fanout(_) | Self::IdleMemory(_) | Self::RedisPoolBench(_) | Self::Chaos(_) => {
                tokio::runtime::Builder::new_multi_thread()
            }
            Self::WithServers { .. } | Self::Cluster(_) | Self::Redis(_) | Self::CpuWindow(_) => {
                tokio::runtime::Builder::new_current_thread()
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli
        .command
        .runtime()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Cmd::WithServers { command } => dev::with_servers::run(&command).await,
                    Cmd::Cluster(args) => dev::cluster::run(args).await,
                    Cmd::Fanout(args) => dev::fanout::run(args).await,
                    Cmd::IdleMemory(args) => dev::fanout::run_idle(args).await,
                    Cmd::Redis(args) => dev::redis::run(args).await,
                    Cmd::RedisPoolBench(args) => dev::redis_pool::run(args).await,
                    Cmd::Chaos(args) => dev::chaos::run(args).await,
                    Cmd::CpuWindow(args) => dev::cpu_window::run(args).await,
                }
            })
        });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("petmesh-dev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
