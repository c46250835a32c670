//! Request limits: body size and handling time.
//!
//! poem's own `SizeLimit` insists on a `Content-Length` (it answers 411 otherwise, even for
//! bodiless GETs), so the body limit is ours: declared lengths are checked up front, chunked
//! bodies are read up to the limit and refused as soon as they pass it.
//!
//! A refused body is not dropped: the rest of it is read and thrown away, within bounds
//! ([`Linger`]), while the 413 goes out with `Connection: close` (added by
//! [`crate::error::render_errors`] to every error for a request with a body). Why: many clients
//! (Python's urllib, most SDKs) write their whole request before they read anything. When the
//! body is dropped, hyper (under poem) reads at most what is already buffered, closes its read
//! side (`Conn::poll_drain_or_close_read`) and closes the connection once the response is
//! written (hyperium/hyper#2384, #3078, #3241); the client's next bytes reach a closed socket,
//! the kernel answers with a reset, and the reset throws the 413 away unread. As long as a
//! task holds the body and reads it, hyper goes on reading the connection, and once the body
//! ends it closes cleanly after the answer. nginx does the same (`lingering_close`).

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use poem::{
    http::{header, StatusCode},
    Body, Endpoint, IntoResponse, Request, Response,
};
use tokio::time::Instant;

/// Request limits, from `server.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted body.
    pub body_limit_bytes: usize,
    /// Largest accepted body of an image upload (`POST /api/v1/pets/{id}/uploadImage`):
    /// `pets.max_image_bytes` and [`UPLOAD_FRAMING_BYTES`], so that an over-large image is
    /// refused here, before anything reads it, with the same lingering close.
    pub upload_limit_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
}

/// What an upload's body may hold beyond its image: multipart boundaries, part headers and the
/// `additionalMetadata` text.
pub const UPLOAD_FRAMING_BYTES: usize = 64 * 1024;

/// How long and how much of a refused body is read and thrown away (a lingering close).
#[derive(Debug, Clone, Copy)]
struct Linger {
    /// Most bytes discarded.
    max_bytes: u64,
    /// Longest time from the refusal to the close.
    max_time: Duration,
    /// Longest wait for the next piece of the body.
    idle: Duration,
}

/// The bounds of every lingering close. Constants, not settings: they only decide how long a
/// client that is refused anyway may take to finish sending.
/// - 64 MiB: a body many times the default 1 MiB limit still gets its 413 read; it caps the
///   bandwidth a refused client can make the node read (a 100 Mbit/s client sends 64 MiB in
///   about 5 s).
/// - 10 s in all (nginx: `lingering_time` 30 s): no longer than the default
///   `server.grace_period_secs`, so a lingering connection never holds up a shutdown longer
///   than a request may.
/// - 5 s without a byte (nginx's `lingering_timeout`): a client that stopped sending has
///   stopped for good (or waits for the answer it already has).
const LINGER: Linger = Linger {
    max_bytes: 64 << 20,
    max_time: Duration::from_secs(10),
    idle: Duration::from_secs(5),
};

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lingered {
    /// The body ended; this many bytes were thrown away.
    Drained(u64),
    /// The client broke the body off.
    Broken,
    /// More than [`Linger::max_bytes`] came.
    TooMuch,
    /// [`Linger::max_time`] passed.
    TooLong,
    /// Nothing came for [`Linger::idle`].
    Idle,
}

impl Limits {
    /// Middleware body: applies both limits.
    pub async fn apply<E: Endpoint>(self, next: E, req: Request) -> poem::Result<Response> {
        self.apply_lingering(next, req, LINGER).await
    }

    /// [`Limits::apply`], with a refused body discarded within `linger`.
    async fn apply_lingering<E: Endpoint>(
        self,
        next: E,
        mut req: Request,
        linger: Linger,
    ) -> poem::Result<Response> {
        let upload = req.method() == poem::http::Method::POST
            && req.uri().path().starts_with("/api/v1/pets/")
            && req.uri().path().ends_with("/uploadImage");
        let limit = if upload {
            self.upload_limit_bytes
        } else {
            self.body_limit_bytes
        };
        let too_large = || {
            poem::Error::from_string(
                format!("request body exceeds the limit of {limit} bytes"),
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(len) if len > limit as u64 => {
                linger.spawn(req.take_body().into_bytes_stream());
                return Err(too_large());
            }
            Some(_) => {}
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => {
                let mut stream = Box::pin(req.take_body().into_bytes_stream());
                let mut collected = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| {
                        poem::Error::from_string(
                            format!("reading request body: {e}"),
                            StatusCode::BAD_REQUEST,
                        )
                    })?;
                    if collected.len() + chunk.len() > limit {
                        linger.spawn(stream);
                        return Err(too_large());
                    }
                    collected.extend_from_slice(&chunk);
                }
                req.set_body(Body::from(collected));
            }
            None => {}
        }
        match tokio::time::timeout(self.request_timeout, next.call(req)).await {
            Ok(result) => result.map(IntoResponse::into_response),
            Err(_) => Err(poem::Error::from_string(
                format!(
                    "request timed out after {} s",
                    self.request_timeout.as_secs()
                ),
                StatusCode::SERVICE_UNAVAILABLE,
            )),
        }
    }
}

// === impl Linger ===

