//! The one publisher of domain events. Services call [`Events::publish`] after their
//! transaction commits, so subscribers never hear of a change that did not happen; every node
//! fans the events out to its own WebSocket connections (real-time issue).

use petmesh_shared::{event::EventEnvelope, registry::RedisKeys};
use prometheus::IntCounterVec;
use serde::Serialize;

use crate::state::Redis;

/// Publishes events on the cluster's Redis channels.
#[derive(Clone)]
pub struct Events {
    /// Shared Redis pool.
    redis: Redis,
    /// Channel names.
    keys: RedisKeys,
    /// The publishing node, recorded in each envelope.
    node_id: String,
    /// `petmesh_node_events_published_total{event,result}`.
    published: IntCounterVec,
}

impl Events {
    /// A publisher over `redis`, counting into `published`.
    pub fn new(redis: Redis, keys: RedisKeys, node_id: String, published: IntCounterVec) -> Self {
        Self {
            redis,
            keys,
            node_id,
            published,
        }
    }

    /// Publishes `event` about `payload` on `topic`. The change is already committed, so a Redis
    /// failure cannot undo it: it is logged and counted, and the caller's response stands.
    pub async fn publish(
        &self,
        event: &str,
        topic: &str,
        payload: &impl Serialize,
        owner: Option<String>,
    ) {
        let envelope = EventEnvelope {
            event: event.to_owned(),
            topic: topic.to_owned(),
            payload: serde_json::to_value(payload).expect("domain payloads serialise"),
            owner,
            timestamp: chrono::Utc::now().timestamp_millis(),
            node_id: self.node_id.clone(),
        };
        let result = self.send(&envelope).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.published.with_label_values(&[event, outcome]).inc();
        if let Err(err) = result {
            tracing::warn!(event, error = %err, "publishing a domain event failed");
        }
    }

    async fn send(&self, envelope: &EventEnvelope) -> anyhow::Result<()> {
        let mut conn = self.redis.clone();
        let body = serde_json::to_string(envelope)?;
        redis::cmd("PUBLISH")
            .arg(self.keys.event_channel(&envelope.topic))
            .arg(body)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }
}
