//! The `outbox` section: how the relay of committed domain events runs.

use serde::Deserialize;

/// Durable event publication: the relay that moves committed domain events from the
/// PostgreSQL outbox to Redis ([`crate::outbox`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxSettings {
    /// How long a node keeps relaying a topic without renewing its lease; renewed every third
    /// of it. A node that dies hands its topics to another after at most this long.
    pub lease_secs: u64,
    /// How often an idle relay looks for events without being woken (writes wake it at once
    /// through PostgreSQL `NOTIFY`), and how often nodes try to take over a topic whose lease
    /// ran out.
    pub poll_interval_ms: u64,
    /// Events relayed per topic in one pass (and deleted by one statement).
    pub batch_size: i64,
    /// Longest wait between two attempts while Redis (or PostgreSQL) is unreachable; the wait
    /// starts at 50 ms and doubles up to this.
    pub retry_max_ms: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            lease_secs: 5,
            poll_interval_ms: 500,
            batch_size: 256,
            retry_max_ms: 1000,
        }
    }
}
