//! Real-time: the WebSocket endpoint `/ws`, its JSON protocol, and the cluster-wide delivery of
//! events to the connections of every node.
//!
//! - [`protocol`]: frames in and out, error codes.
//! - [`topic`]: what can be subscribed to, which log it reads, who may see what.
//! - [`hub`]: this node's connections and subscriptions, and the Redis pub/sub feed (fan-out,
//!   gap filling, revocations, deadlines).
//! - [`connection`]: one connection's reader and writer; [`pacing`]: the rate at which
//!   handshakes are admitted.
//! - [`decode`]: what a request asks for, decoded without side effects (property-tested and
//!   fuzzed).
//! - [`actions`]: what each request does; [`resources`]: the actions mirroring REST.
//!
//! Events come from [`crate::events`]: one atomic Redis script per event assigns the topic's
//! next offset, appends to its bounded history and publishes it; every node delivers it to its
//! own matching connections, and a reconnecting client resumes from its last offsets.

pub mod actions;
pub mod connection;
pub mod decode;
pub mod hub;
pub mod pacing;
pub mod protocol;
pub mod resources;
pub mod topic;

use poem::{
    handler,
    http::{header, HeaderMap, Method, StatusCode},
    web::Data,
    Request, Response,
};
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::WebSocketConfig};

use self::hub::Session;
use crate::{error::ApiError, state::AppState};

/// The AsyncAPI 3 document of the protocol (kept true by the tests below).
pub const ASYNCAPI: &str = include_str!("realtime/asyncapi.json");

/// `GET /asyncapi.json`: the protocol as an AsyncAPI 3 document.
#[handler]
pub fn asyncapi() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(ASYNCAPI)
}

/// `GET /ws`: upgrades to a WebSocket. A token in `Authorization: Bearer` or the `token` query
/// parameter authenticates the connection at once (an invalid one is refused with 401);
/// without one the client has `realtime.auth_timeout_ms` to send `auth:login`.
#[handler]
pub async fn websocket(req: &Request, Data(state): Data<&AppState>) -> poem::Result<Response> {
    if req.method() != Method::GET {
        return Err(ApiError::bad_request("a WebSocket handshake is a GET request").into());
    }
    let key = handshake_key(req.headers())?;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("<invalid>"));
    if !state.hub.settings().allows_origin(origin) {
        return Err(ApiError::forbidden(
            "this origin may not open a WebSocket (realtime.allowed_origins)",
        )
        .into());
    }
    if state.is_draining() {
        return Err(ApiError::unavailable("node is shutting down; connect to another node").into());
    }
    // Before the token check: that is part of what a storm of handshakes costs.
    state.handshakes.admit().await?;
    let session = match crate::auth::presented_token(req) {
        None => None,
        Some(token) => Some(Session {
            claims: crate::auth::authenticate(state, &token).await?,
        }),
    };
    let upgrade = req
        .take_upgrade()
        .map_err(|_| ApiError::bad_request("the connection cannot be upgraded"))?;
    let settings = state.hub.settings();
    // Small buffers: an idle connection should cost a few KiB, not the 128 KiB defaults (a
    // larger frame still fits: the read buffer grows for it).
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(settings.max_frame_bytes.max(64 * 1024) * 4)
        .max_message_size(Some(settings.max_frame_bytes))
        .max_frame_size(Some(settings.max_frame_bytes));
    let accepted = Box::new(connection::Accepted {
        state: state.clone(),
        config,
        session,
    });
    tokio::spawn(connection::serve(upgrade, accepted));
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .finish())
}

/// The `Sec-WebSocket-Key` of a valid handshake, or why the request is not one.
fn handshake_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(ApiError::bad_request(
            "this endpoint speaks WebSocket: send Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13"));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key is missing"))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn message_names() -> Vec<String> {
        let doc: Value = serde_json::from_str(ASYNCAPI).expect("the AsyncAPI document is JSON");
        assert_eq!(doc["asyncapi"], "3.0.0");
        doc["components"]["messages"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_asyncapi_document_describes_every_action_and_event() {
        let names = message_names();
        for action in actions::ACTIONS.iter().chain(resources::RESOURCE_ACTIONS) {
            assert!(
                names.iter().any(|n| n == action),
                "{action} is not documented"
            );
        }
        for event in [
            "pet:created",
            "pet:updated",
            "pet:deleted",
            "order:created",
            "order:updated",
            "order:deleted",
            "room:joined",
            "room:left",
            "room:message",
            "auth:revoked",
            "auth:expired",
            "system:reconnect",
            "system:resync",
        ] {
            assert!(
                names.iter().any(|n| n == event),
                "{event} is not documented"
            );
        }
    }
}
