//! Where the node set comes from: [`RedisDiscovery`] reads the registry the nodes write
//! (protocol in [`petmesh_shared::registry`]), [`StaticDiscovery`] is a fixed list from the
//! settings (benchmarks, tests, clusters without Redis).
//!
//! Discovery only reports; [`crate::background`] applies what it reports to the
//! [`Membership`](crate::backend::Membership), keeps the last known set when a round fails,
//! and resubscribes when the event stream breaks.

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use futures_util::{stream::BoxStream, StreamExt as _};
use petmesh_shared::registry::{MembershipEvent, NodeInfo, NodeStatus, RedisKeys};
use redis::AsyncConnectionConfig;
use tokio::sync::Mutex;

use crate::backend::{Backend, Discovered};

/// A source of nodes.
pub trait ServiceDiscovery: Send + Sync + 'static {
    /// The whole current node set.
    fn discover(&self) -> impl Future<Output = anyhow::Result<Vec<Discovered>>> + Send;

    /// Membership changes as they happen; `None` when the source has no events.
    fn watch(
        &self,
    ) -> impl Future<Output = anyhow::Result<Option<BoxStream<'static, MembershipEvent>>>> + Send
    {
        async { Ok(None) }
    }
}

/// A fixed list of nodes.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    /// The nodes, as parsed from `discovery.static_upstreams`.
    backends: Vec<Backend>,
}

impl StaticDiscovery {
    /// Always reports `backends`, none draining.
    pub fn new(backends: Vec<Backend>) -> Self {
        Self { backends }
    }
}

impl ServiceDiscovery for StaticDiscovery {
    async fn discover(&self) -> anyhow::Result<Vec<Discovered>> {
        Ok(self
            .backends
            .iter()
            .map(|backend| Discovered {
                backend: backend.clone(),
                draining: false,
            })
            .collect())
    }
}

/// The Redis node registry of one cluster.
#[derive(Debug)]
pub struct RedisDiscovery {
    /// Connection parameters.
    client: redis::Client,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// Bound on connecting and on each command.
    timeout: Duration,
    /// The command connection, opened on first use and replaced after an error.
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisDiscovery {
    /// The registry of cluster `cluster` at `url`.
    pub fn new(url: &str, cluster: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url).context("redis.url is not a valid Redis URL")?,
            keys: RedisKeys::new(cluster),
            timeout,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect(&self.client, self.timeout).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn read_registry(&self) -> anyhow::Result<Vec<Discovered>> {
        let mut connection = self.connection().await?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut connection)
            .await
            .context("reading the node set")?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let entries: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .context("reading node entries")?;
        let mut nodes = Vec::with_capacity(entries.len());
        // An id without an entry has expired (the node died): it is simply not in the set.
        for (id, entry) in ids.iter().zip(entries) {
            let Some(json) = entry else { continue };
            match serde_json::from_str::<NodeInfo>(&json) {
                Ok(info) => nodes.push(discovered(&info)),
                Err(err) => {
                    tracing::warn!(node = %id, error = %err, "ignoring unreadable registry entry")
                }
            }
        }
        Ok(nodes)
    }
}

impl ServiceDiscovery for RedisDiscovery {
    async fn discover(&self) -> anyhow::Result<Vec<Discovered>> {
        let result = self.read_registry().await;
        if result.is_err() {
            // Start over with a fresh connection next time.
            *self.connection.lock().await = None;
        }
        result
    }

    async fn watch(&self) -> anyhow::Result<Option<BoxStream<'static, MembershipEvent>>> {
        let mut pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .context("connecting to Redis for membership events timed out")?
            .context("connecting to Redis for membership events")?;
        tokio::time::timeout(
            self.timeout,
            pubsub.subscribe(self.keys.membership_channel()),
        )
        .await
        .context("subscribing to membership events timed out")?
        .context("subscribing to membership events")?;
        let events = pubsub.into_on_message().filter_map(|message| async move {
            let payload: String = message.get_payload().ok()?;
            match serde_json::from_str::<MembershipEvent>(&payload) {
                Ok(event) => Some(event),
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring unreadable membership event");
                    None
                }
            }
        });
        Ok(Some(events.boxed()))
    }
}

/// Opens a command connection to Redis, `timeout` bounding the connect and every command.
/// Its driver task runs on the runtime that calls this; clones work from any thread.
pub async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connecting to Redis")
}

/// A registry entry as a [`Discovered`] node.
pub fn discovered(info: &NodeInfo) -> Discovered {
    Discovered {
        backend: Backend {
            id: info.id.clone(),
            addr: info.http_addr.clone(),
            weight: info.weight.max(1),
        },
        draining: info.status == NodeStatus::Draining,
    }
}
