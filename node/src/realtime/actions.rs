//! What each request action does. Resource actions call the same service functions as REST,
//! so they follow the same rules and publish the same events.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{
    connection::Conn,
    decode::{access, decode, Access, Action},
    hub::{require_session, Joined, Session},
    protocol::{ErrorCode, WsError},
    resources,
    topic::{custom_log, room_log, Audience, Topic},
};
use crate::{events::log::Offset, subscribers};

/// The protocol's own actions; with [`resources::RESOURCE_ACTIONS`] these are the actions with
/// a metric label of their own (anything else is `other`).
pub const ACTIONS: &[&str] = &[
    "ping",
    "auth:login",
    "auth:refresh",
    "auth:logout",
    "subscribe",
    "unsubscribe",
    "room:join",
    "room:leave",
    "room:message",
];

/// Labels of `petmesh_node_ws_messages_in_total` that are not actions: requests refused
/// before dispatch.
const REFUSED_LABELS: &[&str] = &["other", "rate_limited", "invalid"];

/// Every `type` label of `petmesh_node_ws_messages_in_total`, so that each series exists (at 0)
/// from start-up.
pub fn metric_labels() -> impl Iterator<Item = &'static str> {
    ACTIONS
        .iter()
        .chain(resources::RESOURCE_ACTIONS)
        .chain(REFUSED_LABELS)
        .copied()
}

/// The `type` label of a request in `petmesh_node_ws_messages_in_total` (bounded).
pub fn metric_label(action: &str) -> &'static str {
    ACTIONS
        .iter()
        .chain(resources::RESOURCE_ACTIONS)
        .find(|known| **known == action)
        .copied()
        .unwrap_or("other")
}

impl Conn {
    /// Runs one request; the value is the success payload.
    ///
    /// 1. Who may ask ([`access`]) is checked against the session before the payload is
    ///    looked at. 2. The payload is decoded ([`decode`]) without side effects, so a request
    ///    that fails validation changes nothing. 3. The action runs.
    pub async fn handle(
        &mut self,
        request: &super::protocol::ClientRequest,
    ) -> Result<Value, WsError> {
        match access(&request.action) {
            Access::Anyone => {}
            Access::Session => {
                self.session()?;
            }
            Access::Admin => self.session()?.claims.require_admin()?,
        }
        match decode(request)? {
            Action::Ping => Ok(json!({
                "pong": chrono::Utc::now().timestamp_millis(),
                "nodeId": &*self.state.node_id,
            })),
            Action::Login { token } => self.login(&token).await,
            Action::Refresh { token } => self.refresh(&token).await,
            Action::Logout => self.logout().await,
            Action::Subscribe { topics, since } => self.subscribe(topics, since).await,
            Action::Unsubscribe { topics } => self.unsubscribe(topics),
            Action::RoomJoin { room, since } => self.join_room(room, since).await,
            Action::RoomLeave { room } => self.leave_room(room).await,
            Action::RoomMessage {
                room,
                content,
                kind,
            } => self.room_message(room, &content, kind).await,
            Action::Resource(action) => {
                let claims = self.session()?.claims.clone();
                resources::run(&self.state, &claims, action).await
            }
            Action::Emit { name } => self.emit(&name, &request.payload).await,
        }
    }

    fn session(&self) -> Result<&Session, WsError> {
        require_session(self.session.as_ref())
    }

    // === auth ===

    async fn login(&mut self, token: &str) -> Result<Value, WsError> {
        let claims = crate::auth::authenticate(&self.state, token).await?;
        if let Some(current) = &self.session {
            if current.claims.sub != claims.sub {
                return Err(WsError::new(
                    ErrorCode::Forbidden,
                    "this connection is authenticated as another user; open a new connection",
                ));
            }
        }
        Ok(self.adopt(claims))
    }

    /// Replaces the session's token with a newer one of the same user, so that the socket
    /// outlives the first token's expiry. Unlike `auth:login` it needs a session: a client
    /// that means to extend one must not silently start one instead.
    async fn refresh(&mut self, token: &str) -> Result<Value, WsError> {
        let current = self.session()?.claims.sub;
        let claims = crate::auth::authenticate(&self.state, token).await?;
        if claims.sub != current {
            return Err(WsError::new(
                ErrorCode::Forbidden,
                "the token belongs to another user; this connection keeps its token",
            ));
        }
        Ok(self.adopt(claims))
    }

