//! What a request asks for: the [`Action`] a parsed request frame decodes to, without touching
//! the connection, the database or Redis, so that decoding can be tested on arbitrary input
//! (the property tests in `decode/tests.rs`, and the `cargo fuzz` target in `fuzz/`).
//!
//! A text frame goes through three steps, each either succeeding or answering with an error
//! code, never panicking:
//!
//! 1. [`protocol::parse_request`]: JSON text → [`ClientRequest`] (`INVALID_JSON`,
//!    `VALIDATION_ERROR`);
//! 2. [`access`]: who may ask for the action, checked by the connection against its session
//!    (`UNAUTHORIZED`, `FORBIDDEN`) before the payload is looked at, so that an unauthenticated
//!    client learns nothing about payload rules;
//! 3. [`decode`]: action and payload → [`Action`] (`VALIDATION_ERROR`, `UNKNOWN_ACTION`).
//!
//! [`decode_frame`] runs steps 1 and 3, the pure part, for tests and fuzzing.

use std::collections::HashMap;

use serde_json::Value;

use super::{
    actions::ACTIONS,
    protocol::{self, field, string_field, ClientRequest, ErrorCode, WsError},
    resources::{self, ResourceAction},
    topic::{is_valid_room_id, Topic},
};
use crate::events::log::Offset;

/// Most topics one `subscribe` may name.
pub const MAX_TOPICS: usize = 50;

/// Longest room message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// Who may ask for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any connection, authenticated or not (`ping`, `auth:login`, names that are no action).
    Anyone,
    /// An authenticated connection.
    Session,
    /// An authenticated admin (writes to the catalogue).
    Admin,
}

/// Who may ask for `action`.
pub fn access(action: &str) -> Access {
    match action {
        "ping" | "auth:login" => Access::Anyone,
        "pets.create" | "pets.update" | "pets.delete" => Access::Admin,
        _ if ACTIONS.contains(&action) || resources::is_resource_action(action) => Access::Session,
        // A custom event: only a well-formed name can be a registered one, which needs a
        // session; any other name is answered `UNKNOWN_ACTION` by `decode`, to anyone.
        _ if crate::subscribers::is_well_formed_event_name(action) => Access::Session,
        _ => Access::Anyone,
    }
}

/// A decoded request.
#[derive(Debug)]
pub enum Action {
    /// `ping`.
    Ping,
    /// `auth:login` with an access token.
    Login {
        /// The access token, not yet checked.
        token: String,
    },
    /// `auth:refresh` with a newer access token of the same user.
    Refresh {
        /// The new access token.
        token: String,
    },
    /// `auth:logout`.
    Logout,
    /// `subscribe`: topics in the order given, each with the offset to resume after, if any.
    Subscribe {
        /// The topics (valid names; who may see them is checked later).
        topics: Vec<Topic>,
        /// `since`, by topic name; every name is one of `topics`.
        since: HashMap<String, Offset>,
    },
    /// `unsubscribe` from these topic names (rooms excluded: they are left with `room:leave`).
    Unsubscribe {
        /// The names as given.
        topics: Vec<String>,
    },
    /// `room:join`.
    RoomJoin {
        /// A valid room id.
        room: String,
        /// Resume after this offset.
        since: Option<Offset>,
    },
    /// `room:leave`.
    RoomLeave {
        /// A valid room id.
        room: String,
    },
    /// `room:message`.
    RoomMessage {
        /// A valid room id.
        room: String,
        /// 1 to [`MAX_MESSAGE_CHARS`] characters, not only white space.
        content: String,
        /// `text`, `system` or `notification`.
        kind: &'static str,
    },
    /// A resource action mirroring REST, payload parsed as REST parses its request.
    Resource(ResourceAction),
    /// A custom event with a well-formed name (whether it is registered is asked later); its
    /// data is the request's payload.
    Emit {
        /// The event name.
        name: String,
    },
}

