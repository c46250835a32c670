//! `petmesh-dev fanout` and `petmesh-dev idle-memory`: the load generator of
//! `scripts/bench-realtime`, which compares petmesh's cross-node fan-out with a Socket.IO
//! cluster (`bench/socketio/`) sharing the same Redis.
//!
//! Both commands speak either protocol ([`System`]) with one code path each:
//!
//! - petmesh ([`petmesh`]): `/ws` with the access token in `Authorization: Bearer`,
//!   `room:join` / `room:message` in room `bench` (or, with `--rooms N`, rooms `bench-0` to
//!   `bench-<N-1>`, so that the load spreads over topics and, in a Redis Cluster, masters);
//! - Socket.IO ([`socketio`]): Engine.IO v4 / Socket.IO v5 spoken directly over the
//!   websocket transport, `join` (acknowledged) and `publish`, answered by a `msg` broadcast.
//!
//! A fan-out round ([`round`]) connects the subscribers round-robin over the given nodes
//! (and rooms), lets the publishers send "sequence number + send time" messages at a fixed rate, and after
//! a warm-up measures deliveries per second, publish-to-receive latency (the same machine
//! clock on both ends), losses and the CPU time of the server processes (`/proc/<pid>/stat`)
//! over the measured window. [`idle`] opens many idle connections to one node and reports
//! the growth of its resident memory per connection.
//!
//! Results go to stdout as one `result key=value ...` line for the script to tabulate;
//! progress and a readable summary go to stderr.

mod idle;
mod outcome;
mod petmesh;
pub(crate) mod procfs;
mod round;
mod socketio;
pub(crate) mod stats;

pub use idle::{run as run_idle, IdleArgs};
pub use procfs::ProcessGroup;
pub use round::{run, FanoutArgs};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, http::HeaderValue, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket connection.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connection may take to open, authenticate and join; generous, because
/// hundreds open at once on a loaded machine.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a connection reads at once. tungstenite zero-fills that much before every read,
/// and its default (128 KiB) made that memset a third of the load generator's CPU time;
/// the benchmark's frames are a few hundred bytes (bigger ones still arrive, in pieces).
const READ_BUFFER_BYTES: usize = 4096;

/// The protocol the servers under test speak.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// petmesh nodes: `/ws`, JSON requests and events; messages are room messages (published
    /// directly).
    Petmesh,
    /// petmesh nodes, messages are pets created over `/ws` and their `pet:created` events: the
    /// domain-event path (the transaction, the outbox and its relay).
    PetmeshPets,
    /// Socket.IO nodes from `bench/socketio/server.js`.
    Socketio,
}

/// The system under test and how to get in (options shared by `fanout` and `idle-memory`).
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// The protocol the nodes speak.
    #[arg(long, value_enum)]
    pub system: System,
    /// Access token (petmesh only), sent as `Authorization: Bearer` on every connection.
    #[arg(
        long,
        env = "PETMESH_BENCH_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
}

impl Target {
    /// Refuses petmesh without a token (its connections would be closed unauthenticated).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.system != System::Socketio && self.token.is_empty() {
            anyhow::bail!("petmesh needs an access token (--token or PETMESH_BENCH_TOKEN)");
        }
        Ok(())
    }
}

/// What a received text frame means to the load generator.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    /// A benchmark message: its sequence number and send time (Unix µs).
    Message {
        /// The publisher's sequence number, from 0.
        seq: u64,
        /// When the publisher sent it, in microseconds since the Unix epoch.
        sent_us: u64,
    },
    /// A frame that must be answered with this one (the Engine.IO pong).
    Reply(&'static str),
    /// An error the server reported, e.g. `RATE_LIMITED`.
    Error(String),
    /// Anything else: responses, acknowledgements, `room:joined`.
    Other,
}

// === impl System ===

impl System {
    /// Connects to `base_url` (`http://host:port`) and joins benchmark room `room` (or, for
    /// pets, subscribes to them; Socket.IO has one room).
    async fn subscriber(self, base_url: &str, token: &str, room: &str) -> anyhow::Result<Socket> {
        match self {
            Self::Petmesh => {
                let mut socket = petmesh::connect(base_url, token).await?;
                petmesh::join(&mut socket, room).await?;
                Ok(socket)
            }
            Self::PetmeshPets => {
                let mut socket = petmesh::connect(base_url, token).await?;
                petmesh::subscribe_pets(&mut socket).await?;
                Ok(socket)
            }
            Self::Socketio => {
                let mut socket = socketio::connect(base_url).await?;
                socketio::join(&mut socket).await?;
                Ok(socket)
            }
        }
    }

