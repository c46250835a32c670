//! The relay every node runs: moves committed outbox rows to Redis, one node per topic.
//!
//! One pass, per topic:
//! 1. Lease: take or renew the topic's row in `outbox_relay` (holder, `lease_until`). It lives
//!    in PostgreSQL so that leases keep working while Redis is away. A holder renews it every
//!    third of `outbox.lease_secs`; any node takes it over once it has run out (its node died
//!    or hung), and a draining node gives its leases up.
//! 2. Read the topic's oldest `outbox.batch_size` rows (all rows present are undelivered).
//! 3. Append them in order through the append script with their numbers; the script skips a
//!    number it applied before, so rows appended by a relay that died (or timed out, or lost
//!    its lease mid-batch) before step 4 are not delivered twice.
//! 4. Mark: raise `delivered_seq` and delete the appended rows, in one transaction.
//!
//! Between passes the relay sleeps until a `NOTIFY` from a committing writer (on any node),
//! or at most `outbox.poll_interval_ms`. When a pass fails (Redis or PostgreSQL unreachable)
//! it waits 50 ms, doubling up to `outbox.retry_max_ms`, and logs once per outage.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use petmesh_shared::event::EventEnvelope;
use prometheus::IntCounterVec;
use sqlx::{postgres::PgListener, PgPool};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

use super::CHANNEL;
use crate::{
    config::OutboxSettings, events::log::EventLog, metrics::outbox::OutboxMetrics, state::AppState,
};

/// First wait after a failed pass.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// One outbox row.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    seq: i64,
    event: String,
    payload: serde_json::Value,
    owner: Option<String>,
    node_id: String,
    occurred_at: i64,
}

/// What a pass left behind.
enum Pass {
    /// Every topic this node relays is drained.
    Drained,
    /// A topic had a full batch: run again at once.
    More,
}

/// The relay of one node.
pub struct Relay {
    /// Where the outbox and the leases live.
    db: PgPool,
    /// The topics' Redis logs.
    log: EventLog,
    /// The lease holder name.
    node_id: Arc<str>,
    /// Lease, poll and retry timing, batch size.
    settings: OutboxSettings,
    /// Relay metrics.
    metrics: OutboxMetrics,
    /// `petmesh_node_events_published_total{event,result}`, shared with direct publication.
    published: IntCounterVec,
    /// Signalled by the notification listener; a permit waits for the next sleep.
    wakeup: Arc<Notify>,
    /// Topics this node holds, with when to renew each lease. Owned by the relay task.
    held: HashMap<String, Instant>,
    /// When nodes last tried to take over topics they do not hold.
    last_takeover: Option<Instant>,
}

impl Relay {
    /// A relay over `state`, configured by its `outbox` settings.
    pub fn new(state: &AppState, settings: OutboxSettings) -> Self {
        Self {
            db: state.db.clone(),
            log: state.events.log().clone(),
            node_id: Arc::clone(&state.node_id),
            settings,
            metrics: state.metrics.outbox.clone(),
            published: state.metrics.store.events_published.clone(),
            wakeup: Arc::new(Notify::new()),
            held: HashMap::new(),
            last_takeover: None,
        }
    }

