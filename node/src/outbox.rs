//! Durable event publication: the transactional outbox.
//!
//! 1. Record: a service writes its domain events with [`record`] as the last step of the
//!    transaction that makes the change, so an event exists exactly when its change committed,
//!    and a write succeeds whether or not Redis is reachable.
//! 2. Order: [`record`] numbers each event with its topic's counter (`outbox_topic`), whose row
//!    lock is held until commit, so per topic the numbers follow commit order without gaps (the
//!    migration explains why an identity column would not).
//! 3. Relay: on every node a [`relay::Relay`] runs; per topic, the node holding the lease in
//!    `outbox_relay` appends the rows to the topic's Redis log in number order through the
//!    one append script ([`crate::events::log`]), which skips numbers it has applied already,
//!    then deletes them. `NOTIFY` at commit wakes the relays at once.
//!
//! Room messages and custom WebSocket events change no data; they are still published directly
//! ([`crate::events::Events::publish_envelope`]) and fail visibly to their sender.

pub mod relay;

use petmesh_shared::event::EventEnvelope;
use sqlx::{Postgres, Transaction};

/// The PostgreSQL notification channel a committed outbox row is announced on.
pub const CHANNEL: &str = "petmesh_outbox";

/// Inside `tx`, as its last statements: appends `events` to their topics' outboxes. Call it
/// right before `commit`, because the topic counters stay locked until then.
pub async fn record(
    tx: &mut Transaction<'static, Postgres>,
    mut events: Vec<EventEnvelope>,
) -> Result<(), sqlx::Error> {
    // Every transaction locks its topics' counters in one order (a stable sort keeps the
    // events of one topic as the caller listed them), so two writers never deadlock.
    events.sort_by(|a, b| a.topic.cmp(&b.topic));
    for event in &events {
        sqlx::query(
            "with next as (
                 insert into outbox_topic (topic, last_seq) values ($1, 1)
                 on conflict (topic) do update set last_seq = outbox_topic.last_seq + 1
                 returning last_seq)
             insert into outbox (topic, seq, event, payload, owner, node_id, occurred_at)
             select $1, last_seq, $2, $3, $4, $5, $6 from next",
        )
        .bind(&event.topic)
        .bind(&event.event)
        .bind(&event.payload)
        .bind(&event.owner)
        .bind(&event.node_id)
        .bind(event.timestamp)
        .execute(&mut **tx)
        .await?;
    }
    if !events.is_empty() {
        // Delivered at commit, and not at all on rollback.
        sqlx::query("select pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The outbox as [`crate::monitor`] samples it for `/metrics`.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct OutboxStats {
    /// Rows not yet delivered, all topics.
    pub pending: i64,
    /// Seconds since the oldest of them was written; 0 when none.
    pub oldest_secs: f64,
}

/// Samples the whole cluster's outbox. Delivered rows are deleted, so this counts only what
/// is waiting: a handful of rows normally, at most what piled up while Redis was away.
pub async fn stats(db: &sqlx::PgPool) -> Result<OutboxStats, sqlx::Error> {
    sqlx::query_as::<_, OutboxStats>(
        "select count(*) as pending,
                coalesce(extract(epoch from now() - min(created_at))::float8, 0) as oldest_secs
         from outbox",
    )
    .fetch_one(db)
    .await
}
