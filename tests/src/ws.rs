//! [`WsClient`]: a client of the node's WebSocket protocol for tests. It numbers requests,
//! waits for the response with the same id (keeping events that arrive meanwhile), and waits
//! for events and for the server's close frame, always with [`patience`] as the deadline.

use std::{collections::VecDeque, time::Duration};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::eventually::patience;

/// One WebSocket connection to a node (or through the balancer).
pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Events received while waiting for something else, oldest first.
    events: VecDeque<Value>,
    /// The close frame, once received: code and reason.
    closed: Option<(u16, String)>,
}

/// A response frame.
#[derive(Debug, Clone)]
pub struct WsResponse {
    /// The whole frame.
    pub frame: Value,
}

impl WsResponse {
    /// The payload of a success; panics (with the frame) on an error response.
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.frame["status"], "success",
            "expected success: {}",
            self.frame
        );
        &self.frame["payload"]
    }

    /// The error code of an error response; panics on a success.
    pub fn error_code(&self) -> &str {
        assert_eq!(
            self.frame["status"], "error",
            "expected an error: {}",
            self.frame
        );
        self.frame["payload"]["code"].as_str().unwrap_or_default()
    }
}

impl WsClient {
    /// Connects to `base_url` (`http://host:port`) at `/ws`, with `token` as a Bearer token if
    /// given.
    pub async fn connect(base_url: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let url = format!("{}/ws", base_url.replacen("http", "ws", 1));
        let mut request = url.as_str().into_client_request()?;
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let (socket, _) =
            tokio::time::timeout(patience(), tokio_tungstenite::connect_async(request))
                .await
                .context("WebSocket handshake timed out")??;
        Ok(Self {
            socket,
            next_id: 0,
            events: VecDeque::new(),
            closed: None,
        })
    }

    /// Connects and authenticates with `auth:login`.
    pub async fn login(base_url: &str, token: &str) -> anyhow::Result<Self> {
        let mut client = Self::connect(base_url, None).await?;
        client
            .request("auth:login", json!({ "token": token }))
            .await?
            .ok();
        Ok(client)
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        self.socket.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Sends `action` with `payload` and waits for its response.
    pub async fn request(&mut self, action: &str, payload: Value) -> anyhow::Result<WsResponse> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let frame = json!({"type": "request", "id": id, "action": action, "payload": payload});
        self.send_text(frame.to_string()).await?;
        self.response(&id).await
    }

    /// Waits for the response with `id`, keeping events that arrive first.
    pub async fn response(&mut self, id: &str) -> anyhow::Result<WsResponse> {
        loop {
            let frame = self.next_frame().await?;
            if frame["type"] == "response" && frame["id"] == id {
                return Ok(WsResponse { frame });
            }
            if frame["type"] == "event" {
                self.events.push_back(frame);
            }
        }
    }

    /// Waits for the next response frame, whatever its id (for requests sent raw).
    pub async fn any_response(&mut self) -> anyhow::Result<WsResponse> {
        loop {
            let frame = self.next_frame().await?;
            if frame["type"] == "response" {
                return Ok(WsResponse { frame });
            }
            self.events.push_back(frame);
        }
    }

    /// The next event, received earlier or now.
    pub async fn next_event(&mut self) -> anyhow::Result<Value> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        loop {
            let frame = self.next_frame().await?;
            if frame["type"] == "event" {
                return Ok(frame);
            }
        }
    }

    /// Waits for the first event matching `wanted`, returning it and dropping the others
    /// before it.
    pub async fn event_where(&mut self, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        loop {
            let event = self.next_event().await?;
            if wanted(&event) {
                return Ok(event);
            }
        }
    }

    /// Events received so far and not yet taken.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Waits for the server to close the connection; returns the close code and reason.
    /// Events received meanwhile are kept.
    pub async fn closed(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            if let Some(closed) = &self.closed {
                return Ok(closed.clone());
            }
            match self.next_frame().await {
                Ok(frame) => {
                    if frame["type"] == "event" {
                        self.events.push_back(frame);
                    }
                }
                Err(err) if self.closed.is_none() => return Err(err),
                Err(_) => {}
            }
        }
    }

    /// Sends a ping frame and waits for its pong, proving the server answers this connection
    /// (frames queued before the pong are kept).
    pub async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let response = self.request("ping", json!({})).await?;
        response.ok();
        Ok(started.elapsed())
    }

    /// Closes from the client side.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.socket.close(None).await?;
        Ok(())
    }

    /// The next text frame as JSON, within [`patience`]; records a close frame.
    async fn next_frame(&mut self) -> anyhow::Result<Value> {
        loop {
            if self.closed.is_some() {
                bail!("connection closed: {:?}", self.closed);
            }
            let message = tokio::time::timeout(patience(), self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame within {:?}", patience()))?;
            match message {
                None => bail!("connection ended without a close frame"),
                Some(Err(err)) => bail!("connection failed: {err}"),
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
