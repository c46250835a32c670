//! Where the node set comes from: [`RedisDiscovery`] reads the registry the nodes write
//! (protocol in [`petmesh_shared::registry`]), [`StaticDiscovery`] is a fixed list from the
//! settings (benchmarks, tests, clusters without Redis).
//!
//! Discovery only reports; [`crate::background`] applies what it reports to the
//! [`Membership`](crate::backend::Membership), keeps the last known set when a round fails,
//! and resubscribes when the event stream breaks.

use std::future::Future;

use anyhow::Context as _;
use futures_util::{stream::BoxStream, StreamExt as _};
use petmesh_shared::{
    redis_conn::{RedisConnection, RedisTarget},
    registry::{MembershipEvent, NodeInfo, NodeStatus, RedisKeys},
};
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
                zone: String::new(),
            })
            .collect())
    }
}

/// The Redis node registry of one cluster.
#[derive(Debug)]
pub struct RedisDiscovery {
    /// Where Redis is (standalone or a Redis Cluster), and the bound on each command.
    target: RedisTarget,
    /// The cluster's key layout.
    keys: RedisKeys,
    /// The command connection, opened on first use and replaced after an error.
    connection: Mutex<Option<RedisConnection>>,
}

impl RedisDiscovery {
    /// The registry of cluster `cluster` in the Redis at `target`.
    pub fn new(target: RedisTarget, cluster: &str) -> Self {
        Self {
            target,
            keys: RedisKeys::new(cluster),
            connection: Mutex::new(None),
        }
    }

    async fn connection(&self) -> anyhow::Result<RedisConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.target.connect().await?;
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
        let (mut sink, messages) = self.target.subscriber().await?;
        tokio::time::timeout(
            self.target.timeout(),
            sink.subscribe(&self.keys.membership_channel()),
        )
        .await
        .context("subscribing to membership events timed out")?
        .context("subscribing to membership events")?;
        // The sink travels with the stream: dropping it would end the subscription.
        let messages =
            futures_util::stream::unfold((sink, messages), |(sink, mut messages)| async move {
                let (_, payload) = messages.next().await?;
                Some((payload, (sink, messages)))
            });
        let events = messages.filter_map(|payload| async move {
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

/// A registry entry as a [`Discovered`] node.
pub fn discovered(info: &NodeInfo) -> Discovered {
    Discovered {
        backend: Backend {
            id: info.id.clone(),
            addr: info.http_addr.clone(),
            weight: info.weight.max(1),
        },
        draining: info.status == NodeStatus::Draining,
        zone: info.zone.clone(),
    }
}
