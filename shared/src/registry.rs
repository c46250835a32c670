//! The cluster registry and the Redis key layout, defined here and nowhere else.
//!
//! Every key starts with `petmesh:<cluster>:` so that several clusters can share one Redis.
//!
//! **Slots.** In a Redis Cluster a key's slot comes from its hash tag, the part between the
//! first `{` and `}`. The layout chooses tags so that every multi-key command, transaction and
//! script stays within one slot while unrelated keys spread over the shards:
//! - a topic's offsets hash, history stream and channel share the tag `{<topic>}`, so the
//!   publish script is one atomic script on one shard and the channel is sharded with them;
//! - the registry (entries, id set, membership channel) shares `{registry}`: nodes write an
//!   entry and the set in one transaction, readers `MGET` every entry at once;
//! - a user's revocation keys share `{user:<id>}` (one `MGET` per authenticated request);
//! - the login lock-out state shares `{login}` (one script reads a name's and an address's);
//! - the WebSocket slots of one address are tagged by the address; the rest are single keys.
//!
//! Topic names never contain braces (they are alphanumeric with `_ . : -`), so a topic's tag is
//! exactly its name.
//!
//! Membership protocol (nodes write, balancers read):
//! 1. A node writes its [`NodeInfo`] as JSON to [`RedisKeys::node`] with a TTL of
//!    [`NODE_TTL_SECS`], adds its id to the set [`RedisKeys::nodes`], and publishes a
//!    [`MembershipEvent`] on [`RedisKeys::membership_channel`].
//! 2. It rewrites the entry every [`HEARTBEAT_INTERVAL_MS`] (fresh load figures, TTL renewed).
//! 3. On shutdown it publishes `draining` (status [`NodeStatus::Draining`]), finishes its work,
//!    then deletes its entry, removes its id from the set and publishes `left`.
//! 4. A node that dies stops heartbeating; its entry expires. Readers treat ids in the set whose
//!    entry is gone as departed (and may remove them from the set).

use serde::{Deserialize, Serialize};

/// How often a node refreshes its registry entry.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// How long a registry entry lives without a refresh.
pub const NODE_TTL_SECS: u64 = 5;

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Serving and accepting new work.
    Ready,
    /// Shutting down: finishing in-flight work, must get no new work.
    Draining,
}

/// One node's registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Unique node id.
    pub id: String,
    /// Where the node's HTTP (and WebSocket) API is reachable, `host:port`.
    pub http_addr: String,
    /// Build version of the node.
    pub version: String,
    /// Relative capacity for weighted strategies (default 1).
    pub weight: u32,
    /// Failure domain (rack, zone); empty when unknown.
    pub zone: String,
    /// Ready or draining.
    pub status: NodeStatus,
    /// When the node started, Unix milliseconds.
    pub started_at_ms: i64,
    /// When this entry was written, Unix milliseconds.
    pub updated_at_ms: i64,
    /// HTTP requests being served at `updated_at_ms`.
    pub in_flight: u64,
    /// Open WebSocket connections at `updated_at_ms`.
    pub ws_connections: u64,
}

/// What happened to a node, published on the membership channel as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipKind {
    /// The node registered and is ready.
    Joined,
    /// The node turned draining: send it no new work.
    Draining,
    /// The node deregistered.
    Left,
}

/// A membership change announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipEvent {
    /// What happened.
    pub kind: MembershipKind,
    /// The node's entry as of the change.
    pub node: NodeInfo,
}

/// Builds the Redis keys and channel names of one cluster.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    /// `petmesh:{cluster}:`, computed once.
    prefix: String,
}