impl Linger {
    /// Discards the rest of a refused `body` on a task of its own.
    fn spawn<B, E>(self, body: impl Stream<Item = Result<B, E>> + Send + 'static)
    where
        B: AsRef<[u8]>,
    {
        tokio::spawn(async move {
            let outcome = self.discard(body).await;
            tracing::debug!(?outcome, "lingering close over");
        });
    }

    /// Reads `body` to its end and throws it away, giving up at the first bound it reaches;
    /// `body` is dropped (and hyper closes the connection) when this returns.
    async fn discard<B, E>(self, body: impl Stream<Item = Result<B, E>>) -> Lingered
    where
        B: AsRef<[u8]>,
    {
        let mut body = std::pin::pin!(body);
        let end = Instant::now() + self.max_time;
        let mut discarded = 0u64;
        loop {
            let deadline = end.min(Instant::now() + self.idle);
            let data = match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) if deadline == end => return Lingered::TooLong,
                Err(_) => return Lingered::Idle,
                Ok(None) => return Lingered::Drained(discarded),
                Ok(Some(Err(_))) => return Lingered::Broken,
                Ok(Some(Ok(data))) => data,
            };
            discarded += data.as_ref().len() as u64;
            if discarded > self.max_bytes {
                return Lingered::TooMuch;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The refusal read by a client that sends everything first, and each bound reached, by a
    //! real client against poem's server over loopback, with bounds small enough to wait for.

    use std::{net::SocketAddr, time::Instant as StdInstant};

    use poem::{endpoint::make_sync, listener::TcpAcceptor, EndpointExt as _, Server};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    const SHORT: Linger = Linger {
        max_bytes: 16 << 20,
        max_time: Duration::from_millis(1500),
        idle: Duration::from_millis(500),
    };

    const LIMIT: usize = 1024;

    /// A node-like server with a body limit of 1 KiB that lingers within [`SHORT`]; errors
    /// for requests with a body say `Connection: close`, as `render_errors` makes them.
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            body_limit_bytes: LIMIT,
            upload_limit_bytes: LIMIT,
            request_timeout: Duration::from_secs(10),
        };
        let app = make_sync(|_| "ok")
            .around(move |ep, req| limits.apply_lingering(ep, req, SHORT))
            .around(|ep, req| async move {
                let mut resp = ep.get_response(req).await;
                if !resp.status().is_success() {
                    resp.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                Ok(resp)
            });
        let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        addr
    }

    async fn post(addr: SocketAddr, framing: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("POST / HTTP/1.1\r\nhost: t\r\n{framing}\r\n\r\n");
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

    async fn read_to_clean_end(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .expect("a clean end, no reset");
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn a_client_sending_a_declared_too_large_body_before_reading_reads_the_413() {
        let addr = server().await;
        // More than the sockets in between hold, so that the client is still writing when
        // the 413 comes.
        let len = 8 << 20;
        let mut stream = post(addr, &format!("content-length: {len}")).await;
        stream.write_all(&vec![b'x'; len]).await.unwrap();
        let answer = read_to_clean_end(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("exceeds the limit of 1024 bytes"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_client_sending_a_chunked_too_large_body_before_reading_reads_the_413() {
        let addr = server().await;
        let mut stream = post(addr, "transfer-encoding: chunked").await;
        for _ in 0..1024 {
            stream.write_all(b"2000\r\n").await.unwrap();
            stream.write_all(&[b'x'; 0x2000]).await.unwrap();
            stream.write_all(b"\r\n").await.unwrap();
        }
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let answer = read_to_clean_end(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_sending_more_than_the_byte_bound_is_cut_off() {
        let addr = server().await;
        let mut stream = post(addr, "content-length: 1099511627776").await;
        let (_, sent) = send_until_cut_off(&mut stream, &[b'x'; 64 * 1024], Duration::ZERO).await;
        assert!(sent > SHORT.max_bytes, "cut off after {sent} bytes only");
    }

    #[tokio::test]
    async fn a_client_trickling_for_longer_than_the_time_bound_is_cut_off() {
        let addr = server().await;
        let mut stream = post(addr, "content-length: 1099511627776").await;
        let (took, _) = send_until_cut_off(&mut stream, b"x", SHORT.idle / 5).await;
        // The server's clock may have started a little before the client's.
        assert!(
            took >= SHORT.max_time - Duration::from_millis(100),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_sending_is_cut_off_after_the_idle_bound() {
        let addr = server().await;
        let mut stream = post(addr, "content-length: 1048576").await;
        stream.write_all(&[b'x'; 2048]).await.unwrap();
        let stopped = StdInstant::now();
        let answer = read_to_clean_end(&mut stream).await;
        assert!(stopped.elapsed() >= SHORT.idle, "{:?}", stopped.elapsed());
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn discarding_stops_at_the_first_bound_reached() {
        let pieces =
            |n: usize| futures_util::stream::iter((0..n).map(|_| Ok::<_, ()>([0u8; 1024])));
        assert_eq!(SHORT.discard(pieces(3)).await, Lingered::Drained(3072));
        assert_eq!(
            SHORT.discard(pieces(16 * 1024 + 1)).await,
            Lingered::TooMuch
        );
        let broken = futures_util::stream::iter([Ok([0u8; 1]), Err(())]);
        assert_eq!(SHORT.discard(broken).await, Lingered::Broken);
    }
}
