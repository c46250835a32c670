//! How a node process is configured: the binary to run and the environment it gets.
//!
//! The node reads its configuration from layered files and environment variables
//! (`PETMESH_NODE__SECTION__KEY`), so the harness configures it purely through the child's
//! environment, the same way Helm and docker-compose do. Nothing here touches the harness's
//! own environment.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rand::distributions::{Alphanumeric, DistString as _};

pub use crate::process::TEST_LOG_ENV;
use crate::process::{find_binary, owned_command};
use crate::redis_mode::{RedisMode, NODE_REDIS_MODE_ENV};

/// The node binary's file name, as cargo builds it.
const NODE_BIN: &str = "petmesh-node";

/// Environment variable that overrides where the node binary is looked for.
pub const NODE_BIN_ENV: &str = "PETMESH_NODE_BIN";

/// Default deadline from spawn to `/health/ready` answering 200.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a node process is started with. Built with `new` plus builder methods; every
/// setting not given has a default fit for tests.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Full URL of the node's database (`DATABASE_URL`).
    pub(crate) database_url: String,
    /// URL of the Redis server (`REDIS_URL`), or a Redis Cluster's comma-separated seeds.
    pub(crate) redis_url: String,
    /// Whether `redis_url` is one server or a Redis Cluster. Default standalone.
    pub(crate) redis_mode: RedisMode,
    /// The cluster name, which is also the Redis key prefix. Default `test`.
    pub(crate) cluster_name: String,
    /// The node's id in the registry and in log prefixes. Default `node-1`.
    pub(crate) node_id: String,
    /// Secret the node signs access tokens with. Default: random, 48 characters.
    pub(crate) jwt_secret: String,
    /// Password of the bootstrap admin account, if there should be one.
    pub(crate) admin_password: Option<String>,
    /// Interface to listen on. Default 127.0.0.1.
    pub(crate) host: String,
    /// Port to listen on. Default 0: the node picks one and logs it.
    pub(crate) port: u16,
    /// `PETMESH_NODE__ENVIRONMENT`. Default `test`.
    pub(crate) environment: String,
    /// Whether to print the node's log lines to stderr as they arrive, prefixed with its id.
    /// Default: only when `TEST_LOG` is set.
    pub(crate) echo_logs: bool,
    /// How long `NodeProcess::spawn` waits for readiness.
    pub(crate) ready_timeout: Duration,
    /// Extra variables, applied after the ones above, so they can override them too.
    pub(crate) env: Vec<(String, String)>,
    /// The binary to run; `None` means [`node_binary`] finds it.
    pub(crate) binary: Option<PathBuf>,
}

// === impl NodeConfig ===

impl NodeConfig {
    /// A configuration for a node using the given database and Redis.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_mode: RedisMode::Standalone,
            cluster_name: "test".into(),
            node_id: "node-1".into(),
            jwt_secret: random_token(48),
            admin_password: None,
            host: "127.0.0.1".into(),
            port: 0,
            environment: "test".into(),
            echo_logs: std::env::var_os(TEST_LOG_ENV).is_some(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            env: Vec::new(),
            binary: None,
        }
    }

    /// Sets the cluster name (and with it the Redis key prefix).
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = name.into();
        self
    }

    /// Sets how the node reaches Redis: in cluster mode it gets
    /// `PETMESH_NODE__REDIS__MODE=cluster` and `REDIS_URL` must be the seed list.
    pub fn redis_mode(mut self, mode: RedisMode) -> Self {
        self.redis_mode = mode;
        self
    }

    /// Sets the node id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }

    /// Sets the JWT signing secret; nodes of one cluster must share it.
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_secret = secret.into();
        self
    }

    /// Sets the bootstrap admin password (`PETMESH_ADMIN_PASSWORD`).
    pub fn admin_password(mut self, password: impl Into<String>) -> Self {
        self.admin_password = Some(password.into());
        self
    }

    /// Sets the interface to listen on.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Sets the port to listen on; 0 (the default) lets the node pick.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Sets the environment name (`test`, `development`, `production`).
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Prints log lines live to stderr, prefixed with the node id (or stops doing so).
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }

    /// Sets how long `NodeProcess::spawn` waits for readiness.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Adds one environment variable, e.g. `PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS`.
    /// Later values win, and these win over the ones the other methods set.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs this binary instead of the one [`node_binary`] finds (a different build, or a
    /// stand-in in the harness's own tests).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The node id this configuration starts.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A command running `petmesh-node <subcommand>` with this configuration in its
    /// environment, set up by [`owned_command`] (no stdin, own process group, killed if the
    /// harness dies). stdout and stderr are left for the caller to set.
    pub fn command(&self, subcommand: &str) -> anyhow::Result<Command> {
        let binary = match &self.binary {
            Some(path) => path.clone(),
            None => node_binary()?,
        };
        let mut cmd = owned_command(&binary);
        // The harness's own variable starts with the node's prefix, and the node refuses any
        // `PETMESH_NODE*` variable that is not one of its settings.
        cmd.arg(subcommand)
            .env_remove(NODE_BIN_ENV)
            .envs(self.env_vars());
        Ok(cmd)
    }

    /// The variables `command` sets, in order.
    fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = [
            ("PETMESH_NODE__ENVIRONMENT", self.environment.as_str()),
            ("PETMESH_NODE__SERVER__HOST", self.host.as_str()),
            ("PETMESH_NODE__SERVER__PORT", &self.port.to_string()),
            ("DATABASE_URL", self.database_url.as_str()),
            ("REDIS_URL", self.redis_url.as_str()),
            ("PETMESH_NODE__CLUSTER__NAME", self.cluster_name.as_str()),
            ("PETMESH_NODE__NODE_ID", self.node_id.as_str()),
            ("PETMESH_NODE__AUTH__JWT_SECRET", self.jwt_secret.as_str()),
            ("PETMESH_NODE__LOG__FORMAT", "json"),
            ("PETMESH_NODE__LOG__LEVEL", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.extend(crate::redis_mode::mode_env_var(
            self.redis_mode,
            NODE_REDIS_MODE_ENV,
        ));
        if let Some(password) = &self.admin_password {
            vars.push(("PETMESH_ADMIN_PASSWORD".into(), password.clone()));
        }
        vars.extend(self.env.iter().cloned());
        vars
    }
}

