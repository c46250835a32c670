//! Event envelopes and their publication. Domain events (pets, orders) are built here
//! ([`Events::envelope`]) but written to the PostgreSQL outbox in their change's transaction
//! ([`crate::outbox`]), whose relay appends them to Redis; room messages and custom events,
//! which change no data, are published directly ([`Events::publish_envelope`]). Either way an
//! event goes through its topic's [`log::EventLog`] (offset, history, pub/sub in one script),
//! and every node fans it out to its own WebSocket connections ([`crate::realtime`]).

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

    /// A domain event about `payload` on `topic`, for [`crate::outbox::record`].
    pub fn domain(
        &self,
        event: &str,
        topic: &str,
        payload: &impl Serialize,
        owner: Option<String>,
    ) -> EventEnvelope {
        let payload = serde_json::to_value(payload).expect("domain payloads serialise");
        self.envelope(event, topic, payload, owner, None)
    }

    /// The per-topic logs (for the outbox relay).
    pub fn log(&self) -> &EventLog {
        &self.log
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
