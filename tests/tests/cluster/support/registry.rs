//! The cluster registry read straight from Redis, with the key layout and types of
//! `petmesh-shared`, so the tests check what nodes really write rather than what a balancer
//! makes of it. Works with either Redis mode (see `petmesh_tests::redis_mode`).

use std::collections::BTreeSet;

use futures_util::StreamExt as _;
use petmesh_shared::registry::{MembershipEvent, NodeInfo, RedisKeys};
use petmesh_tests::redis_mode::seed_urls;
use petmesh_tests::{eventually::patience, RedisConnection, TestCluster};

/// Reads one cluster's registry.
pub struct Registry {
    /// To open subscriptions: the (first seed) server. In a Redis Cluster a plain `PUBLISH`
    /// reaches the subscribers of every member, so any one of them will do.
    client: redis::Client,
    /// For reads, routed by key in cluster mode; cloned per call (clones share the
    /// connection).
    conn: RedisConnection,
    /// The cluster's key layout.
    keys: RedisKeys,
}

/// Membership announcements, in the order published, from the moment of subscription.
pub struct MembershipEvents {
    /// The subscription's messages.
    messages: std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>,
}

impl Registry {
    /// Connects to the Redis of `cluster`, in its mode.
    pub async fn connect(cluster: &TestCluster) -> Self {
        let first = seed_urls(cluster.redis_url())[0];
        let client = redis::Client::open(first).unwrap();
        let conn = cluster.redis_connection().await.unwrap();
        Self {
            client,
            conn,
            keys: RedisKeys::new(cluster.cluster_name()),
        }
    }

    /// The entry of node `id`, if it exists (and has not expired).
    pub async fn entry(&self, id: &str) -> Option<NodeInfo> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.keys.node(id))
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        json.map(|json| serde_json::from_str(&json).expect("a registry entry is a NodeInfo"))
    }

    /// Milliseconds until the entry of node `id` expires (negative: gone or no TTL).
    pub async fn ttl_ms(&self, id: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(self.keys.node(id))
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    /// The registered node ids (entries may have expired since).
    pub async fn members(&self) -> BTreeSet<String> {
        redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut self.conn.clone())
            .await
            .unwrap()
    }

    /// Subscribes to the membership channel; events published from now on are delivered.
    pub async fn events(&self) -> MembershipEvents {
        let mut pubsub = self.client.get_async_pubsub().await.unwrap();
        pubsub
            .subscribe(self.keys.membership_channel())
            .await
            .unwrap();
        MembershipEvents {
            messages: Box::pin(pubsub.into_on_message()),
        }
    }
}

impl MembershipEvents {
    /// The next announcement; panics when none comes within the patience.
    pub async fn next(&mut self) -> MembershipEvent {
        let message = tokio::time::timeout(patience(), self.messages.next())
            .await
            .unwrap_or_else(|_| panic!("no membership event within {:?}", patience()))
            .expect("the subscription stays open");
        let payload: String = message.get_payload().unwrap();
        serde_json::from_str(&payload)
            .unwrap_or_else(|e| panic!("not a MembershipEvent ({e}): {payload}"))
    }

    /// The next announcement about node `id`, skipping those about other nodes.
    pub async fn next_about(&mut self, id: &str) -> MembershipEvent {
        loop {
            let event = self.next().await;
            if event.node.id == id {
                return event;
            }
        }
    }
}
