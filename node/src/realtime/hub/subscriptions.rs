//! Subscriptions: joining a topic without losing or repeating an event (the hub's module
//! doc), leaving it, and the replay that brings a new subscription up to date.

use std::{sync::Arc, time::Duration};

use super::{
    event_frame, Addressee, Audience, ConnId, ErrorCode, Hub, Joined, LoggedEvent, Missed, Offset,
    Outbound, Outbox, State, Subscription, WsError,
};

impl Hub {
    /// Subscribes connection `id` to `log` as `topic` for `audience`, starting after `since`
    /// when given (recovery) or at the log's current offset. Replays what the connection
    /// missed into `outbox` before the subscription goes live.
    pub async fn subscribe(
        &self,
        id: ConnId,
        outbox: &Outbox,
        log: &str,
        topic: &str,
        audience: Audience,
        since: Option<Offset>,
    ) -> Result<Joined, WsError> {
        // Subscribing again without `since` keeps the live subscription as it is: replacing it
        // would drop events already published but not yet delivered.
        if since.is_none() {
            if let Some(offset) = self.live_offset(id, log, topic) {
                return Ok(Joined {
                    offset,
                    recovery: None,
                });
            }
        }
        let origin = self.listen(id, log, topic, audience).await?;
        let result = self
            .catch_up(id, outbox, log, topic, audience, &origin, since)
            .await;
        if result.is_err() {
            self.unsubscribe(id, topic);
        }
        result
    }

    /// Ends connection `id`'s subscription to `topic` (as the client named it).
    pub fn unsubscribe(&self, id: ConnId, topic: &str) -> bool {
        let now = self.now_ms();
        let mut state = self.state();
        let State { connections, logs } = &mut *state;
        let Some(conn) = connections.get_mut(&id) else {
            return false;
        };
        let mut found = false;
        conn.logs.retain(|name| {
            let Some(log) = logs.get_mut(name) else {
                return false;
            };
            if log.subscriptions.remove(id, topic) {
                found = true;
                if log.subscriptions.is_empty() {
                    log.idle_since_ms = Some(now);
                }
            }
            log.subscriptions.has_connection(id)
        });
        found
    }

    /// Where connection `id`'s active subscription to `topic` on `log` stands (the last offset
    /// delivered from the log), if it has one.
    fn live_offset(&self, id: ConnId, log: &str, topic: &str) -> Option<Option<Offset>> {
        let mut state = self.state();
        let entry = state.logs.get_mut(log)?;
        let active = entry.subscriptions.get_mut(id, topic)?.active;
        active.then(|| entry.last.clone())
    }

