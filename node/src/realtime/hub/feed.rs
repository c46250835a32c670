//! The hub's feed from Redis: one subscriber connection (one per shard in a Redis Cluster)
//! bringing in the events of the logs local connections use and the revocation notices; gap
//! fills from the histories; and telling subscribers when a gap cannot be filled.

use std::{sync::Arc, time::Duration};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{event_frame, Addressee, Hub, Outbound, State};
use crate::{
    auth::revocation::RevocationNotice,
    events::log::{LoggedEvent, Missed, Offset},
    realtime::protocol,
};

/// A log without subscribers stays subscribed in Redis this long, in case one comes back.
const IDLE_LOG_LINGER: Duration = Duration::from_secs(30);

/// Longest wait between attempts to re-establish the pub/sub connection.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// Why subscribers are told to resync after a new epoch.
const HISTORY_RESET: &str =
    "the topic's history was reset (Redis failed over or lost its data): events may be missing";

impl Hub {
    /// Runs the hub's background work until the process ends: the pub/sub connection (with
    /// reconnects and gap fills) and the deadline sweep.
    pub async fn run(self) {
        let sweeper = self.clone();
        tokio::spawn(async move { sweeper.sweep_forever().await });
        let mut delay = Duration::from_millis(100);
        loop {
            match self.listen_once().await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(error = %err, "event subscription lost; reconnecting");
                }
            }
            *self.inner.interest.lock().await = None;
            for log in self.state().logs.values_mut() {
                log.listening = false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// One pub/sub connection's life: subscribe to what local connections use, fill what was
    /// missed while disconnected, then deliver until the connection drops.
    async fn listen_once(&self) -> anyhow::Result<()> {
        let (mut sink, mut stream) = self.inner.redis.subscriber().await?;
        let revocations = self.inner.keys.revocation_channel();
        sink.subscribe(&revocations).await?;
        let logs: Vec<(String, Option<Offset>)> = {
            let state = self.state();
            state
                .logs
                .iter()
                .map(|(name, log)| (name.clone(), log.last.clone()))
                .collect()
        };
        for (name, _) in &logs {
            sink.subscribe_topic(&self.inner.keys.event_channel(name))
                .await?;
        }
        {
            let mut state = self.state();
            for (name, _) in &logs {
                if let Some(log) = state.logs.get_mut(name) {
                    log.listening = true;
                }
            }
        }
        *self.inner.interest.lock().await = Some(sink);
        self.inner.connected.notify_waiters();
        // Whatever was published while the connection was down is in the histories; if a
        // history was lost meanwhile (a new epoch), all of the new one is news, and what the
        // old one held past `last` may be gone: subscribers are told (`system:resync`).
        for (name, last) in logs {
            let Some(last) = last else { continue };
            match self.inner.log.current(&name).await {
                Ok(Some(current)) if current.epoch == last.epoch && current.seq > last.seq => {
                    self.fill_gap(&name, &last, current.seq).await;
                }
                Ok(Some(current)) if current.epoch != last.epoch => {
                    self.resync(&name, HISTORY_RESET);
                    let start = Offset {
                        epoch: current.epoch.clone(),
                        seq: 0,
                    };
                    self.fill_gap(&name, &start, current.seq).await;
                }
                _ => {}
            }
        }
        while let Some((channel, payload)) = stream.next().await {
            if channel == revocations {
                match serde_json::from_str::<RevocationNotice>(&payload) {
                    Ok(notice) => self.on_revocation(&notice),
                    Err(err) => tracing::warn!(error = %err, "unreadable revocation notice"),
                }
            } else if let Some(log) = self.inner.keys.topic_of_channel(&channel) {
                match LoggedEvent::from_message(&payload) {
                    Some(event) => self.on_event(log, event).await,
                    None => tracing::warn!(channel = %channel, "unreadable event message"),
                }
            }
        }
        anyhow::bail!("the pub/sub connection closed")
    }

    /// Delivers one event of `log` that arrived over pub/sub, filling a gap first if there is
    /// one.
    async fn on_event(&self, log: &str, event: LoggedEvent) {
        let last = self.state().logs.get(log).and_then(|l| l.last.clone());
        if let Some(last) = &last {
            if last.epoch == event.offset.epoch {
                if event.offset.seq <= last.seq {
                    return; // already delivered (a gap fill read it from the history)
                }
                if event.offset.seq > last.seq + 1 {
                    self.fill_gap(log, last, event.offset.seq - 1).await;
                }
            } else {
                // A new epoch: Redis lost the history or failed over, so events of the old one
                // after `last` may be gone. Subscribers are told; then the new epoch's first
                // events, if pub/sub missed them, come from the new history.
                self.resync(log, HISTORY_RESET);
                if event.offset.seq > 1 {
                    let start = Offset {
                        epoch: event.offset.epoch.clone(),
                        seq: 0,
                    };
                    self.fill_gap(log, &start, event.offset.seq - 1).await;
                }
            }
        }
        self.deliver(log, &event);
    }

    /// Reads events `after.seq + 1 ..= until` of `log` from its history and delivers them.
    async fn fill_gap(&self, log: &str, after: &Offset, until: u64) {
        match self.inner.log.after(log, after, Some(until)).await {
            Ok(Missed::Events(events)) => {
                self.metrics().gap_fills.inc_by(events.len() as u64);
                for event in &events {
                    self.deliver(log, event);
                }
            }
            Ok(Missed::Lost(reason)) => {
                tracing::warn!(
                    log,
                    reason,
                    "events missed over pub/sub are gone from the history"
                );
                self.resync(log, reason);
            }
            Err(err) => {
                tracing::warn!(log, error = %err, "could not read missed events from the history");
            }
        }
    }

    /// Hands `event` to every active, matching subscription of `log`.
    fn deliver(&self, log: &str, event: &LoggedEvent) {
        let metrics = self.metrics();
        let latency_ms = chrono::Utc::now().timestamp_millis() - event.envelope.timestamp;
        metrics
            .broadcast_latency
            .observe(latency_ms.max(0) as f64 / 1000.0);
        let mut state = self.state();
        let State { connections, logs } = &mut *state;
        let Some(entry) = logs.get_mut(log) else {
            return;
        };
        if let Some(last) = &entry.last {
            if last.epoch == event.offset.epoch && event.offset.seq <= last.seq {
                return;
            }
        }
        entry.last = Some(event.offset.clone());
        // One frame per topic name (usually one), shared by every connection.
        let mut frames: Vec<(Arc<str>, Utf8Bytes)> = Vec::new();
        let mut sent = 0u64;
        let addressee = Addressee::of(&event.envelope);
        for (conn_id, sub) in entry.subscriptions.iter() {
            if !sub.active {
                continue;
            }
            if let Some(after) = &sub.after {
                if after.epoch == event.offset.epoch && event.offset.seq <= after.seq {
                    continue;
                }
            }
            let Some(conn) = connections.get(&conn_id) else {
                continue;
            };
            if !addressee.reaches(sub.audience, &conn.origin) {
                continue;
            }
            let frame = match frames.iter().find(|(t, _)| *t == sub.topic) {
                Some((_, frame)) => frame.clone(),
                None => {
                    let frame = event_frame(&sub.topic, event);
                    frames.push((sub.topic.clone(), frame.clone()));
                    frame
                }
            };
            if conn.outbox.push(Outbound::Text(frame), metrics) {
                sent += 1;
            }
        }
        drop(state);
        metrics
            .messages_out
            .with_label_values(&["event"])
            .inc_by(sent);
    }

    /// Tells every active subscription of `log` that events may have been lost (`reason`):
    /// a `system:resync` event on the subscription's topic with `recovered: false`, after
    /// which the client reloads what it shows. The subscription stays and goes on.
    fn resync(&self, log: &str, reason: &str) {
        let metrics = self.metrics();
        let now = chrono::Utc::now().timestamp_millis();
        let state = self.state();
        let Some(entry) = state.logs.get(log) else {
            return;
        };
        let mut told = 0u64;
        for (conn_id, sub) in entry.subscriptions.iter().filter(|(_, s)| s.active) {
            let Some(conn) = state.connections.get(&conn_id) else {
                continue;
            };
            let frame = protocol::event(
                "system:resync",
                Some(&sub.topic),
                None,
                &serde_json::json!({"topic": &*sub.topic, "recovered": false, "reason": reason}),
                now,
            );
            conn.outbox.push(Outbound::Text(frame.into()), metrics);
            told += 1;
        }
        drop(state);
        tracing::warn!(
            log,
            reason,
            subscriptions = told,
            "subscribers told to resync"
        );
    }

    /// Closes the sessions a revocation notice names: `auth:revoked`, then close 4401.
    fn on_revocation(&self, notice: &RevocationNotice) {
        let frame = protocol::event(
            "auth:revoked",
            None,
            None,
            &serde_json::json!({"reason": "the session was revoked"}),
            chrono::Utc::now().timestamp_millis(),
        );
        let closed = self.notify_connections(&frame, Some((4401, "session revoked")), |conn| {
            conn.session
                .as_ref()
                .is_some_and(|s| notice.revokes(&s.claims))
        });
        if closed > 0 {
            tracing::info!(connections = closed, "closed revoked sessions");
        }
    }

    /// Drops the Redis subscriptions of logs nobody used for [`IDLE_LOG_LINGER`].
    pub(super) async fn drop_idle_logs(&self) {
        let now = self.now_ms();
        let linger = IDLE_LOG_LINGER.as_millis() as u64;
        let mut interest = self.inner.interest.lock().await;
        let idle: Vec<String> = {
            let mut state = self.state();
            let idle: Vec<String> = state
                .logs
                .iter()
                .filter(|(_, log)| {
                    log.subscriptions.is_empty()
                        && log
                            .idle_since_ms
                            .is_some_and(|t| now.saturating_sub(t) >= linger)
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in &idle {
                state.logs.remove(name);
            }
            idle
        };
        if let Some(sink) = interest.as_mut() {
            for name in idle {
                let _ = sink
                    .unsubscribe_topic(&self.inner.keys.event_channel(&name))
                    .await;
            }
        }
    }
}