/// Step 3: decodes `request`'s action and payload.
pub fn decode(request: &ClientRequest) -> Result<Action, WsError> {
    let payload = &request.payload;
    Ok(match request.action.as_str() {
        "ping" => Action::Ping,
        "auth:login" => Action::Login {
            token: string_field(payload, "token")?.to_owned(),
        },
        "auth:refresh" => Action::Refresh {
            token: string_field(payload, "token")?.to_owned(),
        },
        "auth:logout" => Action::Logout,
        "subscribe" => {
            let names = topic_names(payload)?;
            let since = since_offsets(payload, &names)?;
            let topics = names
                .iter()
                .map(|name| Topic::parse(name))
                .collect::<Result<_, _>>()?;
            Action::Subscribe { topics, since }
        }
        "unsubscribe" => {
            let topics = topic_names(payload)?;
            for name in &topics {
                if matches!(Topic::parse(name)?, Topic::Room(_)) {
                    return Err(WsError::invalid(format!(
                        "{name}: leave the room (room:leave) instead"
                    )));
                }
            }
            Action::Unsubscribe { topics }
        }
        "room:join" => {
            let room = room_id(payload)?;
            let since = match payload.get("since").filter(|v| !v.is_null()) {
                None => None,
                Some(Value::String(s)) => Some(
                    s.parse::<Offset>()
                        .map_err(|e| WsError::invalid(format!("payload.since: {e}")))?,
                ),
                Some(_) => return Err(WsError::invalid("payload.since must be an offset string")),
            };
            Action::RoomJoin { room, since }
        }
        "room:leave" => Action::RoomLeave {
            room: room_id(payload)?,
        },
        "room:message" => {
            let room = room_id(payload)?;
            let content = string_field(payload, "content")?;
            if content.trim().is_empty() || content.chars().count() > MAX_MESSAGE_CHARS {
                return Err(WsError::invalid(format!(
                    "payload.content must be 1 to {MAX_MESSAGE_CHARS} characters"
                )));
            }
            let kind = match payload.get("type").filter(|v| !v.is_null()) {
                None => "text",
                Some(Value::String(t)) => match t.as_str() {
                    "text" => "text",
                    "system" => "system",
                    "notification" => "notification",
                    _ => return Err(invalid_message_type()),
                },
                Some(_) => return Err(invalid_message_type()),
            };
            Action::RoomMessage {
                room,
                content: content.to_owned(),
                kind,
            }
        }
        action if resources::is_resource_action(action) => {
            Action::Resource(resources::decode(action, payload)?)
        }
        name if crate::subscribers::is_well_formed_event_name(name) => Action::Emit {
            name: name.to_owned(),
        },
        name => {
            return Err(WsError::new(
                ErrorCode::UnknownAction,
                format!(
                    "unknown action {name:?}: neither a protocol action nor a registered event"
                ),
            ))
        }
    })
}

/// Steps 1 and 3 on one text frame: the request and what it asks for, or the error to answer
/// with (and the `id` to answer it under). The entry point of the property tests and of the
/// fuzz target.
pub fn decode_frame(text: &str) -> Result<(ClientRequest, Action), (Value, WsError)> {
    let request = protocol::parse_request(text)?;
    match decode(&request) {
        Ok(action) => Ok((request, action)),
        Err(err) => Err((request.id, err)),
    }
}

fn invalid_message_type() -> WsError {
    WsError::invalid("payload.type must be text, system or notification")
}

/// `payload.topics`: 1 to [`MAX_TOPICS`] strings.
fn topic_names(payload: &Value) -> Result<Vec<String>, WsError> {
    let topics = field(payload, "topics")?
        .as_array()
        .ok_or_else(|| WsError::invalid("payload.topics must be an array of topic names"))?;
    if topics.is_empty() || topics.len() > MAX_TOPICS {
        return Err(WsError::invalid(format!(
            "payload.topics must name 1 to {MAX_TOPICS} topics"
        )));
    }
    topics
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_owned)
                .ok_or_else(|| WsError::invalid("payload.topics must contain strings"))
        })
        .collect()
}

/// `payload.since`: offsets by topic, each topic among `names`.
fn since_offsets(payload: &Value, names: &[String]) -> Result<HashMap<String, Offset>, WsError> {
    let Some(since) = payload.get("since").filter(|v| !v.is_null()) else {
        return Ok(HashMap::new());
    };
    let since = since
        .as_object()
        .ok_or_else(|| WsError::invalid("payload.since must map topics to offsets"))?;
    since
        .iter()
        .map(|(topic, offset)| {
            if !names.contains(topic) {
                return Err(WsError::invalid(format!(
                    "payload.since names {topic}, which is not in payload.topics"
                )));
            }
            let offset = offset
                .as_str()
                .ok_or_else(|| WsError::invalid(format!("payload.since.{topic} must be a string")))?
                .parse()
                .map_err(|e| WsError::invalid(format!("payload.since.{topic}: {e}")))?;
            Ok((topic.clone(), offset))
        })
        .collect()
}

/// `payload.roomId`, validated.
fn room_id(payload: &Value) -> Result<String, WsError> {
    let id = string_field(payload, "roomId")?;
    if !is_valid_room_id(id) {
        return Err(WsError::invalid(
            "payload.roomId must be 1 to 64 of A-Z a-z 0-9 _ . -",
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests;
