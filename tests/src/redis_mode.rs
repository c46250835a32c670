//! Which kind of Redis a test run uses, and a direct connection to it that works with either.
//!
//! petmesh talks to one Redis server (`redis.mode = standalone`) or to a Redis Cluster
//! (`redis.mode = cluster`, `REDIS_URL` a comma-separated list of seed URLs). A test run uses
//! one of the two for every test: `petmesh-dev with-servers` starts a Redis Cluster instead
//! of a single server when `PETMESH_TEST_REDIS=cluster`, and tells the tests so with
//! `PETMESH_TEST_REDIS_MODE=cluster` next to `REDIS_URL`. The harness passes the mode on to
//! every node and balancer; tests that read Redis themselves use [`redis_connection`].

use anyhow::{bail, Context as _};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Set by `petmesh-dev with-servers` (or by hand, with `REDIS_URL`): what `REDIS_URL` is,
/// `standalone` (the default) or `cluster`.
pub const REDIS_MODE_ENV: &str = "PETMESH_TEST_REDIS_MODE";

/// Read by whatever starts private servers (`petmesh-dev with-servers`, a test run without
/// `REDIS_URL`): which Redis to start, `standalone` (the default) or `cluster`.
pub const START_REDIS_ENV: &str = "PETMESH_TEST_REDIS";

/// The node setting that puts a node into Redis Cluster mode.
pub const NODE_REDIS_MODE_ENV: &str = "PETMESH_NODE__REDIS__MODE";

/// The balancer setting that puts a balancer into Redis Cluster mode.
pub const BALANCER_REDIS_MODE_ENV: &str = "PETMESH_BALANCER__REDIS__MODE";

/// How petmesh reaches Redis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// One server; `REDIS_URL` is its URL.
    #[default]
    Standalone,
    /// A Redis Cluster; `REDIS_URL` is a comma-separated list of seed URLs.
    Cluster,
}

// === impl RedisMode ===

impl RedisMode {
    /// Parses `standalone` or `cluster` (the values of petmesh's `redis.mode`).
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value.trim() {
            "standalone" => Ok(Self::Standalone),
            "cluster" => Ok(Self::Cluster),
            other => bail!("unknown Redis mode {other:?}: expected `standalone` or `cluster`"),
        }
    }

    /// The mode named by the environment variable `var`: standalone when it is unset or
    /// empty, an error when it names no mode.
    pub fn from_env(var: &str) -> anyhow::Result<Self> {
        match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => {
                Self::parse(&value).with_context(|| format!("reading {var}"))
            }
            _ => Ok(Self::Standalone),
        }
    }

    /// The name petmesh's `redis.mode` setting uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }

    /// The variable that sets this mode, when it is not the default, for a process whose
    /// setting is `mode_var` (a node's is [`NODE_REDIS_MODE_ENV`]). Standalone sets
    /// nothing, so processes that predate `redis.mode` keep working.
    pub(crate) fn env_var(self, mode_var: &str) -> Option<(String, String)> {
        (self == Self::Cluster).then(|| (mode_var.to_owned(), self.as_str().to_owned()))
    }
}

/// The URLs in a `REDIS_URL`: one for a single server, several (comma-separated) for the
/// seeds of a Redis Cluster.
pub fn seed_urls(redis_url: &str) -> Vec<&str> {
    redis_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// A direct connection to the run's Redis, whichever the mode; cheap to clone (clones share
/// the connection). Commands go where they must: in cluster mode, to the master serving the
/// key's slot, following redirections during a failover.
#[derive(Clone)]
pub enum RedisConnection {
    /// To a single server.
    Standalone(MultiplexedConnection),
    /// To a Redis Cluster, routed per command.
    Cluster(ClusterConnection),
}

/// Connects to the Redis at `redis_url` in `mode` (e.g. `cluster.redis_url()` and
/// `cluster.redis_mode()` of a `TestCluster`).
pub async fn redis_connection(redis_url: &str, mode: RedisMode) -> anyhow::Result<RedisConnection> {
    let seeds = seed_urls(redis_url);
    match mode {
        RedisMode::Standalone => {
            let [url] = seeds[..] else {
                bail!("a standalone REDIS_URL is one URL, not {redis_url:?}");
            };
            let client = redis::Client::open(url).with_context(|| format!("parsing {url}"))?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            Ok(RedisConnection::Standalone(conn))
        }
        RedisMode::Cluster => {
            let client = redis::cluster::ClusterClient::new(seeds)
                .with_context(|| format!("parsing the seed list {redis_url}"))?;
            let conn = client
                .get_async_connection()
                .await
                .with_context(|| format!("connecting to the Redis Cluster {redis_url}"))?;
            Ok(RedisConnection::Cluster(conn))
        }
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Standalone(_) => "RedisConnection::Standalone",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

// === impl RedisConnection ===

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_as_petmesh_names_them() {
        for mode in [RedisMode::Standalone, RedisMode::Cluster] {
            assert_eq!(RedisMode::parse(mode.as_str()).unwrap(), mode);
        }
        assert!(RedisMode::parse("sentinel").is_err());
    }

    #[test]
    fn only_cluster_mode_sets_a_variable() {
        assert_eq!(RedisMode::Standalone.env_var(NODE_REDIS_MODE_ENV), None);
        assert_eq!(
            RedisMode::Cluster.env_var(NODE_REDIS_MODE_ENV),
            Some((NODE_REDIS_MODE_ENV.to_owned(), "cluster".to_owned()))
        );
    }

    /// Starts a real Redis Cluster: needs redis-server and redis-cli (scripts/lib/deps.sh).
    #[tokio::test]
    async fn a_cluster_connection_reaches_keys_on_every_master() {
        let cluster = crate::servers::RedisCluster::start().await.unwrap();
        let mut conn = redis_connection(&cluster.seed_urls(), RedisMode::Cluster)
            .await
            .unwrap();
        // Keys whose slots fall to different masters (a single server would not care).
        let keys = ["a", "b", "c", "d", "e", "f"];
        let mut masters = std::collections::BTreeSet::new();
        for key in keys {
            masters.insert(cluster.master_for_key(key).await.unwrap().port);
            redis::cmd("SET")
                .arg(key)
                .arg(format!("value of {key}"))
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        assert!(masters.len() > 1, "the keys span several masters");
        for key in keys {
            let value: String = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(value, format!("value of {key}"));
        }
        assert!(
            redis_connection(&cluster.seed_urls(), RedisMode::Standalone)
                .await
                .is_err()
        );
    }

    #[test]
    fn seed_urls_split_the_list_and_keep_a_single_url() {
        assert_eq!(seed_urls("redis://a:1"), ["redis://a:1"]);
        assert_eq!(
            seed_urls("redis://a:1, redis://b:2,"),
            ["redis://a:1", "redis://b:2"]
        );
    }
}
