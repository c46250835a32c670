//! Which kind of Redis a test run uses, and a direct connection to it that works with either.
//!
//! petmesh talks to one Redis server (`redis.mode = standalone`) or to a Redis Cluster
//! (`redis.mode = cluster`, `REDIS_URL` a comma-separated list of seed URLs). A test run uses
//! one of the two for every test: `petmesh-dev with-servers` starts a Redis Cluster instead
//! of a single server when `PETMESH_TEST_REDIS=cluster`, and tells the tests so with
//! `PETMESH_TEST_REDIS_MODE=cluster` next to `REDIS_URL`. The harness passes the mode on to
//! every node and balancer; tests that read Redis themselves use [`redis_connection`].

use std::time::Duration;

use anyhow::Context as _;
use petmesh_shared::redis_conn::RedisTarget;

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

pub use petmesh_shared::redis_conn::{RedisConnection, RedisMode};

/// The mode named by the environment variable `var`: standalone when it is unset or empty, an
/// error when it names no mode.
pub fn mode_from_env(var: &str) -> anyhow::Result<RedisMode> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => {
            value.parse().with_context(|| format!("reading {var}"))
        }
        _ => Ok(RedisMode::Standalone),
    }
}

/// The variable that sets `mode`, when it is not the default, for a process whose setting is
/// `mode_var` (a node's is [`NODE_REDIS_MODE_ENV`]). Standalone sets nothing, so processes
/// that predate `redis.mode` keep working.
pub(crate) fn mode_env_var(mode: RedisMode, mode_var: &str) -> Option<(String, String)> {
    (mode == RedisMode::Cluster).then(|| (mode_var.to_owned(), mode.as_str().to_owned()))
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

/// Connects to the Redis at `redis_url` in `mode` (e.g. `cluster.redis_url()` and
/// `cluster.redis_mode()` of a `TestCluster`), the way nodes and balancers do: in cluster
/// mode commands go to the master serving the key's slot, following redirections during a
/// failover. Cheap to clone (clones share the connection).
pub async fn redis_connection(redis_url: &str, mode: RedisMode) -> anyhow::Result<RedisConnection> {
    RedisTarget::new(mode, redis_url, Duration::from_secs(5))?
        .connect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cluster_mode_sets_a_variable() {
        assert_eq!(
            mode_env_var(RedisMode::Standalone, NODE_REDIS_MODE_ENV),
            None
        );
        assert_eq!(
            mode_env_var(RedisMode::Cluster, NODE_REDIS_MODE_ENV),
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
