//! petmesh's side of the fan-out benchmark: `/ws` with the token on the handshake, then
//! `room:join` and `room:message` in room [`ROOM`] (see the README's real-time section), or,
//! for domain events (the path through the PostgreSQL outbox), `subscribe` to `pets` and
//! `pets.create`.
//!
//! A benchmark message is a `room:message` whose `content` is `"<seq> <sent_us>"`, or a
//! `pet:created` whose pet is named so. Frames
//! are parsed into borrowed structs that name only the fields needed here, because every
//! subscriber parses every event.

use std::borrow::Cow;

use anyhow::{bail, Context as _};
use futures_util::SinkExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{next_text, ws_base, ws_connect, Inbound, Socket};

/// The room every subscriber joins and the publisher sends to; with several rooms, the
/// prefix of their names.
pub(super) const ROOM: &str = "bench";

/// The request id of the `room:join`, to find its response among events.
const JOIN_ID: &str = "join";

/// The fields of a server frame that the benchmark reads.
#[derive(Deserialize)]
struct Frame<'a> {
    /// `response` or `event`.
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// An event's name.
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    /// A response's request id.
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    /// A response's `success` or `error`.
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    /// The event data or response payload.
    #[serde(default, borrow)]
    payload: Option<Payload<'a>>,
}

/// The payload fields the benchmark reads: a message's content (or a pet's name), an error's
/// code and text.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// Opens `/ws` on the node at `base_url`, authenticated by `token` on the handshake (the
/// node answers 401 instead of upgrading when the token is not valid).
pub(super) async fn connect(base_url: &str, token: &str) -> anyhow::Result<Socket> {
    ws_connect(&format!("{}/ws", ws_base(base_url)), Some(token)).await
}

/// Joins `room` and waits for the response (events that arrive first are dropped).
pub(super) async fn join(socket: &mut Socket, room: &str) -> anyhow::Result<()> {
    request(socket, "room:join", json!({"roomId": room})).await
}

/// Subscribes to the `pets` topic and waits for the response.
pub(super) async fn subscribe_pets(socket: &mut Socket) -> anyhow::Result<()> {
    request(socket, "subscribe", json!({"topics": ["pets"]})).await
}

/// Sends `action` and waits for its successful response (events that arrive first are
/// dropped).
async fn request(
    socket: &mut Socket,
    action: &str,
    payload: serde_json::Value,
) -> anyhow::Result<()> {
    let request = json!({"type": "request", "id": JOIN_ID, "action": action, "payload": payload});
    socket
        .send(Message::text(request.to_string()))
        .await
        .with_context(|| format!("sending {action}"))?;
    loop {
        let text = next_text(socket)
            .await
            .with_context(|| format!("waiting for {action}"))?;
        let frame: Frame<'_> = serde_json::from_str(&text)
            .with_context(|| format!("unreadable frame after {action}: {text}"))?;
        if frame.kind == "response" && frame.id.as_deref() == Some(JOIN_ID) {
            if frame.status.as_deref() != Some("success") {
                bail!("{action} failed: {text}");
            }
            return Ok(());
        }
    }
}

/// A `pets.create` request for a pet named `"<seq> <sent_us>"`, with the sequence number as
/// its id.
pub(super) fn create_pet_frame(seq: u64, sent_us: u64) -> String {
    format!(
        r#"{{"type":"request","id":"{seq}","action":"pets.create","payload":{{"name":"{seq} {sent_us}","category":"bench","price":"1.00","stock":1}}}}"#
    )
}

/// A `room:message` request to `room` carrying `"<seq> <sent_us>"`, with the sequence number
/// as its id.
pub(super) fn publish_frame(seq: u64, sent_us: u64, room: &str) -> String {
    format!(
        r#"{{"type":"request","id":"{seq}","action":"room:message","payload":{{"roomId":"{room}","content":"{seq} {sent_us}"}}}}"#
    )
}

/// A `room:message` event with benchmark content is a [`Inbound::Message`], an error
/// response an [`Inbound::Error`]; the rest is [`Inbound::Other`].
pub(super) fn classify(text: &str) -> Inbound {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Inbound::Error(format!("unreadable frame: {text}"));
    };
    match (frame.kind.as_ref(), frame.event.as_deref()) {
        ("event", Some(event @ ("room:message" | "pet:created"))) => frame
            .payload
            .and_then(|p| {
                if event == "pet:created" {
                    p.name
                } else {
                    p.content
                }
            })
            .and_then(|content| parse_content(&content))
            .map_or(Inbound::Other, |(seq, sent_us)| Inbound::Message {
                seq,
                sent_us,
            }),
        ("response", _) if frame.status.as_deref() == Some("error") => {
            let payload = frame.payload;
            let code = payload.as_ref().and_then(|p| p.code.as_deref());
            let message = payload.as_ref().and_then(|p| p.message.as_deref());
            Inbound::Error(format!(
                "{}: {}",
                code.unwrap_or("?"),
                message.unwrap_or_default()
            ))
        }
        _ => Inbound::Other,
    }
}

/// `"<seq> <sent_us>"` → its two numbers.
fn parse_content(content: &str) -> Option<(u64, u64)> {
    let (seq, sent_us) = content.split_once(' ')?;
    Some((seq.parse().ok()?, sent_us.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frame_is_a_room_message_request() {
        let frame: serde_json::Value = serde_json::from_str(&publish_frame(7, 1234, ROOM)).unwrap();
        assert_eq!(frame["type"], "request");
        assert_eq!(frame["id"], "7");
        assert_eq!(frame["action"], "room:message");
        assert_eq!(frame["payload"]["roomId"], ROOM);
        assert_eq!(frame["payload"]["content"], "7 1234");
    }

    #[test]
    fn classify_reads_room_messages_and_errors() {
        let event = r#"{"type":"event","event":"room:message","topic":"room:bench","offset":"1:5",
            "payload":{"content":"3 99","type":"text","roomId":"bench","userId":"u","timestamp":1},"timestamp":1}"#;
        assert_eq!(
            classify(event),
            Inbound::Message {
                seq: 3,
                sent_us: 99
            }
        );
        let error = r#"{"type":"response","id":"4","action":"room:message","status":"error",
            "payload":{"code":"RATE_LIMITED","message":"slow down"}}"#;
        assert_eq!(
            classify(error),
            Inbound::Error("RATE_LIMITED: slow down".into())
        );
        let joined =
            r#"{"type":"event","event":"room:joined","payload":{"roomId":"bench"},"timestamp":1}"#;
        assert_eq!(classify(joined), Inbound::Other);
        let ok = r#"{"type":"response","id":"4","status":"success","payload":{"offset":"1:2"}}"#;
        assert_eq!(classify(ok), Inbound::Other);
        let chat = r#"{"type":"event","event":"room:message","payload":{"content":"hello"}}"#;
        assert_eq!(classify(chat), Inbound::Other);
    }

    #[test]
    fn pet_creations_carry_the_message_in_the_name() {
        let frame: serde_json::Value = serde_json::from_str(&create_pet_frame(7, 1234)).unwrap();
        assert_eq!(frame["action"], "pets.create");
        assert_eq!(frame["payload"]["name"], "7 1234");
        let event = r#"{"type":"event","event":"pet:created","topic":"pets","offset":"1:5",
            "payload":{"id":1,"name":"3 99","category":"bench"},"timestamp":1}"#;
        assert_eq!(
            classify(event),
            Inbound::Message {
                seq: 3,
                sent_us: 99
            }
        );
    }
}
