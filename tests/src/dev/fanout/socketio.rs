//! The Socket.IO side of the fan-out benchmark: Engine.IO v4 and Socket.IO v5 spoken
//! directly over the websocket transport, against `bench/socketio/server.js`.
//!
//! The packets used, each one text frame (Engine.IO type digit, then for `4` "message" the
//! Socket.IO type digit, an optional acknowledgement id and a JSON array):
//! 1. server `0{"sid":...,"pingInterval":...}` (open), client `40` (connect to `/`),
//!    server `40{"sid":...}` (connected);
//! 2. client `421["join"]` (event with acknowledgement id 1), server `431[]` (its ack);
//! 3. client `42["publish",{"s":seq,"t":sent_us}]`, every member `42["msg",{...}]`;
//! 4. server `2` (ping) at its ping interval, client `3` (pong), or the server hangs up.

use anyhow::{bail, Context as _};
use futures_util::SinkExt as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{next_text, ws_base, ws_connect, Inbound, Socket};

/// Engine.IO ping, sent by the server.
const PING: &str = "2";

/// Engine.IO pong, the client's answer.
const PONG: &str = "3";

/// The body of a benchmark message, as published and broadcast.
#[derive(Deserialize)]
struct Body {
    /// Sequence number.
    s: u64,
    /// Send time, Unix µs.
    t: u64,
}

/// Opens the websocket transport on the node at `base_url` and connects to the default
/// namespace.
pub(super) async fn connect(base_url: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", ws_base(base_url));
    let mut socket = ws_connect(&url, None).await?;
    let open = next_text(&mut socket)
        .await
        .context("waiting for the open packet")?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open}");
    }
    socket
        .send(Message::text("40"))
        .await
        .context("sending connect")?;
    let connected = until_not_ping(&mut socket)
        .await
        .context("waiting for connect")?;
    if !connected.starts_with("40") {
        bail!("expected the Socket.IO connect packet, got {connected}");
    }
    Ok(socket)
}

/// Sends `join` with acknowledgement id 1 and waits for the acknowledgement.
pub(super) async fn join(socket: &mut Socket) -> anyhow::Result<()> {
    socket
        .send(Message::text(r#"421["join"]"#))
        .await
        .context("sending join")?;
    loop {
        let text = until_not_ping(socket)
            .await
            .context("waiting for the join ack")?;
        if text.starts_with("431") {
            return Ok(());
        }
    }
}

/// `42["publish",{"s":seq,"t":sent_us}]`.
pub(super) fn publish_frame(seq: u64, sent_us: u64) -> String {
    format!(r#"42["publish",{{"s":{seq},"t":{sent_us}}}]"#)
}

/// A `msg` event is an [`Inbound::Message`], a ping wants a pong, a connect error or an
/// Engine.IO close is an [`Inbound::Error`]; the rest is [`Inbound::Other`].
pub(super) fn classify(text: &str) -> Inbound {
    if text == PING {
        return Inbound::Reply(PONG);
    }
    if let Some(event) = text.strip_prefix("42") {
        return match serde_json::from_str::<(&str, Body)>(event) {
            Ok(("msg", body)) => Inbound::Message {
                seq: body.s,
                sent_us: body.t,
            },
            _ => Inbound::Other,
        };
    }
    if text.starts_with("44") || text == "1" {
        return Inbound::Error(format!("server sent {text}"));
    }
    Inbound::Other
}

/// The next text frame that is not a ping, answering pings on the way.
async fn until_not_ping(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        let text = next_text(socket).await?;
        if text != PING {
            return Ok(text);
        }
        socket
            .send(Message::text(PONG))
            .await
            .context("sending pong")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frames_come_back_as_messages() {
        let frame = publish_frame(5, 1_700_000_000_000_000);
        assert_eq!(frame, r#"42["publish",{"s":5,"t":1700000000000000}]"#);
        let broadcast = frame.replace("publish", "msg");
        assert_eq!(
            classify(&broadcast),
            Inbound::Message {
                seq: 5,
                sent_us: 1_700_000_000_000_000
            }
        );
    }

    #[test]
    fn classify_answers_pings_and_ignores_the_rest() {
        assert_eq!(classify("2"), Inbound::Reply("3"));
        assert_eq!(classify("431[]"), Inbound::Other);
        assert_eq!(classify(r#"42["other",{}]"#), Inbound::Other);
        assert!(matches!(
            classify(r#"44{"message":"no"}"#),
            Inbound::Error(_)
        ));
    }
}