    /// Makes `claims` the connection's session (here and in the hub, whose sweep closes the
    /// connection at their expiry) and answers what the client needs to know.
    fn adopt(&mut self, claims: crate::auth::Claims) -> Value {
        let session = Session { claims };
        let reply = json!({
            "userId": session.claims.sub,
            "role": session.claims.role,
            "expiresAt": session.claims.exp,
            "nodeId": &*self.state.node_id,
        });
        self.state.hub.authenticate(self.id, session.clone());
        self.session = Some(session);
        reply
    }

    /// Ends the session everywhere (REST logout); every node then closes its sockets, this one
    /// included, after `auth:revoked`.
    async fn logout(&mut self) -> Result<Value, WsError> {
        let claims = self.session()?.claims.clone();
        crate::auth::sessions::logout(&self.state, &claims).await?;
        Ok(json!({}))
    }

    // === topics ===

    async fn subscribe(
        &mut self,
        parsed: Vec<Topic>,
        mut since: HashMap<String, Offset>,
    ) -> Result<Value, WsError> {
        let session = self.session()?.clone();
        let mut topics = Vec::with_capacity(parsed.len());
        for topic in parsed {
            if let Topic::Room(id) = &topic {
                if !self.rooms.contains(id) {
                    return Err(WsError::new(
                        ErrorCode::Forbidden,
                        format!("join room {id} (room:join) before subscribing to it"),
                    ));
                }
            }
            let audience = topic.audience(&session.claims)?;
            topics.push((topic, audience));
        }
        let mut results = serde_json::Map::new();
        for (topic, audience) in topics {
            let name = topic.to_string();
            let joined = self
                .state
                .hub
                .subscribe(
                    self.id,
                    &self.outbox,
                    &topic.log(),
                    &name,
                    audience,
                    since.remove(&name),
                )
                .await?;
            results.insert(name, joined_json(&joined));
        }
        Ok(json!({ "topics": results }))
    }

    fn unsubscribe(&mut self, names: Vec<String>) -> Result<Value, WsError> {
        self.session()?;
        let mut removed = Vec::new();
        for name in names {
            if self.state.hub.unsubscribe(self.id, &name) {
                removed.push(name);
            }
        }
        Ok(json!({ "topics": removed }))
    }

    // === custom events ===

    /// A client emits a custom event: it must be registered (`/api/v1/subscribers`). A
    /// replicable one is re-broadcast, with `userId`, `timestamp` and `subscriberId` added: to
    /// the other members of `data.roomId` when it names a room (the sender must be one), else
    /// to the subscribers of the event's own topic. A non-replicable one goes nowhere else.
    async fn emit(&mut self, name: &str, data: &Value) -> Result<Value, WsError> {
        let unknown = || {
            WsError::new(
                ErrorCode::UnknownAction,
                format!(
                    "unknown action {name:?}: neither a protocol action nor a registered event"
                ),
            )
        };
        let session = self.session()?.clone();
        let subscriber = subscribers::find_by_event_listener(&self.state.db, name)
            .await?
            .ok_or_else(unknown)?;
        let processed = json!([{
            "id": subscriber.id,
            "eventListener": subscriber.event_listener,
            "replicable": subscriber.replicable,
        }]);
        if !subscriber.replicable {
            return Ok(json!({ "event": name, "subscribers": processed, "broadcast": null }));
        }
        let (log, topic) = match data.get("roomId").filter(|v| !v.is_null()) {
            None => (custom_log(name), name.to_owned()),
            Some(Value::String(room)) => {
                if !self.rooms.contains(room) {
                    return Err(WsError::new(
                        ErrorCode::Forbidden,
                        format!("join room {room} before sending to it"),
                    ));
                }
                (room_log(room), Topic::Room(room.clone()).to_string())
            }
            Some(_) => return Err(WsError::invalid("payload.roomId must be a string")),
        };
        let mut payload = data.clone();
        payload["userId"] = json!(session.claims.sub);
        payload["timestamp"] = json!(chrono::Utc::now().timestamp_millis());
        payload["subscriberId"] = json!(subscriber.id);
        let envelope =
            self.state
                .events
                .envelope(name, &log, payload, None, Some(self.origin.to_string()));
        let offset = self.publish(&envelope).await?;
        Ok(json!({
            "event": name,
            "subscribers": processed,
            "broadcast": {"topic": topic, "offset": offset.to_string()},
        }))
    }