    /// Makes sure `log` is subscribed in Redis, then adds an inactive subscription. Returns
    /// the connection's origin tag.
    async fn listen(
        &self,
        id: ConnId,
        log: &str,
        topic: &str,
        audience: Audience,
    ) -> Result<Arc<str>, WsError> {
        let unavailable = || {
            WsError::new(
                ErrorCode::Unavailable,
                "events are unavailable (Redis is unreachable)",
            )
        };
        // Right after start (or a Redis outage) the pub/sub connection may not be up yet.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut interest = loop {
            let connected = self.inner.connected.notified();
            tokio::pin!(connected);
            connected.as_mut().enable();
            let interest = self.inner.interest.lock().await;
            if interest.is_some() {
                break interest;
            }
            drop(interest);
            if tokio::time::timeout_at(deadline, connected).await.is_err() {
                return Err(unavailable());
            }
        };
        let listening = self.state().logs.get(log).is_some_and(|l| l.listening);
        if !listening {
            let sink = interest.as_mut().ok_or_else(unavailable)?;
            let channel = self.inner.keys.event_channel(log);
            tokio::time::timeout(Duration::from_secs(5), sink.subscribe_topic(&channel))
                .await
                .map_err(|_| unavailable())?
                .map_err(|_| unavailable())?;
        }
        let mut state = self.state();
        let State { connections, logs } = &mut *state;
        let Some(conn) = connections.get_mut(&id) else {
            return Err(WsError::new(ErrorCode::Unavailable, "connection closed"));
        };
        if !conn.logs.iter().any(|name| name == log) {
            conn.logs.push(log.to_owned());
        }
        let entry = logs.entry(log.to_owned()).or_default();
        entry.listening = true;
        entry.idle_since_ms = None;
        entry.subscriptions.insert(
            id,
            Subscription {
                topic: topic.into(),
                audience,
                after: None,
                active: false,
            },
        );
        Ok(conn.origin.clone())
    }

    /// Replays and catches up an inactive subscription, then activates it (module doc).
    #[allow(clippy::too_many_arguments)]
    async fn catch_up(
        &self,
        id: ConnId,
        outbox: &Outbox,
        log: &str,
        topic: &str,
        audience: Audience,
        origin: &str,
        since: Option<Offset>,
    ) -> Result<Joined, WsError> {
        let redis_failed = |err: anyhow::Error| {
            tracing::warn!(error = %err, log, "reading a topic's history failed");
            WsError::new(
                ErrorCode::Unavailable,
                "events are unavailable (Redis is unreachable)",
            )
        };
        let mut recovery = None;
        let mut position = match since {
            Some(since) => match self.inner.log.after(log, &since, None).await {
                Ok(Missed::Events(events)) => {
                    let count = events.len();
                    let end = events.last().map(|e| e.offset.clone()).unwrap_or(since);
                    self.replay(outbox, topic, audience, origin, &events)
                        .await?;
                    self.metrics()
                        .recoveries
                        .with_label_values(&["recovered"])
                        .inc();
                    recovery = Some(Ok(count));
                    Some(end)
                }
                Ok(Missed::Lost(reason)) => {
                    self.metrics().recoveries.with_label_values(&["lost"]).inc();
                    recovery = Some(Err(reason));
                    self.inner.log.current(log).await.map_err(redis_failed)?
                }
                Err(err) => return Err(redis_failed(err)),
            },
            None => self.inner.log.current(log).await.map_err(redis_failed)?,
        };
        loop {
            let target = {
                let mut state = self.state();
                let entry = state.logs.get_mut(log);
                let Some(entry) = entry else {
                    return Err(WsError::new(ErrorCode::Unavailable, "subscription ended"));
                };
                let caught_up = match (&entry.last, &position) {
                    (None, _) => true,
                    (Some(last), Some(at)) => last.epoch == at.epoch && last.seq <= at.seq,
                    (Some(_), None) => false,
                };
                if caught_up {
                    let Some(sub) = entry.subscriptions.get_mut(id, topic) else {
                        return Err(WsError::new(ErrorCode::Unavailable, "subscription ended"));
                    };
                    sub.after = position.clone();
                    sub.active = true;
                    return Ok(Joined {
                        offset: position,
                        recovery,
                    });
                }
                entry
                    .last
                    .clone()
                    .expect("not caught up means the hub delivered something")
            };
            // The hub delivered events this subscription has not seen: read them from the log.
            let from = match &position {
                Some(at) if at.epoch == target.epoch => at.clone(),
                _ => Offset {
                    epoch: target.epoch.clone(),
                    seq: 0,
                },
            };
            match self.inner.log.after(log, &from, Some(target.seq)).await {
                Ok(Missed::Events(events)) => {
                    self.replay(outbox, topic, audience, origin, &events)
                        .await?;
                }
                Ok(Missed::Lost(_)) => {
                    // Trimmed or reset meanwhile: nothing consistent to replay; go live from
                    // where the hub is.
                }
                Err(err) => return Err(redis_failed(err)),
            }
            position = Some(target);
        }
    }

    /// Sends `events` (those `audience` may see, not caused by `origin`) into `outbox`.
    async fn replay(
        &self,
        outbox: &Outbox,
        topic: &str,
        audience: Audience,
        origin: &str,
        events: &[LoggedEvent],
    ) -> Result<(), WsError> {
        for event in events {
            if !Addressee::of(&event.envelope).reaches(audience, origin) {
                continue;
            }
            let frame = event_frame(topic, event);
            if !outbox.send(Outbound::Text(frame)).await {
                return Err(WsError::new(ErrorCode::Unavailable, "connection closed"));
            }
            self.metrics()
                .messages_out
                .with_label_values(&["event"])
                .inc();
        }
        Ok(())
    }
}
