//! The hub's deadline sweep: authentication and token expiry, idle connections, pings.

use std::{sync::atomic::Ordering, time::Duration};

use super::{Hub, Outbound};
use crate::realtime::protocol;

/// How often the hub checks deadlines (authentication, idle, token expiry) and idle logs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

impl Hub {
    /// Every [`SWEEP_INTERVAL`]: closes connections past their deadlines, pings quiet ones,
    /// and drops the Redis subscriptions of logs nobody uses any more.
    pub(super) async fn sweep_forever(&self) {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.sweep_connections();
            self.drop_idle_logs().await;
        }
    }

    fn sweep_connections(&self) {
        let settings = &self.inner.settings;
        let now = self.now_ms();
        let now_unix = chrono::Utc::now().timestamp();
        let metrics = self.metrics();
        let state = self.state();
        for conn in state.connections.values() {
            let control = &conn.outbox.control;
            let last_seen = control.last_seen_ms.load(Ordering::Relaxed);
            match &conn.session {
                None if now.saturating_sub(conn.connected_at_ms) >= settings.auth_timeout_ms => {
                    conn.outbox.close(4401, "authentication timed out");
                    continue;
                }
                Some(session) if session.claims.exp <= now_unix => {
                    let frame = protocol::event(
                        "auth:expired",
                        None,
                        None,
                        &serde_json::json!({"reason": "the access token expired"}),
                        chrono::Utc::now().timestamp_millis(),
                    );
                    conn.outbox.push(Outbound::Text(frame.into()), metrics);
                    conn.outbox.close(4401, "token expired");
                    continue;
                }
                _ => {}
            }
            let quiet = now.saturating_sub(last_seen);
            if quiet >= settings.idle_timeout_secs * 1000 {
                conn.outbox.close(1001, "idle timeout");
            } else if quiet >= settings.ping_interval_secs * 1000
                && !control.ping_sent.swap(true, Ordering::Relaxed)
            {
                conn.outbox.push(Outbound::Ping, metrics);
            }
        }
    }
}
