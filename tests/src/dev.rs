//! The `petmesh-dev` subcommands: the one implementation of "start private servers" and
//! "run a local cluster" that `scripts/test` and `scripts/cluster` build on, and the
//! real-time load generator of `scripts/bench-realtime` (`fanout`, `idle-memory`), what
//! `scripts/bench-redis` adds to it (`redis`: a Redis of a chosen shape; `redis-pool-bench`:
//! a connection pool against one multiplexed connection), the CPU accounting around a load
//! generator of `scripts/bench-scale` (`cpu-window`), and the chaos experiments of
//! `scripts/chaos` (`chaos`).
//!
//! They live in the library rather than in `main.rs` so that they reuse the harness types
//! directly and stay unit-testable; `main.rs` only parses arguments.

pub mod chaos;
pub mod cluster;
pub mod cpu_window;
pub mod fanout;
pub mod redis;
pub mod redis_pool;
pub mod with_servers;

pub use chaos::ChaosArgs;
pub use cluster::ClusterArgs;
pub use cpu_window::CpuWindowArgs;
pub use fanout::{FanoutArgs, IdleArgs};
pub use redis::RedisArgs;
pub use redis_pool::PoolBenchArgs;

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, caught instead of killing the process, so that the servers and nodes
/// are stopped and their temporary directories removed.
#[derive(Debug)]
pub(crate) struct ShutdownSignals {
    /// Ctrl-C from a terminal, or `kill -INT`.
    interrupt: Signal,
    /// What service managers and `timeout` send.
    terminate: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers; from now on these signals no longer end the process by default.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM and returns its number.
    pub(crate) async fn recv(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

/// `SIGINT` or `SIGTERM` for log messages; the number for anything else.
pub(crate) fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// Whether this process is in the terminal's foreground process group, i.e. whether a
/// Ctrl-C reaches our children directly without us forwarding it.
pub(crate) fn in_terminal_foreground() -> bool {
    // SAFETY: plain syscalls on a file descriptor number; no memory is passed.
    unsafe {
        libc::isatty(libc::STDIN_FILENO) == 1
            && libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp()
    }
}
