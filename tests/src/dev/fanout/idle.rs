//! `petmesh-dev idle-memory`: what an idle connection costs a node in resident memory.
//!
//! 1. Wait for the node to go quiet, read its `VmRSS`.
//! 2. Open `connections` connections (authenticated with the Bearer token for petmesh,
//!    connected to the default namespace for Socket.IO), at most `concurrency` at a time.
//! 3. Wait for the node to go quiet again, read `VmRSS`, print the growth per connection.
//! 4. Close them all.
//!
//! Run it against a node that has served nothing else, so that memory its allocator kept
//! from earlier work does not hide the cost. The connections are not read while idle; the
//! measurement is over long before either server's ping interval (25 s) could matter.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{stream, StreamExt as _};

use super::procfs::{rss_kib, CpuProbe};
use super::Target;

/// How long the node may take to go quiet before each reading.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `petmesh-dev idle-memory`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    /// The system under test and its access token.
    #[command(flatten)]
    pub target: Target,
    /// Base URL of the node (`http://host:port`).
    #[arg(long)]
    pub url: String,
    /// Process id of that node, whose `VmRSS` is read.
    #[arg(long)]
    pub pid: u32,
    /// Connections to open (the process needs that many file descriptors: `ulimit -n`).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connections opening at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
}

/// Measures and prints a `result` line; returns the exit code.
pub async fn run(args: IdleArgs) -> anyhow::Result<i32> {
    if args.connections == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    args.target.check()?;
    let node = CpuProbe::new(&[args.pid], &[], &[])?;
    node.settle(SETTLE_TIMEOUT).await?;
    let before = rss_kib(args.pid)?;

    let started = Instant::now();
    let sockets = stream::iter(0..args.connections)
        .map(|_| args.target.system.idle(&args.url, &args.target.token))
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("opening the idle connections")?;
    let opened = started.elapsed();
    node.settle(SETTLE_TIMEOUT).await?;
    let after = rss_kib(args.pid)?;

    let per_connection = after.saturating_sub(before) as f64 / args.connections as f64;
    eprintln!(
        "idle-memory: {}: {} connections opened in {opened:.1?}; VmRSS {before} KiB -> \
         {after} KiB, {per_connection:.2} KiB per connection",
        args.target.system.name(),
        sockets.len(),
    );
    println!(
        "result contender={} connections={} rss_before_kib={before} rss_after_kib={after} \
         kib_per_connection={per_connection:.2}",
        args.target.system.name(),
        sockets.len(),
    );
    drop(sockets);
    Ok(0)
}
