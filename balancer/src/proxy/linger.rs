//! Lingering close: when the answer to a request is ready before the client's body was read to
//! its end (the balancer's 413, a node's early 413 or 401 passed on, a 502 in the middle of
//! an upload), the rest of the body is read and thrown away, within bounds, before the
//! connection closes. nginx does the same (`lingering_close`, `lingering_time`,
//! `lingering_timeout`).
//!
//! Why: many clients (Python's urllib, most SDKs) write their whole request before they read
//! anything. When a hyper service drops the request body unread, hyper reads at most what is
//! already buffered, closes its read side (`Conn::poll_drain_or_close_read`) and closes the
//! connection as soon as the response is written (hyperium/hyper#2384, #3078, #3241). The
//! client's next bytes then reach a closed socket, the kernel answers them with a reset, and
//! the reset throws away the response waiting in the client's receive buffer: the client
//! sees "connection reset" or "broken pipe", never the answer. As long as a task holds the
//! body and reads it, hyper goes on reading the connection (the dispatcher feeds the body
//! whenever its receiver asks for more, whether or not the response is out); the response
//! says `Connection: close`, so when the body ends hyper closes with nothing left unread: a
//! clean end of stream after the answer.
//!
//! The lingering is a task of its own, started only on that path: a request whose body was
//! read to its end costs nothing more. Past a bound the body is dropped, and hyper closes as
//! it would have at once (a client still sending gets its reset then).

use std::time::Duration;

use bytes::Buf as _;
use http_body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

/// How long and how much of a refused body is read and thrown away.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most bytes discarded.
    pub max_bytes: u64,
    /// Longest time from the answer to the close.
    pub max_time: Duration,
    /// Longest wait for the next piece of the body.
    pub idle: Duration,
}

/// The bounds of every lingering close. Constants, not settings: they only decide how long a
/// client that is refused anyway may take to finish sending, and the defaults fit every
/// client that is going to finish at all.
/// - 64 MiB: six times the default `limits.max_body_bytes`, so an upload well over the
///   limit still gets its answer; it caps the bandwidth a refused client can make the
///   balancer read (a 100 Mbit/s client sends 64 MiB in about 5 s).
/// - 10 s in all (nginx: `lingering_time` 30 s): a lingering connection keeps one of
///   `limits.max_connections` and may hold up a shutdown, so no longer than the default
///   grace period.
/// - 5 s without a byte (nginx's `lingering_timeout`): a client that stopped sending has
///   stopped for good (or waits for the answer it already has).
pub const BOUNDS: Bounds = Bounds {
    max_bytes: 64 << 20,
    max_time: Duration::from_secs(10),
    idle: Duration::from_secs(5),
};

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The body ended: this many bytes were thrown away, and the connection closes cleanly.
    Drained(u64),
    /// The client broke the body off or the connection failed.
    Broken,
    /// More than [`Bounds::max_bytes`] came.
    TooMuch,
    /// [`Bounds::max_time`] passed.
    TooLong,
    /// Nothing came for [`Bounds::idle`].
    Idle,
}

/// Reads and discards the rest of `body` on a task of its own, within [`BOUNDS`].
pub fn spawn(body: Incoming) {
    tokio::spawn(async move {
        let outcome = discard(body, BOUNDS).await;
        tracing::debug!(?outcome, "lingering close over");
    });
}