    /// Relays until `shutdown` turns true, then gives up this node's leases so that another
    /// node takes them over at its next poll instead of after the lease runs out.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let listener = tokio::spawn(listen(
            self.db.clone(),
            Arc::clone(&self.wakeup),
            Duration::from_millis(self.settings.retry_max_ms),
        ));
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let retry_max = Duration::from_millis(self.settings.retry_max_ms);
        let mut retry = FIRST_RETRY;
        let mut failures = 0u64;
        while !*shutdown.borrow() {
            let wait = match self.pass().await {
                Ok(pass) => {
                    if failures > 0 {
                        tracing::info!(failures, "relaying events works again");
                        failures = 0;
                        retry = FIRST_RETRY;
                    }
                    match pass {
                        Pass::More => continue,
                        Pass::Drained => poll,
                    }
                }
                Err(err) => {
                    self.metrics.relay_errors.inc();
                    if failures == 0 {
                        tracing::warn!(
                            error = %err,
                            "relaying events failed; retrying until it works (committed events wait in the outbox)"
                        );
                    }
                    failures += 1;
                    let wait = retry;
                    retry = (retry * 2).min(retry_max);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wakeup.notified(), if failures == 0 => {}
                _ = shutdown.changed() => {}
            }
        }
        listener.abort();
        self.release().await;
    }

    /// One pass over every topic (see the module doc).
    async fn pass(&mut self) -> anyhow::Result<Pass> {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let takeover = self.last_takeover.is_none_or(|last| last.elapsed() >= poll);
        let topics: Vec<String> = if takeover {
            self.last_takeover = Some(Instant::now());
            sqlx::query_scalar("select topic from outbox_topic order by topic")
                .fetch_all(&self.db)
                .await?
        } else {
            // Woken by a write: only the topics this node relays need a look.
            self.held.keys().cloned().collect()
        };
        let mut more = false;
        for topic in topics {
            if !self.lease(&topic).await? {
                continue;
            }
            more |= self.relay_batch(&topic).await?;
        }
        Ok(if more { Pass::More } else { Pass::Drained })
    }

    /// Step 1: whether this node holds `topic`'s lease, taking or renewing it when due.
    async fn lease(&mut self, topic: &str) -> Result<bool, sqlx::Error> {
        if self
            .held
            .get(topic)
            .is_some_and(|renew_at| Instant::now() < *renew_at)
        {
            return Ok(true);
        }
        let lease = Duration::from_secs(self.settings.lease_secs);
        let asked = Instant::now();
        let granted = sqlx::query(
            "insert into outbox_relay (topic, holder, lease_until)
             values ($1, $2, now() + make_interval(secs => $3))
             on conflict (topic) do update
                 set holder = excluded.holder, lease_until = excluded.lease_until
                 where outbox_relay.holder = excluded.holder or outbox_relay.lease_until < now()",
        )
        .bind(topic)
        .bind(&*self.node_id)
        .bind(lease.as_secs_f64())
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        if granted {
            // Counted from before the query, so the lease surely lasts past the renewal.
            if self
                .held
                .insert(topic.to_owned(), asked + lease / 3)
                .is_none()
            {
                tracing::info!(topic, "relaying the topic's events");
            }
        } else if self.held.remove(topic).is_some() {
            tracing::warn!(topic, "another node took over relaying the topic");
        }
        self.metrics.leases_held.set(self.held.len() as i64);
        Ok(granted)
    }

    /// Steps 2–4 for one batch of `topic`; whether the batch was full.
    async fn relay_batch(&self, topic: &str) -> anyhow::Result<bool> {
        let rows = sqlx::query_as::<_, Row>(
            "select seq, event, payload, owner, node_id, occurred_at from outbox
             where topic = $1 order by seq limit $2",
        )
        .bind(topic)
        .bind(self.settings.batch_size)
        .fetch_all(&self.db)
        .await?;
        let full = rows.len() as i64 == self.settings.batch_size;
        let mut appended = None;
        let mut failure = None;
        for row in rows {
            let seq = row.seq;
            let envelope = row.into_envelope(topic);
            match self.log.append_relayed(&envelope, seq as u64).await {
                Ok(offset) => {
                    if offset.is_some() {
                        self.metrics.relayed.inc();
                        self.count(&envelope.event, "ok");
                    }
                    appended = Some(seq);
                }
                Err(err) => {
                    self.count(&envelope.event, "error");
                    failure = Some(err);
                    break;
                }
            }
        }
        // What was appended is marked even when a later row failed, so that it is not
        // replayed (harmless, but work) once Redis is back.
        if let Some(last) = appended {
            mark_delivered(&self.db, topic, last).await?;
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(full),
        }
    }

    fn count(&self, event: &str, result: &str) {
        self.published.with_label_values(&[event, result]).inc();
    }

    /// Gives up this node's leases (on shutdown).
    async fn release(&mut self) {
        let released = sqlx::query(
            "update outbox_relay set lease_until = now() - interval '1 second' where holder = $1",
        )
        .bind(&*self.node_id)
        .execute(&self.db)
        .await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "giving up the outbox leases failed; they run out by themselves");
        }
        self.held.clear();
        self.metrics.leases_held.set(0);
    }
}

impl Row {
    fn into_envelope(self, topic: &str) -> EventEnvelope {
        EventEnvelope {
            event: self.event,
            topic: topic.to_owned(),
            payload: self.payload,
            owner: self.owner,
            timestamp: self.occurred_at,
            node_id: self.node_id,
            origin: None,
        }
    }
}

/// Step 4: every row of `topic` up to `seq` is in Redis.
async fn mark_delivered(db: &PgPool, topic: &str, seq: i64) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    // `greatest`: a relay that lost its lease mid-batch may mark after the new holder did.
    sqlx::query(
        "update outbox_relay set delivered_seq = greatest(delivered_seq, $2) where topic = $1",
    )
    .bind(topic)
    .bind(seq)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from outbox where topic = $1 and seq <= $2")
        .bind(topic)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Wakes the relay on every outbox `NOTIFY`, reconnecting after `retry` when PostgreSQL is
/// away (the relay's poll covers what is missed meanwhile). Runs until aborted.
async fn listen(db: PgPool, wakeup: Arc<Notify>, retry: Duration) {
    loop {
        let Err(err) = listen_until_lost(&db, &wakeup).await;
        tracing::debug!(error = %err, "outbox notifications lost; listening again");
        wakeup.notify_one();
        tokio::time::sleep(retry).await;
    }
}

/// Forwards notifications to `wakeup` until the connection fails.
async fn listen_until_lost(db: &PgPool, wakeup: &Notify) -> Result<Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen(CHANNEL).await?;
    loop {
        listener.recv().await?;
        wakeup.notify_one();
    }
}
