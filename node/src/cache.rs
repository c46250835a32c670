//! The Redis read cache for pets, versioned so that no node serves a pet older than the last
//! acknowledged write.
//!
//! Entries are `<version>|<json>` (empty JSON marks a deleted pet). Readers fill the cache after
//! a database read and writers overwrite it after their commit, both through one script that
//! stores only if the entry is newer than what is cached. So a slow reader holding an old copy
//! can never overwrite a newer one, and a write is visible to every node before its response
//! goes out. Redis unavailable: reads go to PostgreSQL; a write whose cache update failed is
//! bounded by `cache.pet_ttl_secs`.

use std::{sync::LazyLock, time::Duration};

use petmesh_shared::registry::RedisKeys;
use prometheus::IntCounterVec;

use serde::{de::DeserializeOwned, Serialize};

use crate::config::Redis;

/// Stores ARGV[2] at KEYS[1] with version ARGV[1] unless the cached version is the same or newer.
static STORE_IF_NEWER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local current = redis.call('GET', KEYS[1])
        if current then
            local version = tonumber(string.match(current, '^(%d+)|'))
            if version and version >= tonumber(ARGV[1]) then return 0 end
        end
        redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
        return 1
        ",
    )
});

/// What the cache knows about a pet (`T`: the pet as the caller models it; the cache only
/// stores its JSON, so it does not depend on the catalogue's types).
#[derive(Debug)]
pub enum Cached<T> {
    /// The pet as of its latest write.
    Present(Box<T>),
    /// The pet was deleted.
    Deleted,
    /// Nothing cached (or Redis unavailable): ask PostgreSQL.
    Unknown,
}

/// Pet cache over the shared Redis pool.
#[derive(Clone)]
pub struct PetCache {
    /// Shared Redis pool.
    redis: Redis,
    /// Key layout.
    keys: RedisKeys,
    /// Entry lifetime.
    ttl: Duration,
    /// `petmesh_node_cache_requests_total{cache,result}`.
    requests: IntCounterVec,
}

impl PetCache {
    /// A cache whose entries live `ttl`.
    pub fn new(redis: Redis, keys: RedisKeys, ttl: Duration, requests: IntCounterVec) -> Self {
        Self {
            redis,
            keys,
            ttl,
            requests,
        }
    }

    /// The cached pet, if any. Errors count as misses: the database answers instead.
    pub async fn get<T: DeserializeOwned>(&self, pet_id: i64) -> Cached<T> {
        let result: anyhow::Result<Option<String>> = async {
            let mut conn = self.redis.clone();
            Ok(redis::cmd("GET")
                .arg(self.keys.pet_cache(pet_id))
                .query_async(&mut conn)
                .await?)
        }
        .await;
        let cached = match result {
            Ok(Some(entry)) => match entry.split_once('|') {
                Some((_, "")) => Cached::Deleted,
                Some((_, json)) => serde_json::from_str(json)
                    .map_or(Cached::Unknown, |pet| Cached::Present(Box::new(pet))),
                None => Cached::Unknown,
            },
            Ok(None) => Cached::Unknown,
            Err(err) => {
                tracing::debug!(error = %err, "pet cache unavailable");
                self.requests.with_label_values(&["pet", "error"]).inc();
                return Cached::Unknown;
            }
        };
        let result = if matches!(cached, Cached::Unknown) {
            "miss"
        } else {
            "hit"
        };
        self.requests.with_label_values(&["pet", result]).inc();
        cached
    }

    /// Caches `pet` (pet `pet_id` at `version`) unless a newer version is cached already.
    pub async fn store<T: Serialize>(&self, pet_id: i64, version: i32, pet: &T) {
        let json = serde_json::to_string(pet).expect("pets serialise");
        self.store_raw(pet_id, version, &json).await;
    }

    /// Marks `pet_id` deleted; `last_version` is the version it had.
    pub async fn store_deleted(&self, pet_id: i64, last_version: i32) {
        self.store_raw(pet_id, last_version + 1, "").await;
    }

    async fn store_raw(&self, pet_id: i64, version: i32, json: &str) {
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.clone();
            STORE_IF_NEWER
                .key(self.keys.pet_cache(pet_id))
                .arg(version)
                .arg(json)
                .arg(self.ttl.as_secs())
                .invoke_async::<i64>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(err) = result {
            self.requests.with_label_values(&["pet", "error"]).inc();
            tracing::debug!(pet_id, error = %err, "updating the pet cache failed; entry expires within the cache TTL");
        }
    }
}
