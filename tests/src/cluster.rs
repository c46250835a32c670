//! A whole test cluster: servers, a fresh database, N nodes and optionally a balancer in front
//! of them, torn down in the right order.
//!
//! This is what a cluster-level test starts with (`TestCluster::start(3).await`, or
//! `TestCluster::builder().nodes(3).balancer(true).start().await`, or `.balancers(2)` for
//! two balancers sharing Redis and the nodes). The balancer finds the
//! nodes the way production does, through the Redis registry, so a node added later with
//! [`TestCluster::spawn_node`] joins it by itself. Isolation
//! between tests that run in parallel against one PostgreSQL and one Redis comes from two
//! names: the database `test_<uuid>` and the cluster name `test_<uuid>`, which is the
//! node's Redis key prefix (`petmesh:{cluster}:`). Redis keys are not deleted afterwards:
//! the Redis server of a test run is thrown away at its end, and prefixes never repeat.
//!
//! The run's Redis may be a Redis Cluster (`PETMESH_TEST_REDIS_MODE=cluster`, see
//! [`crate::redis_mode`]); every node and balancer is then started in cluster mode with the
//! seed list as `REDIS_URL`, and [`TestCluster::redis_mode`] tells tests which it is.

use anyhow::Context as _;
use sqlx::PgPool;

use crate::balancer::{BalancerConfig, BalancerProcess};
use crate::client::ApiClient;
use crate::database::TestDatabase;
use crate::node::{random_token, NodeConfig, NodeProcess};
use crate::redis_mode::{
    redis_connection, RedisConnection, RedisMode, REDIS_MODE_ENV, START_REDIS_ENV,
};
use crate::servers::{PostgresServer, PrivateRedis, RedisCluster, RedisServer};

/// Length of the generated JWT secret.
const JWT_SECRET_LEN: usize = 48;

/// Length of the generated admin password.
const ADMIN_PASSWORD_LEN: usize = 24;

/// A running cluster owned by one test.
///
/// Field order is drop order, and it matters: the balancer goes first (it talks to the nodes),
/// then the nodes (they hold connections to the database and Redis), then the database (whose
/// `DROP` needs the server), then the servers.
#[derive(Debug)]
pub struct TestCluster {
    /// The balancers in front of the nodes (as many as the builder asked for), each on its
    /// own ports, all sharing the nodes and Redis.
    balancers: Vec<BalancerProcess>,
    /// The running nodes, in spawn order; `node-1` is index 0.
    nodes: Vec<NodeProcess>,
    /// The cluster's database, dropped after the nodes are dead.
    database: TestDatabase,
    /// Configuration every node gets: database, Redis, cluster name, secrets, extra env.
    /// The id is set per node.
    template: NodeConfig,
    /// Number of the next node id (`node-<n>`); ids are never reused, even after a removal.
    next_id: usize,
    /// URL of the Redis server, or the seed list of a Redis Cluster.
    redis_url: String,
    /// Whether `redis_url` is one server or a Redis Cluster.
    redis_mode: RedisMode,
    /// The cluster name, also the Redis key prefix.
    cluster_name: String,
    /// The secret the nodes sign tokens with, so tests can forge or inspect tokens.
    jwt_secret: String,
    /// The bootstrap admin's password.
    admin_password: String,
    /// A Redis of this cluster's own, when the builder asked for one (so that the test can
    /// stop or freeze it, or kill a Redis Cluster's master) or the run's Redis is of another
    /// mode than the builder's; dropped after the processes that use it.
    own_redis: Option<PrivateRedis>,
    /// Servers started for this cluster alone, `None` when they came from the environment.
    /// Declared last: stopped after everything that uses them.
    #[expect(
        dead_code,
        reason = "held only so that dropping the cluster stops the servers"
    )]
    servers: Option<PrivateServers>,
}

/// Settings for [`TestCluster`] beyond the node count.
#[derive(Clone, Debug)]
pub struct TestClusterBuilder {
    /// How many nodes to start.
    nodes: usize,
    /// Extra environment for every node, e.g. a short token lifetime.
    env: Vec<(String, String)>,
    /// How many balancers to start in front of the nodes.
    balancers: usize,
    /// Extra environment for the balancer, e.g. a strategy.
    balancer_env: Vec<(String, String)>,
    /// Whether nodes and balancer use a Redis of the cluster's own, and of which kind.
    own_redis: Option<RedisMode>,
    /// The Redis mode the test needs, if it needs one; `None` follows the run.
    redis_mode: Option<RedisMode>,
}

/// A PostgreSQL and a Redis (server or cluster) owned by one cluster (or one `petmesh-dev`
/// run).
#[derive(Debug)]
#[expect(dead_code, reason = "held only so that dropping it stops the servers")]
pub(crate) struct PrivateServers {
    /// Stopped with a fast shutdown on drop.
    postgres: PostgresServer,
    /// Killed on drop.
    redis: PrivateRedis,
}

