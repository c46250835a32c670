//! The WebSocket protocol's frames (ARCHITECTURE.md, "WebSocket protocol"): what a client may
//! send and what the node sends back, as JSON text frames.
//!
//! Requests come in two forms: `{"type":"request","id":..,"action":..,"payload":{..}}` and the
//! short form `{"event":..,"data":{..}}` of existing pet-store clients (an `id` is optional in
//! both). Both get the same response frame: `{"type":"response","id":..,"action":..,
//! "status":"success"|"error","payload":{..}}`, the error payload being `{"code","message"}`.
//! Events are `{"type":"event","event":..,"topic":..,"offset":..,"payload":{..},
//! "timestamp":..}`.

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// Machine-readable error codes of error responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame is not JSON (or not a JSON object).
    InvalidJson,
    /// A field is missing or has the wrong type or value.
    ValidationError,
    /// No such action or registered event name.
    UnknownAction,
    /// The connection is not authenticated, or the token is not valid.
    Unauthorized,
    /// Authenticated, but not allowed.
    Forbidden,
    /// No such resource (or not visible to the caller).
    NotFound,
    /// Conflicts with existing data (stock, state, duplicates).
    Conflict,
    /// A stated precondition (version) does not hold.
    PreconditionFailed,
    /// Well-formed but cannot be processed.
    Unprocessable,
    /// Over the connection's request rate.
    RateLimited,
    /// The request took longer than `realtime.request_timeout_ms`.
    Timeout,
    /// A dependency is unavailable; retry later.
    Unavailable,
    /// A bug; details are in the node's log.
    Internal,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::UnknownAction => "UNKNOWN_ACTION",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::PreconditionFailed => "PRECONDITION_FAILED",
            Self::Unprocessable => "UNPROCESSABLE",
            Self::RateLimited => "RATE_LIMITED",
            Self::Timeout => "TIMEOUT",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL_ERROR",
        }
    }
}

/// A failed request: code and human-readable message.
#[derive(Debug, Clone)]
pub struct WsError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl WsError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A `VALIDATION_ERROR`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }
}

/// The REST service code's errors keep their message; the status becomes the code.
impl From<ApiError> for WsError {
    fn from(err: ApiError) -> Self {
        let body = err.body();
        let code = match body.status_code {
            400 | 413 | 415 => ErrorCode::ValidationError,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            412 => ErrorCode::PreconditionFailed,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::RateLimited,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        Self::new(code, body.message.clone())
    }
}

/// One client request, whichever form it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    /// The correlation id, echoed in the response (a string or a number; `null` if absent).
    pub id: Value,
    /// The action or event name.
    pub action: String,
    /// The payload (`{}` if absent).
    pub payload: Value,
}

/// Longest accepted action name.
const MAX_ACTION_LEN: usize = 100;

/// Parses a text frame. An error comes with whatever `id` could be read, so the client can
/// still correlate it.
pub fn parse_request(text: &str) -> Result<ClientRequest, (Value, WsError)> {
    let value: Value = serde_json::from_str(text).map_err(|err| {
        (
            Value::Null,
            WsError::new(ErrorCode::InvalidJson, format!("frame is not JSON: {err}")),
        )
    })?;
    let Value::Object(mut frame) = value else {
        return Err((
            Value::Null,
            WsError::new(ErrorCode::InvalidJson, "frame must be a JSON object"),
        ));
    };
    let id = frame.remove("id").unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err((
            Value::Null,
            WsError::invalid("id must be a string or a number"),
        ));
    }
    if let Some(id) = id.as_str() {
        if id.len() > 128 {
            return Err((
                Value::Null,
                WsError::invalid("id is longer than 128 characters"),
            ));
        }
    }
    let fail = |message: &str| Err((id.clone(), WsError::invalid(message)));
    let (action, payload) = if frame.contains_key("action") {
        match frame.get("type") {
            None => {}
            Some(Value::String(t)) if t == "request" => {}
            Some(_) => return fail("type must be \"request\""),
        }
        (frame.remove("action"), frame.remove("payload"))
    } else if frame.contains_key("event") {
        (frame.remove("event"), frame.remove("data"))
    } else {
        return fail("a request needs an action (or, in the short form, an event)");
    };
    let Some(Value::String(action)) = action else {
        return fail("action must be a string");
    };
    if action.is_empty() || action.len() > MAX_ACTION_LEN {
        return fail("action must be 1 to 100 characters");
    }
    let payload = match payload {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(object @ Value::Object(_)) => object,
        Some(_) => return fail("payload must be a JSON object"),
    };
    Ok(ClientRequest {
        id,
        action,
        payload,
    })
}

