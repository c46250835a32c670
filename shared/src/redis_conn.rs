//! How the node and the balancer reach Redis: one server (`standalone`) or a Redis Cluster
//! (`cluster`), behind one command connection type and one subscriber type, so that callers
//! branch on the mode only where Redis itself differs (sharded pub/sub, see
//! [`RedisTarget::sharded_pubsub`]).
//!
//! In cluster mode the command connection routes every command by its key's slot, follows
//! `MOVED` and `ASK` redirections and refreshes the topology when a node fails; the key layout
//! ([`crate::registry::RedisKeys`]) keeps every multi-key command and script within one slot.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use redis::{
    aio::{ConnectionLike, ConnectionManager, MultiplexedConnection, PubSubSink, PubSubStream},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value,
};
use serde::Deserialize;
use tokio::sync::mpsc;

/// Which kind of Redis deployment `redis.url` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis server (possibly behind Sentinel-managed failover): `redis.url` is its URL.
    #[default]
    Standalone,
    /// A Redis Cluster: `redis.url` lists seed URLs, comma-separated; the rest of the cluster
    /// is discovered from them.
    Cluster,
}

impl RedisMode {
    /// The setting's value naming this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
        }
    }
}

impl std::str::FromStr for RedisMode {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<Self> {
        match value.trim() {
            "standalone" => Ok(Self::Standalone),
            "cluster" => Ok(Self::Cluster),
            other => bail!("unknown Redis mode {other:?}: expected `standalone` or `cluster`"),
        }
    }
}

/// Where Redis is and how long one connect or command may take. Its `Debug` leaves the URLs
/// out: they may hold a password.
#[derive(Clone)]
pub struct RedisTarget {
    mode: RedisMode,
    urls: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("mode", &self.mode)
            .field("urls", &self.urls.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisTarget {
    /// The Redis of `url` (one URL, or comma-separated seed URLs in cluster mode), every
    /// connect and command bounded by `timeout`.
    pub fn new(mode: RedisMode, url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let urls: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        match (mode, urls.len()) {
            (_, 0) => bail!("redis.url is empty"),
            (RedisMode::Standalone, n) if n > 1 => {
                bail!("redis.url lists {n} URLs; seed URLs need redis.mode = cluster")
            }
            _ => {}
        }
        for (index, url) in urls.iter().enumerate() {
            // The URL may hold a password: name its position, never the URL.
            redis::Client::open(url.as_str())
                .with_context(|| format!("URL {} of redis.url is not a Redis URL", index + 1))?;
        }
        Ok(Self {
            mode,
            urls,
            timeout,
        })
    }

    /// Standalone or cluster.
    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// Whether topic channels use sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, a Redis Cluster):
    /// each message then travels only within its channel's shard, so fan-out load spreads
    /// over the masters instead of crossing the whole cluster bus.
    pub fn sharded_pubsub(&self) -> bool {
        self.mode == RedisMode::Cluster
    }

    /// The bound on one connect or command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(self.urls[0].as_str())
    }

    fn cluster_client(
        &self,
        push: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> redis::RedisResult<ClusterClient> {
        let mut builder = ClusterClient::builder(self.urls.iter().map(String::as_str))
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if let Some(push) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push);
        }
        builder.build()
    }