/// The servers a cluster runs against, from the environment or started for it.
#[derive(Debug)]
pub(crate) struct RunServers {
    /// The maintenance database URL.
    pub(crate) database_url: String,
    /// The `REDIS_URL` for nodes and balancers: one URL, or a Redis Cluster's seed list.
    pub(crate) redis_url: String,
    /// Which of the two `redis_url` is.
    pub(crate) redis_mode: RedisMode,
    /// The servers, when they were started here rather than given.
    pub(crate) private: Option<PrivateServers>,
}

// === impl TestCluster ===

impl TestCluster {
    /// Starts a cluster of `nodes` nodes with default settings; panics if it can't.
    ///
    /// Uses the servers in `DATABASE_URL` (a maintenance database URL) and `REDIS_URL` when
    /// both are set, as `scripts/test` does, and starts private ones otherwise.
    pub async fn start(nodes: usize) -> Self {
        Self::builder().nodes(nodes).start().await
    }

    /// Settings for a cluster that needs more than a node count.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            nodes: 1,
            env: Vec::new(),
            balancers: 0,
            balancer_env: Vec::new(),
            own_redis: None,
            redis_mode: None,
        }
    }

    /// The (first) balancer; panics when the cluster was built without one.
    pub fn balancer(&self) -> &BalancerProcess {
        self.balancers
            .first()
            .expect("this cluster has no balancer: build it with `.balancer(true)`")
    }

    /// The (first) balancer, mutably: to stop it. Panics when there is none.
    pub fn balancer_mut(&mut self) -> &mut BalancerProcess {
        self.balancers
            .first_mut()
            .expect("this cluster has no balancer: build it with `.balancer(true)`")
    }

    /// Every balancer, in start order (`.balancers(n)`).
    pub fn balancers(&self) -> &[BalancerProcess] {
        &self.balancers
    }

    /// The balancer at `index`, mutably: to kill or stop it. Panics when there is none.
    pub fn balancer_at_mut(&mut self, index: usize) -> &mut BalancerProcess {
        &mut self.balancers[index]
    }

    /// A client for the cluster's entry point: the first balancer when there is one, else
    /// node 0.
    pub fn entry_client(&self) -> ApiClient {
        match self.balancers.first() {
            Some(balancer) => balancer.client(),
            None => self.client(0),
        }
    }

    /// All running nodes, `node-1` first.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The node at `index` (0-based: `node(0)` is `node-1` unless nodes were removed).
    /// Panics when there is no such node.
    pub fn node(&self, index: usize) -> &NodeProcess {
        &self.nodes[index]
    }

    /// The node at `index`, mutably: to kill or terminate it.
    pub fn node_mut(&mut self, index: usize) -> &mut NodeProcess {
        &mut self.nodes[index]
    }

    /// Takes the node at `index` out of the cluster; the caller now decides when it dies.
    pub fn remove_node(&mut self, index: usize) -> NodeProcess {
        self.nodes.remove(index)
    }

    /// A client for the node at `index`, without a token.
    pub fn client(&self, index: usize) -> ApiClient {
        ApiClient::new(self.node(index).base_url())
    }

    /// A pool on the cluster's database, for arranging and checking data directly.
    pub fn db(&self) -> &PgPool {
        self.database.pool()
    }

    /// The cluster's database.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The `REDIS_URL` the nodes use: one server's URL, or in cluster mode the
    /// comma-separated seed URLs of a Redis Cluster (see [`TestCluster::redis_mode`]).
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// Whether the nodes use one Redis server or a Redis Cluster.
    pub fn redis_mode(&self) -> RedisMode {
        self.redis_mode
    }

    /// A direct connection to the nodes' Redis, in either mode.
    pub async fn redis_connection(&self) -> anyhow::Result<RedisConnection> {
        redis_connection(&self.redis_url, self.redis_mode).await
    }

    /// The cluster's own Redis server, to stop, freeze (`SIGSTOP` its [`RedisServer::pid`]) or
    /// restart; panics when the cluster was built without `.own_redis()`.
    pub fn own_redis(&mut self) -> &mut RedisServer {
        match &mut self.own_redis {
            Some(PrivateRedis::Single(server)) => server,
            _ => {
                panic!("this cluster has no Redis server of its own: build it with `.own_redis()`")
            }
        }
    }

    /// The cluster's own Redis Cluster, to kill a master and wait for the failover; panics
    /// when the cluster was built without `.own_redis_cluster()`.
    pub fn own_redis_cluster(&mut self) -> &mut RedisCluster {
        match &mut self.own_redis {
            Some(PrivateRedis::Cluster(cluster)) => cluster,
            _ => panic!(
                "this cluster has no Redis Cluster of its own: build it with `.own_redis_cluster()`"
            ),
        }
    }

    /// The secret the nodes sign access tokens with.
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// The bootstrap admin's password (the user name is the node's default admin name).
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The cluster name, which is also the Redis key prefix.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The configuration the next node would get, for spawning a node by hand.
    pub fn node_config(&self) -> NodeConfig {
        self.template.clone().id(format!("node-{}", self.next_id))
    }

    /// Starts one more node with the cluster's configuration changed by `customize`
    /// (pass `|config| config` for none), waits until it is ready, and returns it.
    ///
    /// The node registers in the cluster's registry, which is how a balancer learns of it; this
    /// does not wait for the balancer to route to it.
    pub async fn spawn_node(
        &mut self,
        customize: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> anyhow::Result<&mut NodeProcess> {
        let config = customize(self.node_config());
        self.next_id += 1;
        let node = NodeProcess::spawn(config).await?;
        self.nodes.push(node);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }
}