/// A success response to `request`.
pub fn success(id: &Value, action: &str, payload: impl Serialize) -> String {
    json!({
        "type": "response",
        "id": id,
        "action": action,
        "status": "success",
        "payload": payload,
    })
    .to_string()
}

/// An error response (`action` is empty when the frame could not be read that far).
pub fn failure(id: &Value, action: &str, error: &WsError) -> String {
    let mut frame = json!({
        "type": "response",
        "id": id,
        "status": "error",
        "payload": {"code": error.code.as_str(), "message": error.message},
    });
    if !action.is_empty() {
        frame["action"] = Value::String(action.to_owned());
    }
    frame.to_string()
}

/// An event frame. `offset` is absent for events outside any topic (`auth:revoked`,
/// `system:reconnect`).
pub fn event(
    name: &str,
    topic: Option<&str>,
    offset: Option<&str>,
    payload: &Value,
    timestamp: i64,
) -> String {
    #[derive(Serialize)]
    struct EventFrame<'a> {
        r#type: &'static str,
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<&'a str>,
        payload: &'a Value,
        timestamp: i64,
    }
    serde_json::to_string(&EventFrame {
        r#type: "event",
        event: name,
        topic,
        offset,
        payload,
        timestamp,
    })
    .expect("event frames serialise")
}

/// A typed field of a request payload, or a `VALIDATION_ERROR` naming it.
pub fn field<'a>(payload: &'a Value, name: &str) -> Result<&'a Value, WsError> {
    payload
        .get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| WsError::invalid(format!("payload.{name} is required")))
}

/// A required string field of a request payload.
pub fn string_field<'a>(payload: &'a Value, name: &str) -> Result<&'a str, WsError> {
    field(payload, name)?
        .as_str()
        .ok_or_else(|| WsError::invalid(format!("payload.{name} must be a string")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_request_forms_parse_to_the_same_request() {
        let long = parse_request(
            r#"{"type":"request","id":"7","action":"auth:login","payload":{"token":"t"}}"#,
        )
        .unwrap();
        let short =
            parse_request(r#"{"event":"auth:login","data":{"token":"t"},"id":"7"}"#).unwrap();
        assert_eq!(long, short);
        assert_eq!(long.payload["token"], "t");
        let bare = parse_request(r#"{"action":"ping"}"#).unwrap();
        assert_eq!(bare.id, Value::Null);
        assert_eq!(bare.payload, json!({}));
    }

    #[test]
    fn bad_frames_get_a_code_and_keep_their_id() {
        let cases = [
            ("not json", Value::Null, ErrorCode::InvalidJson),
            ("[1,2]", Value::Null, ErrorCode::InvalidJson),
            (r#"{"id":"a"}"#, json!("a"), ErrorCode::ValidationError),
            (
                r#"{"id":3,"action":5}"#,
                json!(3),
                ErrorCode::ValidationError,
            ),
            (
                r#"{"id":"b","action":"x","payload":[1]}"#,
                json!("b"),
                ErrorCode::ValidationError,
            ),
            (
                r#"{"id":"c","type":"event","action":"x"}"#,
                json!("c"),
                ErrorCode::ValidationError,
            ),
            (
                r#"{"id":{},"action":"x"}"#,
                Value::Null,
                ErrorCode::ValidationError,
            ),
            (
                r#"{"id":"d","action":""}"#,
                json!("d"),
                ErrorCode::ValidationError,
            ),
        ];
        for (text, id, code) in cases {
            let (got_id, err) = parse_request(text).unwrap_err();
            assert_eq!((got_id, err.code), (id, code), "{text}");
        }
    }

    #[test]
    fn responses_and_events_have_the_documented_shape() {
        let ok: Value = serde_json::from_str(&success(&json!("1"), "ping", json!({}))).unwrap();
        assert_eq!(ok["type"], "response");
        assert_eq!(ok["status"], "success");
        assert_eq!(ok["id"], "1");
        let err: Value = serde_json::from_str(&failure(
            &json!(2),
            "",
            &WsError::new(ErrorCode::UnknownAction, "no such action"),
        ))
        .unwrap();
        assert_eq!(err["payload"]["code"], "UNKNOWN_ACTION");
        assert!(err.get("action").is_none());
        let event: Value = serde_json::from_str(&event(
            "pet:created",
            Some("pets"),
            Some("e:1"),
            &json!({"id": 1}),
            5,
        ))
        .unwrap();
        assert_eq!(event["offset"], "e:1");
        assert_eq!(event["topic"], "pets");
        assert_eq!(event["type"], "event");
    }
}