    /// A command connection that connects in the background and heals itself (reconnects;
    /// in cluster mode also follows topology changes). Every clone shares it; commands from
    /// concurrent callers are pipelined on it. Fails only on invalid settings.
    pub fn lazy_connection(&self) -> anyhow::Result<RedisConnection> {
        let timeout = Some(self.timeout);
        Ok(match self.mode {
            RedisMode::Standalone => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                RedisConnection::Managed(ConnectionManager::new_lazy_with_config(
                    self.client()?,
                    config,
                )?)
            }
            RedisMode::Cluster => RedisConnection::Cluster(
                self.cluster_client(None)?
                    .get_pending_async_connection_with_config(Default::default()),
            ),
        })
    }

    /// A command connection, connected now (an error if Redis does not answer in time). The
    /// caller replaces it after an error.
    pub async fn connect(&self) -> anyhow::Result<RedisConnection> {
        let connecting = async {
            anyhow::Ok(match self.mode {
                RedisMode::Standalone => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout));
                    RedisConnection::Multiplexed(
                        self.client()?
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
                RedisMode::Cluster => RedisConnection::Cluster(
                    self.cluster_client(None)?.get_async_connection().await?,
                ),
            })
        };
        tokio::time::timeout(self.timeout, connecting)
            .await
            .context("connecting to Redis timed out")?
            .context("connecting to Redis")
    }

    /// A pub/sub connection, connected now: a sink to (un)subscribe with and the stream of
    /// messages. In cluster mode it holds one connection per shard, and the stream ends when
    /// any of them drops or a shard drops a subscription by itself (its slot moved to another
    /// master), so the caller subscribes afresh (and fills what it missed) rather than trusting
    /// a half-recovered set of subscriptions.
    pub async fn subscriber(&self) -> anyhow::Result<(SubscriptionSink, MessageStream)> {
        let connecting = async {
            anyhow::Ok(match self.mode {
                RedisMode::Standalone => {
                    let (sink, stream) = self.client()?.get_async_pubsub().await?.split();
                    (
                        SubscriptionSink::Standalone(sink),
                        MessageStream::Standalone(stream),
                    )
                }
                RedisMode::Cluster => {
                    let (push, received) = mpsc::unbounded_channel();
                    let connection = self
                        .cluster_client(Some(push))?
                        .get_async_connection()
                        .await?;
                    let leaving = Arc::new(Mutex::new(HashSet::new()));
                    (
                        SubscriptionSink::Cluster {
                            connection,
                            leaving: Arc::clone(&leaving),
                        },
                        MessageStream::Cluster { received, leaving },
                    )
                }
            })
        };
        tokio::time::timeout(self.timeout, connecting)
            .await
            .context("connecting to Redis for pub/sub timed out")?
            .context("connecting to Redis for pub/sub")
    }
}

/// A Redis command connection in either mode; clones share it. Use it wherever a
/// [`redis::aio::ConnectionLike`] goes (`query_async`, `Script::invoke_async`, pipelines).
#[derive(Clone)]
pub enum RedisConnection {
    /// Standalone, connected lazily and re-established in the background.
    Managed(ConnectionManager),
    /// Standalone, connected eagerly; replaced by its owner after an error.
    Multiplexed(MultiplexedConnection),
    /// A Redis Cluster: one multiplexed connection per node, commands routed by slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Managed(_) => "RedisConnection::Managed",
            Self::Multiplexed(_) => "RedisConnection::Multiplexed",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Multiplexed(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Multiplexed(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where subscriptions are made.
pub enum SubscriptionSink {
    /// One pub/sub connection to a standalone Redis.
    Standalone(PubSubSink),
    /// A RESP3 cluster connection: subscriptions go to the node serving the channel's slot.
    Cluster {
        /// The connection (one per Redis node).
        connection: ClusterConnection,
        /// Channels being unsubscribed on request, so the stream can tell those confirmations
        /// from a shard dropping a subscription by itself.
        leaving: Arc<Mutex<HashSet<String>>>,
    },
}

impl SubscriptionSink {
    /// Subscribes to a cluster-wide channel (`SUBSCRIBE`: every message reaches every node of a
    /// Redis Cluster; for low-rate announcements).
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(sink) => sink.subscribe(channel).await,
            Self::Cluster { connection, .. } => connection.subscribe(channel).await,
        }
    }

    /// Subscribes to a topic channel: `SSUBSCRIBE` in a Redis Cluster (see
    /// [`RedisTarget::sharded_pubsub`]), `SUBSCRIBE` otherwise.
    pub async fn subscribe_topic(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(sink) => sink.subscribe(channel).await,
            Self::Cluster { connection, .. } => connection.ssubscribe(channel).await,
        }
    }