/// Finds the `petmesh-node` binary: `PETMESH_NODE_BIN` if set, else next to the running
/// executable or one directory up (see [`find_binary`]).
pub fn node_binary() -> anyhow::Result<PathBuf> {
    find_binary(NODE_BIN, NODE_BIN_ENV)
}

/// A random alphanumeric string of `len` characters, for secrets and passwords.
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
        vars.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn env_vars_carry_every_setting_and_extras_win() {
        let config = NodeConfig::new("postgres://db/x", "redis://r:1")
            .cluster("c1")
            .id("node-7")
            .jwt_secret("s3cret")
            .admin_password("pw")
            .port(8080)
            .env("PETMESH_NODE__LOG__LEVEL", "debug")
            .env("PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS", "2");
        let vars = config.env_vars();
        assert_eq!(value(&vars, "DATABASE_URL"), Some("postgres://db/x"));
        assert_eq!(value(&vars, "REDIS_URL"), Some("redis://r:1"));
        assert_eq!(value(&vars, "PETMESH_NODE__CLUSTER__NAME"), Some("c1"));
        assert_eq!(value(&vars, "PETMESH_NODE__NODE_ID"), Some("node-7"));
        assert_eq!(
            value(&vars, "PETMESH_NODE__AUTH__JWT_SECRET"),
            Some("s3cret")
        );
        assert_eq!(value(&vars, "PETMESH_ADMIN_PASSWORD"), Some("pw"));
        assert_eq!(
            value(&vars, "PETMESH_NODE__SERVER__HOST"),
            Some("127.0.0.1")
        );
        assert_eq!(value(&vars, "PETMESH_NODE__SERVER__PORT"), Some("8080"));
        assert_eq!(value(&vars, "PETMESH_NODE__ENVIRONMENT"), Some("test"));
        assert_eq!(value(&vars, "PETMESH_NODE__LOG__FORMAT"), Some("json"));
        assert_eq!(value(&vars, "PETMESH_NODE__LOG__LEVEL"), Some("debug"));
        assert_eq!(
            value(&vars, "PETMESH_NODE__AUTH__ACCESS_TOKEN_TTL_SECS"),
            Some("2")
        );
    }

    #[test]
    fn no_admin_password_unless_given() {
        let vars = NodeConfig::new("a", "b").env_vars();
        assert_eq!(value(&vars, "PETMESH_ADMIN_PASSWORD"), None);
    }

    #[test]
    fn only_cluster_mode_is_passed_on() {
        let vars = NodeConfig::new("a", "b").env_vars();
        assert_eq!(value(&vars, NODE_REDIS_MODE_ENV), None);
        let seeds = "redis://127.0.0.1:1,redis://127.0.0.1:2";
        let vars = NodeConfig::new("a", seeds)
            .redis_mode(RedisMode::Cluster)
            .env_vars();
        assert_eq!(value(&vars, NODE_REDIS_MODE_ENV), Some("cluster"));
        assert_eq!(value(&vars, "REDIS_URL"), Some(seeds));
    }

    #[test]
    fn random_tokens_have_the_asked_length_and_differ() {
        let a = random_token(48);
        assert_eq!(a.len(), 48);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_token(48));
    }
}
