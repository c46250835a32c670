//! Private PostgreSQL and Redis servers, one set per test run or per test.
//!
//! Tests must not depend on daemons someone else started (they'd share state, ports and
//! versions with whatever else runs on the machine), so the harness starts the servers itself,
//! as child processes it owns, on free loopback ports, with their data in a temporary
//! directory that disappears with them. Both are tuned for throwaway data (no fsync, no
//! persistence); they start in about a second.
//!
//! `scripts/test` starts one pair for the whole run through `petmesh-dev with-servers` and
//! every test creates its own database and Redis key prefix in them; a test run without those
//! (`cargo test` by hand) gets a private pair per cluster instead. With
//! `PETMESH_TEST_REDIS=cluster`, the Redis is a [`RedisCluster`] of six processes (see
//! [`crate::redis_mode`]).

mod postgres;
mod redis;
mod redis_cluster;

pub use postgres::PostgresServer;
pub use redis::RedisServer;
pub use redis_cluster::{ClusterProcess, Failover, RedisCluster, SLOTS};

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::redis_mode::RedisMode;

/// A private Redis of either kind, for whoever starts one by mode.
#[derive(Debug)]
pub enum PrivateRedis {
    /// One server (mode standalone).
    Single(RedisServer),
    /// A Redis Cluster (mode cluster).
    Cluster(RedisCluster),
}

// === impl PrivateRedis ===

impl PrivateRedis {
    /// Starts a single server or a Redis Cluster, as `mode` says.
    pub async fn start(mode: RedisMode) -> anyhow::Result<Self> {
        Ok(match mode {
            RedisMode::Standalone => Self::Single(RedisServer::start().await?),
            RedisMode::Cluster => Self::Cluster(
                RedisCluster::start()
                    .await
                    .context("starting a Redis Cluster")?,
            ),
        })
    }

    /// The `REDIS_URL` for it: the server's URL, or the cluster's seed list.
    pub fn url(&self) -> String {
        match self {
            Self::Single(server) => server.url(),
            Self::Cluster(cluster) => cluster.seed_urls(),
        }
    }

    /// Which mode petmesh must use with it.
    pub fn mode(&self) -> RedisMode {
        match self {
            Self::Single(_) => RedisMode::Standalone,
            Self::Cluster(_) => RedisMode::Cluster,
        }
    }
}

/// How long a server may take from spawn to answering its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is probed while a server starts.
const READY_POLL: Duration = Duration::from_millis(50);

/// How many ports a server tries before giving up; see [`free_port`] for why more than one.
const START_ATTEMPTS: usize = 3;

/// A loopback port that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and closing the listener again, so another
/// process may grab it before the server we pass it to binds it. The window is short and the
/// kernel hands out ephemeral ports in rotation, so the servers just retry with a new port
/// when the log says "Address already in use" rather than anything cleverer (such as passing
/// an already-bound socket, which neither PostgreSQL nor Redis accepts).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the port of a fresh listener")?
        .port())
}

/// Starts a server on a free port with `start(port)`, trying a new port (up to
/// [`START_ATTEMPTS`] in all) when an attempt fails and the log at `log_path` says the port
/// was lost to another process (see [`free_port`]). Any other failure is returned at once.
///
/// `start` must leave nothing running when it fails: the next attempt reuses the log file.
async fn start_on_free_port<T, Fut>(
    name: &str,
    log_path: &Path,
    mut start: impl FnMut(u16) -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match start(port).await {
            Ok(server) => return Ok(server),
            Err(e) if attempt < START_ATTEMPTS && lost_port_race(&read_log(log_path)) => {
                eprintln!(
                    "petmesh-tests: {name} lost port {port} to another process, retrying ({e:#})"
                );
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a server's log says it lost the race for its port (see [`free_port`]).
fn lost_port_race(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind")
}

/// Reads a server's log file for an error message; a missing file reads as empty.
fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The last `n` lines of `log`, for error messages that should stay readable.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_returns_a_bindable_port() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        assert_eq!(log_tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(log_tail("a", 5), "a");
    }

    #[tokio::test]
    async fn start_on_free_port_retries_only_a_lost_port_race() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut ports = Vec::new();
        let started = start_on_free_port("fake", &log, |port| {
            ports.push(port);
            let log = log.clone();
            let attempt = ports.len();
            async move {
                if attempt < START_ATTEMPTS {
                    std::fs::write(&log, "bind: Address already in use").unwrap();
                    anyhow::bail!("attempt {attempt} lost its port");
                }
                Ok(port)
            }
        })
        .await
        .unwrap();
        assert_eq!(ports.len(), START_ATTEMPTS);
        assert_eq!(started, *ports.last().unwrap());

        std::fs::write(&log, "FATAL: data directory has wrong ownership").unwrap();
        let mut attempts = 0;
        let error = start_on_free_port("fake", &log, |_| {
            attempts += 1;
            async { anyhow::bail!("cannot start") as anyhow::Result<()> }
        })
        .await
        .unwrap_err();
        assert_eq!((attempts, error.to_string().as_str()), (1, "cannot start"));
    }

    #[test]
    fn lost_port_race_recognises_both_servers() {
        assert!(lost_port_race(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
        assert!(lost_port_race(
            "# Warning: Could not create server TCP listening socket 127.0.0.1:6379: bind: Address already in use"
        ));
        assert!(!lost_port_race(
            "LOG:  database system is ready to accept connections"
        ));
    }
}