    /// Publishes `envelope`; Redis being unreachable is an `UNAVAILABLE` error.
    async fn publish(
        &self,
        envelope: &petmesh_shared::event::EventEnvelope,
    ) -> Result<Offset, WsError> {
        self.state
            .events
            .publish_envelope(envelope)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, event = %envelope.event, "publishing an event failed");
                WsError::new(
                    ErrorCode::Unavailable,
                    "events are unavailable (Redis is unreachable)",
                )
            })
    }

    // === rooms ===

    async fn join_room(&mut self, room: String, since: Option<Offset>) -> Result<Value, WsError> {
        let session = self.session()?.clone();
        let topic = Topic::Room(room.clone()).to_string();
        let already = self.rooms.contains(&room);
        let joined = self
            .state
            .hub
            .subscribe(
                self.id,
                &self.outbox,
                &room_log(&room),
                &topic,
                Audience::Everyone,
                since,
            )
            .await?;
        if !already {
            self.rooms.push(room.clone());
            self.publish_room_event(&room, "room:joined", json!({}), &session)
                .await?;
        }
        let mut reply = joined_json(&joined);
        reply["roomId"] = json!(room);
        Ok(reply)
    }

    async fn leave_room(&mut self, room: String) -> Result<Value, WsError> {
        let session = self.session()?.clone();
        let Some(index) = self.rooms.iter().position(|r| *r == room) else {
            return Err(WsError::new(
                ErrorCode::NotFound,
                format!("not a member of room {room}"),
            ));
        };
        self.rooms.remove(index);
        self.state
            .hub
            .unsubscribe(self.id, &Topic::Room(room.clone()).to_string());
        self.publish_room_event(&room, "room:left", json!({}), &session)
            .await?;
        Ok(json!({ "roomId": room }))
    }

    async fn room_message(
        &mut self,
        room: String,
        content: &str,
        kind: &str,
    ) -> Result<Value, WsError> {
        let session = self.session()?.clone();
        if !self.rooms.contains(&room) {
            return Err(WsError::new(
                ErrorCode::Forbidden,
                format!("join room {room} before sending to it"),
            ));
        }
        let offset = self
            .publish_room_event(
                &room,
                "room:message",
                json!({"content": content, "type": kind}),
                &session,
            )
            .await?;
        Ok(json!({ "roomId": room, "offset": offset.to_string() }))
    }

    /// Publishes `event` to room `room` with `roomId`, `userId` and `timestamp` added.
    async fn publish_room_event(
        &self,
        room: &str,
        event: &str,
        mut data: Value,
        session: &Session,
    ) -> Result<Offset, WsError> {
        let now = chrono::Utc::now().timestamp_millis();
        data["roomId"] = json!(room);
        data["userId"] = json!(session.claims.sub);
        data["timestamp"] = json!(now);
        let envelope = self
            .state
            .events
            .envelope(event, &room_log(room), data, None, None);
        self.publish(&envelope).await
    }

    /// Leaves every room (the connection is ending), telling the other members.
    pub async fn leave_all_rooms(&mut self) {
        let Some(session) = self.session.clone() else {
            return;
        };
        for room in std::mem::take(&mut self.rooms) {
            let _ = self
                .publish_room_event(&room, "room:left", json!({}), &session)
                .await;
        }
    }
}

/// How a subscription started, for the response.
fn joined_json(joined: &Joined) -> Value {
    let mut result = json!({ "offset": joined.offset.as_ref().map(Offset::to_string) });
    match &joined.recovery {
        None => {}
        Some(Ok(missed)) => {
            result["recovered"] = json!(true);
            result["missed"] = json!(missed);
        }
        Some(Err(reason)) => {
            result["recovered"] = json!(false);
            result["reason"] = json!(reason);
        }
    }
    result
}