impl RedisKeys {
    /// The key layout of cluster `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("petmesh:{cluster}:"),
        }
    }

    /// The prefix shared by every key of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A node's registry entry (JSON [`NodeInfo`], with TTL).
    pub fn node(&self, node_id: &str) -> String {
        format!("{}{{registry}}:node:{node_id}", self.prefix)
    }

    /// The set of registered node ids (entries may have expired since; see the module doc).
    pub fn nodes(&self) -> String {
        format!("{}{{registry}}:nodes", self.prefix)
    }

    /// The pub/sub channel carrying [`MembershipEvent`]s.
    pub fn membership_channel(&self) -> String {
        format!("{}{{registry}}:events", self.prefix)
    }

    /// The pub/sub channel carrying the [`crate::event::EventEnvelope`]s of `topic` (sharded
    /// in a Redis Cluster: see [`crate::redis_conn::RedisTarget::sharded_pubsub`]).
    pub fn event_channel(&self, topic: &str) -> String {
        format!("{}events:{{{topic}}}", self.prefix)
    }

    /// The topic whose [`RedisKeys::event_channel`] is `channel`, if it is one.
    pub fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("events:{")?
            .strip_suffix('}')
    }

    /// The offset counter of `topic`: a hash with `epoch` (random, new whenever the history
    /// is lost), `seq` (the last offset given out), `outbox` (the last outbox row applied) and
    /// `replid` (the replication id of the Redis that wrote it, to notice a failover).
    pub fn topic_offsets(&self, topic: &str) -> String {
        format!("{}events:offsets:{{{topic}}}", self.prefix)
    }

    /// The bounded history of `topic`: a stream whose entry ids are `<seq>-0`.
    pub fn topic_history(&self, topic: &str) -> String {
        format!("{}events:history:{{{topic}}}", self.prefix)
    }

    /// The pub/sub channel on which revocations are announced, so every node closes the
    /// WebSocket connections of revoked sessions at once.
    pub fn revocation_channel(&self) -> String {
        format!("{}auth:revocations", self.prefix)
    }

    /// The cached copy of pet `pet_id` (`<version>|<json>`, empty JSON for a deleted pet).
    pub fn pet_cache(&self, pet_id: i64) -> String {
        format!("{}cache:pet:{pet_id}", self.prefix)
    }

    /// Marks one access token of user `user_id` (by its `jti`) as revoked; expires with the
    /// token. Shares the user's slot with [`RedisKeys::sessions_revoked_before`].
    pub fn revoked_token(&self, user_id: &str, jti: &str) -> String {
        format!("{}auth:{{user:{user_id}}}:revoked-jti:{jti}", self.prefix)
    }

    /// Holds the Unix time in milliseconds before which every access token of a user is revoked
    /// (logout-all, role or status change, deletion); expires when the last such token would
    /// have.
    pub fn sessions_revoked_before(&self, user_id: &str) -> String {
        format!("{}auth:{{user:{user_id}}}:revoked-before", self.prefix)
    }

    /// The failed-login state of one login name (a hash: consecutive `failures`, lock `level`,
    /// locked `until`), keyed by a digest of the lower-cased name so any name makes a short key.
    pub fn login_failures(&self, name_digest: &str) -> String {
        format!("{}auth:{{login}}:failures:{name_digest}", self.prefix)
    }

    /// A rate-limit bucket (its theoretical arrival time, Unix ms, with a TTL): budget `class`
    /// of `subject` (`user:<id>` or `ip:<address>`).
    pub fn rate_limit(&self, class: &str, subject: &str) -> String {
        format!("{}ratelimit:{class}:{subject}", self.prefix)
    }

    /// Failed logins from one client address in its current window (a counter with a TTL).
    pub fn login_ip_failures(&self, ip: &str) -> String {
        format!("{}auth:{{login}}:ip-failures:{ip}", self.prefix)
    }

    /// The WebSocket slots one client address holds across every balancer: a hash, field =
    /// balancer instance id, value `<count>:<lease expiry, Unix ms>:<sequence>`, expiring as a
    /// whole after the longest lease. The address is the hash tag (`{...}`), so the key keeps
    /// its own slot in a Redis Cluster and addresses spread over the cluster's slots.
    pub fn ws_slots(&self, ip: &str) -> String {
        format!("{}ws-slots:{{{ip}}}", self.prefix)
    }

    /// The balancers of the cluster: a sorted set of instance ids scored by when their
    /// registration lapses (Unix ms); each balancer renews its own and counts the live ones.
    pub fn balancers(&self) -> String {
        format!("{}balancers", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_cluster_prefix() {
        let keys = RedisKeys::new("blue");
        assert_eq!(
            keys.revoked_token("u1", "j1"),
            "petmesh:blue:auth:{user:u1}:revoked-jti:j1"
        );
        assert_eq!(
            keys.sessions_revoked_before("u1"),
            "petmesh:blue:auth:{user:u1}:revoked-before"
        );
        assert_eq!(keys.node("n1"), "petmesh:blue:{registry}:node:n1");
        assert_eq!(keys.pet_cache(7), "petmesh:blue:cache:pet:7");
        assert_eq!(
            keys.rate_limit("general", "ip:127.0.0.9"),
            "petmesh:blue:ratelimit:general:ip:127.0.0.9"
        );
        assert_eq!(
            keys.login_failures("ab12"),
            "petmesh:blue:auth:{login}:failures:ab12"
        );
        assert_eq!(
            keys.login_ip_failures("127.0.0.9"),
            "petmesh:blue:auth:{login}:ip-failures:127.0.0.9"
        );
        assert_eq!(keys.nodes(), "petmesh:blue:{registry}:nodes");
        assert_eq!(
            keys.ws_slots("2001:db8::1"),
            "petmesh:blue:ws-slots:{2001:db8::1}"
        );
        assert_eq!(keys.balancers(), "petmesh:blue:balancers");
        assert_eq!(keys.membership_channel(), "petmesh:blue:{registry}:events");
        assert_eq!(keys.event_channel("pets"), "petmesh:blue:events:{pets}");
        assert_eq!(
            keys.topic_offsets("room:r1"),
            "petmesh:blue:events:offsets:{room:r1}"
        );
        assert_eq!(
            keys.topic_history("room:r1"),
            "petmesh:blue:events:history:{room:r1}"
        );
        assert_eq!(keys.revocation_channel(), "petmesh:blue:auth:revocations");
        assert!(RedisKeys::new("green")
            .revoked_token("u", "j1")
            .starts_with("petmesh:green:"));
    }

    /// The hash tag: what a Redis Cluster hashes to choose a key's slot.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a tagged key");
        let close = open + key[open..].find('}').expect("a closed tag");
        &key[open + 1..close]
    }

    #[test]
    fn keys_used_together_share_a_hash_tag() {
        let keys = RedisKeys::new("blue");
        for topic in ["pets", "room:r1", "user:42"] {
            assert_eq!(tag(&keys.topic_offsets(topic)), topic);
            assert_eq!(tag(&keys.topic_history(topic)), topic);
            assert_eq!(tag(&keys.event_channel(topic)), topic);
            assert_eq!(
                keys.topic_of_channel(&keys.event_channel(topic)),
                Some(topic)
            );
        }
        assert_eq!(keys.topic_of_channel(&keys.revocation_channel()), None);
        assert_eq!(tag(&keys.node("n1")), tag(&keys.nodes()));
        assert_eq!(tag(&keys.membership_channel()), tag(&keys.nodes()));
        assert_eq!(
            tag(&keys.revoked_token("u1", "j1")),
            tag(&keys.sessions_revoked_before("u1"))
        );
        assert_ne!(
            tag(&keys.sessions_revoked_before("u1")),
            tag(&keys.sessions_revoked_before("u2"))
        );
        assert_eq!(
            tag(&keys.login_failures("ab")),
            tag(&keys.login_ip_failures("10.0.0.1"))
        );
    }

    #[test]
    fn node_info_is_camel_case_json() {
        let info = NodeInfo {
            id: "node-1".into(),
            http_addr: "127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            weight: 1,
            zone: String::new(),
            status: NodeStatus::Draining,
            started_at_ms: 1,
            updated_at_ms: 2,
            in_flight: 3,
            ws_connections: 4,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["httpAddr"], "127.0.0.1:8080");
        assert_eq!(json["status"], "draining");
        let event = MembershipEvent {
            kind: MembershipKind::Joined,
            node: info,
        };
        let round: MembershipEvent =
            serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(round, event);
    }
}
