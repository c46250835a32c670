//! The node's side of handshake pacing ([`petmesh_shared::pacing`]): at most
//! `realtime.handshakes_per_second` after a burst of `realtime.handshake_burst`, each waiting
//! at most `realtime.handshake_max_wait_ms`, else 503 with `Retry-After`. The node paces even
//! behind a balancer that paces too: the node is where a handshake costs most, clients may
//! reach it directly, and with several balancers only the node sees all of its handshakes.

use std::time::Duration;

use petmesh_shared::pacing::Pacer;
use prometheus::IntCounterVec;

use crate::{config::RealtimeSettings, error::ApiError};

/// The node's handshake schedule and its counts.
#[derive(Debug)]
pub struct HandshakePacer {
    pacer: Pacer,
    /// `petmesh_node_ws_handshakes_paced_total{outcome}`.
    outcomes: IntCounterVec,
}

impl HandshakePacer {
    /// The pacer `settings` describe; `outcomes` counts the handshakes that waited or were
    /// refused.
    pub fn new(settings: &RealtimeSettings, outcomes: IntCounterVec) -> Self {
        Self {
            pacer: Pacer::new(
                settings.handshakes_per_second,
                settings.handshake_burst,
                Duration::from_millis(settings.handshake_max_wait_ms),
            ),
            outcomes,
        }
    }

    /// Waits for this handshake's turn, or refuses it (503, `Retry-After`) when the wait
    /// would be longer than `realtime.handshake_max_wait_ms`.
    pub async fn admit(&self) -> Result<(), ApiError> {
        match self.pacer.admit().await {
            Ok(waited) => {
                if waited {
                    self.outcomes.with_label_values(&["waited"]).inc();
                }
                Ok(())
            }
            Err(refused) => {
                self.outcomes.with_label_values(&["refused"]).inc();
                Err(ApiError::overloaded(
                    "too many WebSocket handshakes at once on this node; try again shortly",
                    refused.retry_after_secs(),
                ))
            }
        }
    }
}