/// Reads `body` to its end and throws it away, giving up at the first bound it reaches;
/// `body` is dropped when this returns.
pub async fn discard<B: Body + Unpin>(mut body: B, bounds: Bounds) -> Outcome {
    let end = Instant::now() + bounds.max_time;
    let mut discarded = 0u64;
    loop {
        let deadline = end.min(Instant::now() + bounds.idle);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if deadline == end => return Outcome::TooLong,
            Err(_) => return Outcome::Idle,
            Ok(None) => return Outcome::Drained(discarded),
            Ok(Some(Err(_))) => return Outcome::Broken,
            Ok(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            discarded += data.remaining() as u64;
            if discarded > bounds.max_bytes {
                return Outcome::TooMuch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The bounds, each reached by a real client against hyper's server over loopback, with
    //! bounds small enough to wait for.

    use std::{net::SocketAddr, time::Instant as StdInstant};

    use bytes::Bytes;
    use http::{header, Request, Response, StatusCode};
    use http_body_util::Full;
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
        sync::mpsc,
    };

    use super::*;

    const SHORT: Bounds = Bounds {
        max_bytes: 16 << 20,
        max_time: Duration::from_millis(1500),
        idle: Duration::from_millis(500),
    };

    /// A server that refuses every request at once with 413 and lingers within [`SHORT`],
    /// reporting each outcome.
    async fn refusing_server() -> (SocketAddr, mpsc::UnboundedReceiver<Outcome>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (outcomes, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let outcomes = outcomes.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let outcomes = outcomes.clone();
                    async move {
                        tokio::spawn(async move {
                            let _ = outcomes.send(discard(request.into_body(), SHORT).await);
                        });
                        Response::builder()
                            .status(StatusCode::PAYLOAD_TOO_LARGE)
                            .header(header::CONNECTION, "close")
                            .body(Full::new(Bytes::from_static(b"too large")))
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        (addr, received)
    }

    async fn post(addr: SocketAddr, len: u64) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("POST / HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }

    /// Writes `piece` every `every` until a write fails; returns how long that took and how
    /// much was written.
    async fn send_until_cut_off(
        stream: &mut TcpStream,
        piece: &[u8],
        every: Duration,
    ) -> (Duration, u64) {
        let started = StdInstant::now();
        let mut sent = 0;
        let sending = async {
            while stream.write_all(piece).await.is_ok() {
                sent += piece.len() as u64;
                tokio::time::sleep(every).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), sending)
            .await
            .expect("cut off");
        (started.elapsed(), sent)
    }

    #[tokio::test]
    async fn a_body_within_the_bounds_is_read_to_its_end_and_the_answer_ends_cleanly() {
        let (addr, mut outcomes) = refusing_server().await;
        // More than the sockets in between hold, so that the client is still writing when
        // the 413 comes.
        let len = 8 << 20;
        let mut stream = post(addr, len).await;
        stream.write_all(&vec![b'x'; len as usize]).await.unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .expect("a clean end, no reset");
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.ends_with("\r\n\r\ntoo large"), "{answer}");
        assert_eq!(outcomes.recv().await, Some(Outcome::Drained(len)));
    }

    #[tokio::test]
    async fn a_client_sending_more_than_the_byte_bound_is_cut_off() {
        let (addr, mut outcomes) = refusing_server().await;
        let mut stream = post(addr, 1 << 40).await;
        let (_, sent) = send_until_cut_off(&mut stream, &[b'x'; 64 * 1024], Duration::ZERO).await;
        assert!(sent > SHORT.max_bytes, "cut off after {sent} bytes only");
        assert_eq!(outcomes.recv().await, Some(Outcome::TooMuch));
    }

    #[tokio::test]
    async fn a_client_trickling_for_longer_than_the_time_bound_is_cut_off() {
        let (addr, mut outcomes) = refusing_server().await;
        let mut stream = post(addr, 1 << 40).await;
        let (took, _) = send_until_cut_off(&mut stream, b"x", SHORT.idle / 5).await;
        assert_eq!(outcomes.recv().await, Some(Outcome::TooLong));
        // The server's clock may have started a little before the client's.
        assert!(
            took >= SHORT.max_time - Duration::from_millis(100),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_is_cut_off_after_the_idle_bound() {
        let (addr, mut outcomes) = refusing_server().await;
        let mut stream = post(addr, 1 << 20).await;
        stream.write_all(b"some").await.unwrap();
        let stopped = StdInstant::now();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(stopped.elapsed() >= SHORT.idle, "{:?}", stopped.elapsed());
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"));
        assert_eq!(outcomes.recv().await, Some(Outcome::Idle));
    }
}
