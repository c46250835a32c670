//! petmesh's real-process test harness: private servers, node processes, whole clusters.
//!
//! Cluster behaviour can only be tested with real processes, so this crate starts them and
//! guarantees they stop. A tour, bottom up:
//!
//! - [`process`]: the rules for owning a child process (killed with us, reaped on drop,
//!   output kept in a bounded [`LogTail`]), and [`OwnedProcess`], a petmesh binary run that
//!   way and read through its JSON log.
//! - [`servers`]: [`PostgresServer`], [`RedisServer`] and [`RedisCluster`], private instances
//!   on free loopback ports in temporary directories.
//! - [`redis_mode`]: [`RedisMode`], whether the run's Redis is one server or a Redis Cluster,
//!   and [`redis_connection`], a direct connection for tests that works with either.
//! - [`database`]: [`TestDatabase`], a fresh migrated database per test, dropped after it.
//! - [`node`]: [`NodeConfig`] and [`NodeProcess`], the `petmesh-node` binary configured
//!   through its environment and ready once `/health/ready` says so.
//! - [`balancer`]: [`BalancerConfig`] and [`BalancerProcess`], the `petmesh-balancer` binary
//!   in front of the nodes, which it finds through Redis; ready once its admin `/health` says so.
//! - [`cluster`]: [`TestCluster`], all of the above for one test, torn down in order.
//! - [`client`]: [`ApiClient`] and [`TestResponse`] for requests and [`assert_error`] for
//!   the common error body.
//! - [`ws`]: [`WsClient`], a client of the WebSocket protocol.
//! - [`metrics`]: one series' value in a `/metrics` body.
//! - [`mod@eventually`]: [`assert_eventually!`] and [`eventually()`] for state that converges.
//! - [`load`]: the HTTP and WebSocket load generator of `petmesh-load` and the chaos
//!   experiments.
//! - [`dev`]: the `petmesh-dev` subcommands the scripts use (`with-servers`, `cluster`,
//!   `chaos`).
//!
//! A test usually needs only:
//!
//! ```no_run
//! use petmesh_tests::{assert_error, TestCluster};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let cluster = TestCluster::start(2).await;
//! let resp = cluster.client(1).get("/api/v1/pets/999999").await?;
//! assert_error(&resp, 404);
//! # Ok(()) }
//! ```
//!
//! The node and balancer binaries must be built first (`cargo build --workspace --bins`;
//! `scripts/test` does it). Set `TEST_LOG=1` to see their logs live.

pub mod balancer;
pub mod client;
pub mod cluster;
pub mod database;
pub mod dev;
pub mod eventually;
pub mod load;
pub mod metrics;
pub mod node;
pub mod process;
pub mod redis_mode;
pub mod servers;
pub mod ws;

pub use balancer::{BalancerConfig, BalancerProcess};
pub use client::{assert_error, ApiClient, TestResponse, Tokens};
pub use cluster::{TestCluster, TestClusterBuilder};
pub use database::TestDatabase;
pub use eventually::eventually;
pub use node::{NodeConfig, NodeProcess, StartingNode};
pub use process::{LogTail, OwnedProcess};
pub use redis_mode::{redis_connection, RedisConnection, RedisMode};
pub use servers::{PostgresServer, RedisCluster, RedisServer};
pub use ws::{WsClient, WsResponse};
