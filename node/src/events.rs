//! The one publisher of domain events. Services call [`Events::publish`] after their
//! transaction commits, so subscribers never hear of a change that did not happen. Each event
//! goes through the topic's [`log::EventLog`] (offset, history, pub/sub in one script), and
//! every node fans it out to its own WebSocket connections ([`crate::realtime`]).

pub mod log;

use petmesh_shared::event::EventEnvelope;
use prometheus::IntCounterVec;
use serde::Serialize;

use self::log::{EventLog, Offset};

/// Publishes events on the cluster's per-topic logs.
#[derive(Clone)]
pub struct Events {
    /// The per-topic logs in Redis.
    log: EventLog,
    /// The publishing node, recorded in each envelope.
    node_id: String,
    /// `petmesh_node_events_published_total{event,result}`.
    published: IntCounterVec,
}

impl Events {
    /// A publisher appending to `log`, counting into `published`.
    pub fn new(log: EventLog, node_id: String, published: IntCounterVec) -> Self {
        Self {
            log,
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
        let envelope = self.envelope(
            event,
            topic,
            serde_json::to_value(payload).expect("domain payloads serialise"),
            owner,
            None,
        );
        if let Err(err) = self.publish_envelope(&envelope).await {
            tracing::warn!(event, error = %err, "publishing a domain event failed");
        }
    }

    /// An envelope stamped with this node and the current time.
    pub fn envelope(
        &self,
        event: &str,
        topic: &str,
        payload: serde_json::Value,
        owner: Option<String>,
        origin: Option<String>,
    ) -> EventEnvelope {
        EventEnvelope {
            event: event.to_owned(),
            topic: topic.to_owned(),
            payload,
            owner,
            timestamp: chrono::Utc::now().timestamp_millis(),
            node_id: self.node_id.clone(),
            origin,
        }
    }

    /// Appends `envelope` to its topic's log and publishes it, counting the outcome.
    pub async fn publish_envelope(&self, envelope: &EventEnvelope) -> anyhow::Result<Offset> {
        let result = self.log.append(envelope).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.published
            .with_label_values(&[envelope.event.as_str(), outcome])
            .inc();
        result
    }
}