impl TestCluster {
    /// Starts one more balancer for the cluster's nodes and Redis with the extra variables
    /// `env` (e.g. another `REDIS_URL`; the builder's `balancer_env` does not apply), waits
    /// until it is ready, and returns it.
    pub async fn spawn_balancer(
        &mut self,
        env: &[(&str, &str)],
    ) -> anyhow::Result<&mut BalancerProcess> {
        let name = format!("balancer-{}", self.balancers.len() + 1);
        let config = env.iter().fold(
            BalancerConfig::new(self.redis_url.as_str(), self.cluster_name.as_str())
                .redis_mode(self.redis_mode)
                .name(name),
            |config, (key, value)| config.env(*key, *value),
        );
        self.balancers.push(BalancerProcess::spawn(config).await?);
        Ok(self.balancers.last_mut().expect("just pushed"))
    }
}

/// The node setting that turns rate limits on or off.
pub const RATE_LIMITS_ENV: &str = "PETMESH_NODE__RATE_LIMIT__ENABLED";

// === impl TestClusterBuilder ===

impl TestClusterBuilder {
    /// How many nodes to start (default 1).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// Adds an environment variable for every node, e.g.
    /// `.env("PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS", "2")`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts a balancer in front of the nodes (or not), once they are all ready. It finds them
    /// by itself; [`BalancerProcess::until_routing_to`] waits until it routes to them.
    pub fn balancer(mut self, balancer: bool) -> Self {
        self.balancers = if balancer { self.balancers.max(1) } else { 0 };
        self
    }

    /// Starts `count` balancers in front of the nodes, each on its own ports, all reading the
    /// same registry and sharing the WebSocket limit through the same Redis.
    pub fn balancers(mut self, count: usize) -> Self {
        self.balancers = count;
        self
    }

