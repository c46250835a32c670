//! The cluster event envelope: what a node publishes to Redis after a change commits, and what
//! every node fans out to its WebSocket subscribers.

use serde::{Deserialize, Serialize};

/// One domain event (`pet:created`, `order:updated`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    /// Event name, `<resource>:<change>`.
    pub event: String,
    /// Topic subscribers ask for (`pets`, `orders`).
    pub topic: String,
    /// The resource as of the change.
    pub payload: serde_json::Value,
    /// The user the event concerns (an order's owner); `None` for public events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the change committed, Unix milliseconds.
    pub timestamp: i64,
    /// The node that made the change.
    pub node_id: String,
    /// The WebSocket connection (`<node id>/<connection id>`) that caused the event, which
    /// does not receive it back (custom events re-broadcast to a room's other members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
