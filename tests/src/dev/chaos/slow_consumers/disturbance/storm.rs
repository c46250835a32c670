//! The reconnect storm of `slow-consumers`: thousands of clients connecting and subscribing at
//! once through the balancer ([`Storm::round`]), and their connections held open until they
//! are all cut at once ([`Held`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Pause before a storm client tries again after its first failure; it doubles with every
/// failure up to [`RETRY_PAUSE_MAX`], and each pause is drawn between half of it and all of
/// it. Clients that retried at a fixed pace would turn a storm into a retry storm: real
/// client libraries back off with jitter, and so do these.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// One storm round.
#[derive(Debug, Default)]
pub struct Round {
    /// Clients connected and subscribed by the round's deadline.
    pub subscribed: usize,
    /// When the last of them was (from the round's start), if all were.
    pub all_subscribed_after: Option<Duration>,
    /// Failed attempts, by what failed (each was tried again).
    pub failures: BTreeMap<String, u64>,
}

/// The storm's clients: where they connect and as whom.
pub(super) struct Storm {
    addr: SocketAddr,
    url: String,
    tokens: Vec<String>,
}

/// A storm client's connection.
pub(super) type Socket = WebSocketStream<TcpStream>;

impl Storm {
    /// Clients of the balancer at `base_url`, connecting as the users of `tokens` in turn.
    pub(super) fn new(base_url: &str, tokens: Vec<String>) -> anyhow::Result<Self> {
        Ok(Self {
            addr: socket_addr(base_url)?,
            url: format!("{}/ws", base_url.replacen("http", "ws", 1)),
            tokens,
        })
    }

    /// Starts `clients` clients at once, each connecting and subscribing (again after every
    /// failure) until `deadline`; returns the round's figures and the open connections.
    pub(super) async fn round(&self, clients: usize, deadline: Instant) -> (Round, Vec<Socket>) {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for n in 0..clients {
            let (addr, url, token) = (
                self.addr,
                self.url.clone(),
                self.tokens[n % self.tokens.len()].clone(),
            );
            // Spread over source addresses, as clients of many machines would be.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 101, (n % 250 + 1) as u8));
            tasks.spawn(async move {
                let mut failures: Vec<String> = Vec::new();
                loop {
                    let attempt = tokio::time::timeout_at(
                        deadline.into(),
                        connect_and_subscribe(addr, source, &url, &token),
                    )
                    .await;
                    match attempt {
                        Ok(Ok(socket)) => return (Some((socket, started.elapsed())), failures),
                        Ok(Err(e)) => failures.push(e),
                        Err(_) => {
                            failures.push("no answer by the round's deadline".into());
                            return (None, failures);
                        }
                    }
                    let doubled = RETRY_PAUSE * 2u32.saturating_pow(failures.len() as u32 - 1);
                    let pause = doubled
                        .min(RETRY_PAUSE_MAX)
                        .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
                    if Instant::now() + pause >= deadline {
                        return (None, failures);
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        let mut round = Round::default();
        let mut sockets = Vec::with_capacity(clients);
        let mut last = Duration::ZERO;
        while let Some(joined) = tasks.join_next().await {
            let Ok((socket, failures)) = joined else {
                continue;
            };
            for failure in failures {
                *round.failures.entry(failure).or_default() += 1;
            }
            if let Some((socket, at)) = socket {
                last = last.max(at);
                sockets.push(socket);
            }
        }
        round.subscribed = sockets.len();
        round.all_subscribed_after = (round.subscribed == clients).then_some(last);
        (round, sockets)
    }
}

/// One storm client's attempt: TCP, the handshake with its token, `subscribe` and its
/// answer. Errors are short classes, counted per round.
async fn connect_and_subscribe(
    addr: SocketAddr,
    source: IpAddr,
    url: &str,
    token: &str,
) -> Result<Socket, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    request.headers_mut().insert("authorization", bearer);
    // Small buffers: thousands of clients in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                format!("handshake answered {}", resp.status())
            }
            e => format!("handshake: {}", short(&e.to_string())),
        })?;
    ws.send(Message::text(super::subscribe_frame("orders").to_string()))
        .await
        .map_err(|e| format!("send: {}", short(&e.to_string())))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if frame["type"] == "response" && frame["id"] == "sub" {
                    if frame["status"] == "success" {
                        return Ok(ws);
                    }
                    return Err(format!(
                        "subscribe answered {}",
                        frame["payload"]["code"].as_str().unwrap_or("an error")
                    ));
                }
            }
            Some(Ok(Message::Close(close))) => {
                return Err(format!(
                    "closed ({})",
                    close.map_or(1005, |c| u16::from(c.code))
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
            None => return Err("connection ended before the answer".into()),
        }
    }
}

/// The first words of an error, so that failures group into few classes.
fn short(text: &str) -> String {
    text.chars().take(60).collect()
}

/// The storm's open connections, each read by a task of its own (so that pings are answered
/// and the nodes' idle timeout does not end it) until [`Held::cut`].
pub(super) struct Held {
    tasks: JoinSet<()>,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Held {
    pub(super) fn keep_alive(sockets: Vec<Socket>) -> Self {
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let mut tasks = JoinSet::new();
        for mut socket in sockets {
            let mut cut = cut_rx.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        () = until_cut(&mut cut) => return,
                        frame = socket.next() => if !matches!(frame, Some(Ok(_))) {
                            // Ended early: the next round's figures will show it.
                            until_cut(&mut cut).await;
                            return;
                        },
                    }
                }
            });
        }
        Self { tasks, cut }
    }

    /// Drops every connection at once (no close handshake) and waits until they are.
    pub(super) async fn cut(&mut self) {
        self.cut.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn until_cut(cut: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = cut.wait_for(|cut| *cut).await;
}

fn socket_addr(base_url: &str) -> anyhow::Result<SocketAddr> {
    let url = reqwest::Url::parse(base_url).context("parsing the balancer's URL")?;
    url.socket_addrs(|| Some(80))?
        .first()
        .copied()
        .context("the balancer's URL has no address")
}