    /// Connects a publisher that sends to `rooms`; petmesh only lets room members send to a
    /// room, so there it joins them too (and receives its own messages, which are not
    /// counted).
    async fn publisher(
        self,
        base_url: &str,
        token: &str,
        rooms: &[String],
    ) -> anyhow::Result<Socket> {
        match self {
            Self::Petmesh => {
                let mut socket = petmesh::connect(base_url, token).await?;
                for room in rooms {
                    petmesh::join(&mut socket, room).await?;
                }
                Ok(socket)
            }
            Self::PetmeshPets => petmesh::connect(base_url, token).await,
            Self::Socketio => socketio::connect(base_url).await,
        }
    }

    /// Opens a connection that is authenticated (petmesh) or connected to the default
    /// namespace (Socket.IO) and then does nothing.
    async fn idle(self, base_url: &str, token: &str) -> anyhow::Result<Socket> {
        match self {
            Self::Petmesh | Self::PetmeshPets => petmesh::connect(base_url, token).await,
            Self::Socketio => socketio::connect(base_url).await,
        }
    }

    /// The frame that publishes message `seq`, sent at `sent_us`, to `room`.
    fn publish_frame(self, seq: u64, sent_us: u64, room: &str) -> String {
        match self {
            Self::Petmesh => petmesh::publish_frame(seq, sent_us, room),
            Self::PetmeshPets => petmesh::create_pet_frame(seq, sent_us),
            Self::Socketio => socketio::publish_frame(seq, sent_us),
        }
    }

    /// What a received text frame means.
    fn classify(self, text: &str) -> Inbound {
        match self {
            Self::Petmesh | Self::PetmeshPets => petmesh::classify(text),
            Self::Socketio => socketio::classify(text),
        }
    }

    /// The name of benchmark room `index` of `rooms`: `bench` when there is one (as before
    /// rooms could be chosen), else `bench-<index>`.
    fn room(rooms: usize, index: usize) -> String {
        if rooms == 1 {
            petmesh::ROOM.to_owned()
        } else {
            format!("{}-{index}", petmesh::ROOM)
        }
    }

    /// The name used in result lines.
    fn name(self) -> &'static str {
        match self {
            Self::Petmesh => "petmesh",
            Self::PetmeshPets => "petmesh-pets",
            Self::Socketio => "socket.io",
        }
    }
}

// === socket helpers ===

/// Opens a WebSocket to `url` (`ws://...`), with `Authorization: Bearer <token>` when given,
/// a small read buffer, and Nagle's algorithm off: the publisher's small frames must not
/// wait for ACKs.
async fn ws_connect(url: &str, token: Option<&str>) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    let (socket, _) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)),
            true,
        ),
    )
    .await
    .map_err(|_| anyhow!("WebSocket handshake with {url} timed out"))?
    .with_context(|| format!("WebSocket handshake with {url}"))?;
    Ok(socket)
}

/// The next text frame within [`HANDSHAKE_TIMEOUT`]; a close or an error is an error.
async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, socket.next())
            .await
            .map_err(|_| anyhow!("no frame within {HANDSHAKE_TIMEOUT:?}"))?;
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(close))) => bail!("server closed the connection: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading a frame"),
            None => bail!("connection ended"),
        }
    }
}

/// `ws://host:port` for `http://host:port` (and `wss` for `https`).
fn ws_base(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    match base.strip_prefix("http") {
        Some(rest) => format!("ws{rest}"),
        None => base.to_owned(),
    }
}

/// Microseconds since the Unix epoch: publisher and subscribers run in one process on one
/// clock, so the difference of two readings is the delivery latency.
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_room_keeps_its_old_name_and_several_are_numbered() {
        assert_eq!(System::room(1, 0), "bench");
        assert_eq!(System::room(12, 0), "bench-0");
        assert_eq!(System::room(12, 11), "bench-11");
    }

    #[test]
    fn ws_base_swaps_the_scheme_and_drops_a_trailing_slash() {
        assert_eq!(ws_base("http://127.0.0.1:80/"), "ws://127.0.0.1:80");
        assert_eq!(ws_base("https://h:1"), "wss://h:1");
        assert_eq!(ws_base("ws://h:1"), "ws://h:1");
    }
}