    /// Adds an environment variable for the balancer and asks for one, e.g.
    /// `.balancer_env("PETMESH_BALANCER__STRATEGY__HTTP", "round-robin")`.
    pub fn balancer_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.balancers = self.balancers.max(1);
        self.balancer_env.push((key.into(), value.into()));
        self
    }

    /// Gives the cluster a Redis server of its own instead of the run's shared one, so that
    /// the test can stop or freeze it without disturbing other tests. The nodes use it in
    /// standalone mode, whatever the run's mode (this wins over [`Self::redis_mode`]).
    pub fn own_redis(mut self) -> Self {
        self.own_redis = Some(RedisMode::Standalone);
        self
    }

    /// Gives the cluster a Redis Cluster of its own (three masters, a replica each), so that
    /// the test can kill a master ([`TestCluster::own_redis_cluster`]) without disturbing
    /// other tests. The nodes use it in cluster mode (this wins over [`Self::redis_mode`]).
    pub fn own_redis_cluster(mut self) -> Self {
        self.own_redis = Some(RedisMode::Cluster);
        self
    }

    /// Runs the nodes and balancers in this Redis mode whatever the run's: a cluster gets a
    /// Redis of its own of that kind when the run's Redis is of the other.
    pub fn redis_mode(mut self, mode: RedisMode) -> Self {
        self.redis_mode = Some(mode);
        self
    }

    /// Starts the cluster; panics with the whole error chain if it can't.
    pub async fn start(self) -> TestCluster {
        match self.try_start().await {
            Ok(cluster) => cluster,
            Err(e) => panic!("starting the test cluster: {e:#}"),
        }
    }

    /// Starts the cluster: servers, database, then all nodes in parallel.
    pub async fn try_start(self) -> anyhow::Result<TestCluster> {
        let run = servers(self.redis_mode).await?;
        let own_mode = self
            .own_redis
            .or(self.redis_mode.filter(|mode| *mode != run.redis_mode));
        let own_redis = match own_mode {
            Some(mode) => Some(PrivateRedis::start(mode).await?),
            None => None,
        };
        let (redis_url, redis_mode) = match &own_redis {
            Some(redis) => (redis.url(), redis.mode()),
            None => (run.redis_url, run.redis_mode),
        };
        let servers = run.private;
        let database = TestDatabase::create(&run.database_url).await?;
        let cluster_name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let jwt_secret = random_token(JWT_SECRET_LEN);
        let admin_password = random_token(ADMIN_PASSWORD_LEN);
        let template = self.env.iter().fold(
            NodeConfig::new(database.url(), redis_url.as_str())
                .redis_mode(redis_mode)
                .cluster(cluster_name.as_str())
                .jwt_secret(jwt_secret.as_str())
                .admin_password(admin_password.as_str())
                // Tests send many requests from one address; those about rate limits turn
                // them on (the builder's `env` comes after this and wins).
                .env(RATE_LIMITS_ENV, "false"),
            |config, (key, value)| config.env(key.as_str(), value.as_str()),
        );
        let mut cluster = TestCluster {
            balancers: Vec::with_capacity(self.balancers),
            nodes: Vec::with_capacity(self.nodes),
            database,
            template,
            next_id: 1,
            redis_url,
            redis_mode,
            cluster_name,
            jwt_secret,
            admin_password,
            own_redis,
            servers,
        };

        // Spawn every process first and wait afterwards, so the nodes start in parallel;
        // a failure drops (kills) the ones already started.
        let mut starting = Vec::with_capacity(self.nodes);
        for _ in 0..self.nodes {
            let config = cluster.node_config();
            cluster.next_id += 1;
            starting.push(NodeProcess::launch(config)?);
        }
        for node in starting {
            cluster.nodes.push(node.ready().await?);
        }
        for index in 0..self.balancers {
            let name = match index {
                0 => "balancer".to_owned(),
                n => format!("balancer-{}", n + 1),
            };
            let config = self.balancer_env.iter().fold(
                BalancerConfig::new(cluster.redis_url.as_str(), cluster.cluster_name.as_str())
                    .redis_mode(cluster.redis_mode)
                    .name(name),
                |config, (key, value)| config.env(key.as_str(), value.as_str()),
            );
            cluster
                .balancers
                .push(BalancerProcess::spawn(config).await?);
        }
        Ok(cluster)
    }
}

/// The servers to run against: `DATABASE_URL` and `REDIS_URL` when both are set (the mode
/// of the latter from `PETMESH_TEST_REDIS_MODE`), private servers otherwise, with a Redis of
/// mode `start_mode`, or of the mode `PETMESH_TEST_REDIS` names when that is `None`.
pub(crate) async fn servers(start_mode: Option<RedisMode>) -> anyhow::Result<RunServers> {
    if let (Ok(database_url), Ok(redis_url)) =
        (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL"))
    {
        return Ok(RunServers {
            database_url,
            redis_url,
            redis_mode: crate::redis_mode::mode_from_env(REDIS_MODE_ENV)?,
            private: None,
        });
    }
    let mode = match start_mode {
        Some(mode) => mode,
        None => crate::redis_mode::mode_from_env(START_REDIS_ENV)?,
    };
    let (postgres, redis) = crate::dev::with_servers::start_servers(mode)
        .await
        .context("starting private servers (DATABASE_URL and REDIS_URL are not both set)")?;
    Ok(RunServers {
        database_url: postgres.url(),
        redis_url: redis.url(),
        redis_mode: redis.mode(),
        private: Some(PrivateServers { postgres, redis }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::send_signal;

    /// Runs the real node: needs `cargo build --workspace --bins` first (scripts/test does).
    #[tokio::test]
    async fn cluster_nodes_are_ready_distinct_and_gone_after_drop() {
        let mut cluster = TestCluster::start(2).await;
        let ids: Vec<&str> = cluster.nodes().iter().map(NodeProcess::id).collect();
        assert_eq!(ids, ["node-1", "node-2"]);
        assert_ne!(cluster.node(0).addr(), cluster.node(1).addr());
        assert!(cluster.cluster_name().starts_with("test_"));
        assert_eq!(cluster.jwt_secret().len(), JWT_SECRET_LEN);
        for i in 0..2 {
            cluster
                .client(i)
                .get("/health/ready")
                .await
                .unwrap()
                .assert_status(200);
        }

        let third = cluster.spawn_node(|config| config).await.unwrap();
        assert_eq!(third.id(), "node-3");
        let pids: Vec<u32> = cluster.nodes().iter().map(NodeProcess::pid).collect();
        drop(cluster);
        for pid in pids {
            assert!(send_signal(pid, 0).is_err(), "node pid {pid} reaped");
        }
    }
}
