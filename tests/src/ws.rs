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

    /// Subscribes to `topics` and returns the success payload (panics on an error response).
    pub async fn subscribe(&mut self, topics: &[&str]) -> anyhow::Result<Value> {
        let response = self
            .request("subscribe", json!({ "topics": topics }))
            .await?;
        Ok(response.ok().clone())
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

    /// Waits up to the run's patience for the first event matching `wanted`, returning it and
    /// dropping the others before it. The deadline is for the whole wait: heartbeats and other
    /// events arriving meanwhile do not extend it.
    pub async fn event_where(&mut self, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        Ok(self.events_until(wanted).await?.1)
    }

    /// Like [`WsClient::event_where`], but returns the events before the match too (to check
    /// what did or did not arrive before a fence event).
    pub async fn events_until(
        &mut self,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(Vec<Value>, Value)> {
        let mut before = Vec::new();
        let wait = async {
            loop {
                let event = self.next_event().await?;
                if wanted(&event) {
                    return anyhow::Ok(event);
                }
                before.push(event);
            }
        };
        let found = tokio::time::timeout(patience(), wait).await;
        match found {
            Ok(event) => Ok((before, event?)),
            Err(_) => Err(anyhow!(
                "no matching event within {:?}; before: {before:?}",
                patience()
            )),
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

    /// Keeps reading (so pings are answered, as a live but quiet client does) until `stop`
    /// resolves; fails if the connection closes meanwhile. Events are kept.
    pub async fn read_until(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                message = self.socket.next() => match message {
                    None => bail!("connection ended"),
                    Some(Err(err)) => bail!("connection failed: {err}"),
                    Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text)?;
                        if frame["type"] == "event" {
                            self.events.push_back(frame);
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
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

/// A WebSocket handshake done by hand over plain TCP, for tests that need a client which does
/// not behave: it never answers pings, reads only when told to, and has a small receive buffer
/// (4 KiB) so that not reading soon pushes back on the node.
pub struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The code of the server's close frame, once [`RawWs::read_some`] has seen it.
    close_code: Option<u16>,
}

impl RawWs {
    /// Opens `/ws` on `base_url` with `token` on the handshake.
    pub async fn connect(base_url: &str, token: &str) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = base_url.trim_start_matches("http://");
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut stream = socket.connect(addr.parse()?).await?;
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(patience(), stream.read(&mut chunk)).await??;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            bail!("handshake refused: {head}");
        }
        buffer.drain(..head_end);
        Ok(Self {
            stream,
            buffer,
            close_code: None,
        })
    }

    /// Sends a text frame (masked, as clients must).
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=65535 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends a request and reads until its response (a text frame with `"type":"response"`).
    pub async fn request(&mut self, action: &str, payload: Value) -> anyhow::Result<Value> {
        let frame = json!({"type": "request", "id": "raw", "action": action, "payload": payload});
        self.send_text(&frame.to_string()).await?;
        loop {
            let (opcode, payload) = self.next_frame().await?;
            if opcode == 0x1 {
                let frame: Value = serde_json::from_slice(&payload)?;
                if frame["type"] == "response" {
                    return Ok(frame);
                }
            }
        }
    }

    /// Ends the client's side of the TCP connection (a FIN) without a close handshake, as a
    /// client that goes away does; the server's side stays readable.
    pub async fn end_writing(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.shutdown().await
    }

    /// Reads (without ever answering a ping) until the server's close frame; returns its code
    /// and reason.
    pub async fn closed_after_silence(&mut self) -> anyhow::Result<(u16, String)> {
        loop {
            let (opcode, payload) = self.next_frame().await?;
            if opcode == 0x8 {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return Ok((code, reason.to_string()));
            }
        }
    }

    /// Reads once, at most `max` bytes, keeping track of frames (whole ones are consumed, a
    /// close frame's code is kept for [`RawWs::read_to_end`]). Returns the bytes read: 0 once
    /// the connection has ended.
    pub async fn read_some(&mut self, max: usize) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; max];
        let n = self.stream.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some((opcode, payload, len)) = parse_server_frame(&self.buffer[used..]) {
            if opcode == 0x8 {
                self.close_code = Some(
                    payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                );
            }
            used += len;
        }
        self.buffer.drain(..used);
        Ok(n)
    }

    /// Reads everything until the server ends the connection (end of stream or reset), for
    /// at most `within`; returns the code of its close frame if one came (a server closing a
    /// connection that does not drain may never get its close frame out). An error if the
    /// connection is still open after `within`.
    pub async fn read_to_end(&mut self, within: Duration) -> anyhow::Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.read_some(64 * 1024)).await {
                Err(_) => bail!("still open after {within:?}"),
                Ok(Ok(0) | Err(_)) => return Ok(self.close_code),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next whole frame (opcode, payload), reading as needed within [`patience`].
    async fn next_frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((opcode, payload, used)) = parse_server_frame(&self.buffer) {
                self.buffer.drain(..used);
                return Ok((opcode, payload));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(patience(), self.stream.read(&mut chunk))
                .await
                .context("no frame in time")??;
            if n == 0 {
                bail!("connection ended without a close frame");
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One unmasked server frame at the start of `buffer`: opcode, payload and bytes used.
fn parse_server_frame(buffer: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, &second) = (buffer.first()?, buffer.get(1)?);
    let (len, header) = match second & 0x7f {
        126 => (
            u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?]) as usize,
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buffer.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        short => (short as usize, 2),
    };
    let payload = buffer.get(header..header + len)?.to_vec();
    Some((first & 0x0f, payload, header + len))
}