    /// Undoes [`SubscriptionSink::subscribe_topic`].
    pub async fn unsubscribe_topic(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(sink) => sink.unsubscribe(channel).await,
            Self::Cluster {
                connection,
                leaving,
            } => {
                leaving
                    .lock()
                    .expect("leaving channels lock")
                    .insert(channel.to_owned());
                connection.sunsubscribe(channel).await
            }
        }
    }
}

/// The messages of a subscriber connection.
pub enum MessageStream {
    /// From a standalone Redis.
    Standalone(PubSubStream),
    /// Pushes from every node of a Redis Cluster.
    Cluster {
        /// The pushes.
        received: mpsc::UnboundedReceiver<PushInfo>,
        /// Shared with the sink (see [`SubscriptionSink::Cluster`]).
        leaving: Arc<Mutex<HashSet<String>>>,
    },
}

impl MessageStream {
    /// The next message as (channel, payload); `None` once the connection is lost (in cluster
    /// mode: any of its node connections, or a subscription a shard dropped by itself).
    pub async fn next(&mut self) -> Option<(String, String)> {
        match self {
            Self::Standalone(stream) => loop {
                let message = stream.next().await?;
                if let Ok(payload) = message.get_payload::<String>() {
                    return Some((message.get_channel_name().to_owned(), payload));
                }
            },
            Self::Cluster { received, leaving } => loop {
                let push = received.recv().await?;
                match push.kind {
                    PushKind::Message | PushKind::SMessage => {
                        if let Some(message) = channel_and_payload(push.data) {
                            return Some(message);
                        }
                    }
                    PushKind::Disconnection => return None,
                    PushKind::SUnsubscribe => {
                        let channel = push
                            .data
                            .into_iter()
                            .next()
                            .and_then(|c| redis::from_redis_value::<String>(c).ok())
                            .unwrap_or_default();
                        let asked = leaving
                            .lock()
                            .expect("leaving channels lock")
                            .remove(&channel);
                        if !asked {
                            // The channel's slot moved to another master, which dropped it.
                            return None;
                        }
                    }
                    _ => {}
                }
            },
        }
    }
}

/// `[channel, payload]` of a message push.
fn channel_and_payload(data: Vec<Value>) -> Option<(String, String)> {
    let mut data = data.into_iter();
    let channel = redis::from_redis_value::<String>(data.next()?).ok()?;
    let payload = redis::from_redis_value::<String>(data.next()?).ok()?;
    Some((channel, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(mode: RedisMode, url: &str) -> anyhow::Result<RedisTarget> {
        RedisTarget::new(mode, url, Duration::from_secs(1))
    }

    #[test]
    fn cluster_mode_takes_a_list_of_seeds_and_standalone_one_url() {
        let seeds = target(
            RedisMode::Cluster,
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000,",
        )
        .unwrap();
        assert_eq!(
            seeds.urls,
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        assert!(seeds.sharded_pubsub());
        let err = target(RedisMode::Standalone, "redis://a:1,redis://b:1").unwrap_err();
        assert!(err.to_string().contains("redis.mode = cluster"), "{err}");
        assert!(target(RedisMode::Cluster, " , ").is_err());
        assert!(!target(RedisMode::Standalone, "redis://a:1")
            .unwrap()
            .sharded_pubsub());
    }

    #[test]
    fn modes_parse_as_the_setting_names_them() {
        for mode in [RedisMode::Standalone, RedisMode::Cluster] {
            assert_eq!(mode.as_str().parse::<RedisMode>().unwrap(), mode);
        }
        assert!("sentinel".parse::<RedisMode>().is_err());
    }

    #[test]
    fn an_invalid_url_is_named_by_position_not_by_its_text() {
        let err = target(RedisMode::Cluster, "redis://a:1,http://user:secret@b:1").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("URL 2 of redis.url"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
