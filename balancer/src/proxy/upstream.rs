//! The node side of HTTP forwarding: a small HTTP/1.1 client that runs on the client
//! connection's own task, over keep-alive sockets pooled per worker.
//!
//! Why not hyper's client (the client side stays hyper): with it every upstream connection
//! was a task of its own, fed through a channel, so a proxied request crossed two tasks and two
//! extra HTTP state machines, and it was a third of the balancer's user-space instructions
//! (`BENCH_INSTRUCTIONS=1 scripts/bench-balancer`, README "Benchmark"). Here the request head
//! is written straight from the `http` types to the socket, and the response head is parsed
//! with `httparse` (as hyper does) into a `HeaderMap` whose values are slices of the read
//! buffer.
//!
//! What it speaks (RFC 9112): requests without a body, with `Content-Length`, or chunked;
//! responses framed by `Content-Length`, the chunked coding, or the end of the connection; no
//! body for HEAD, 204 and 304; interim 1xx responses skipped. `Connection: close`, HTTP/1.0
//! without keep-alive, a close-delimited body or any doubt about the framing end reuse.
//! Trailers are read and dropped. While a request body streams, the socket is watched for an
//! early answer (a node's 413 arrives before it has read the body, and it stops reading); the
//! rest of the body is then not sent, so exchanges are never full-duplex. Interim answers such
//! as `100 Continue` (to a forwarded `Expect`) are skipped.
//!
//! An idle pooled connection is watched by no task. Before reuse, its socket's readiness says
//! whether anything (a FIN, stray bytes) arrived while it was idle; tokio clears readiness after
//! a short read, so after a normal exchange that check costs no system call.

mod body;
pub mod chunked;
mod head;

pub use self::{
    body::{StartedBody, UpstreamBody},
    head::ResponseHead,
};

use std::{
    io,
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{header, request::Parts, Method};
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use self::head::{encode_data, encode_head, parse_head, Parsed, MAX_HEAD_BYTES};
use super::http::{Forwarding, RequestBody};
use crate::error::{BoxError, ErrorKind, ProxyError, Side};

/// Free space ensured in the read buffer before each read.
pub(super) const READ_RESERVE: usize = 8 * 1024;

/// Body pieces up to this size are copied next to their chunk framing (one write); larger ones
/// are written on their own.
const COALESCE_BYTES: usize = 16 * 1024;

/// A keep-alive HTTP/1.1 connection to a node.
pub struct Connection {
    stream: TcpStream,
    /// Bytes received from the node and not consumed yet.
    read: BytesMut,
    /// The request head being written (kept to reuse its allocation).
    write: Vec<u8>,
}

/// Why an exchange failed, and how far it got.
#[derive(Debug)]
pub struct ExchangeError {
    /// What went wrong; [`crate::error::Side::Downstream`] when the client's body failed.
    pub error: ProxyError,
    /// Whether any byte of the request reached the socket.
    pub sent: bool,
    /// Whether the node closed the connection without a byte of response, as it does with an
    /// idle keep-alive connection it has just given up on.
    pub closed_early: bool,
}

impl ExchangeError {
    fn upstream(source: impl Into<BoxError>, sent: bool) -> Self {
        Self {
            error: ProxyError::because(ErrorKind::UpstreamFailed, source),
            sent,
            closed_early: false,
        }
    }
}

// === impl Connection ===

impl Connection {
    /// A connection over a freshly connected socket.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
        }
    }

    /// Whether an idle connection can carry a request: nothing arrived since its last
    /// response (a FIN, stray bytes). No system call when readiness shows nothing.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from a read that filled the buffer exactly.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Sends a request (head and body) and reads the response head. The body is left to
    /// [`UpstreamBody`].
    pub async fn exchange(
        &mut self,
        head: &Parts,
        forwarding: &Forwarding<'_>,
        body: &mut RequestBody,
    ) -> Result<ResponseHead, ExchangeError> {
        let streaming = matches!(body, RequestBody::Stream { .. });
        // A small body has usually arrived with the head: send both in one write.
        let first = match streaming.then(|| body.next_data().now_or_never()).flatten() {
            Some(Ok(data)) => Some(data),
            Some(Err(error)) => {
                return Err(ExchangeError {
                    error,
                    sent: false,
                    closed_early: false,
                })
            }
            None => None,
        };
        // A piece of the body taken from the client here is gone from it: if the write below
        // fails, the request counts as sent, so that it is never retried without that piece.
        let body_taken = matches!(first, Some(Some(_)));
        let chunked = streaming && !head.headers.contains_key(header::CONTENT_LENGTH);
        encode_head(&mut self.write, head, forwarding, chunked);
        let mut finished = !streaming;
        let mut large_first = None;
        match first {
            Some(Some(data)) if data.len() <= COALESCE_BYTES => {
                encode_data(&mut self.write, &data, chunked);
            }
            Some(Some(data)) => large_first = Some(data),
            Some(None) => {
                if chunked {
                    self.write.extend_from_slice(b"0\r\n\r\n");
                }
                finished = true;
            }
            None => {}
        }
        self.send_head().await.map_err(|(err, sent)| {
            let closed_early = !sent && is_disconnect(&err);
            ExchangeError {
                closed_early,
                ..ExchangeError::upstream(err, sent || body_taken)
            }
        })?;
        let head_request = head.method == Method::HEAD;
        let sent = if finished {
            BodySent::Whole
        } else {
            self.send_body(large_first, body, chunked, head_request)
                .await?
        };
        let mut response = match sent {
            BodySent::Whole => return self.read_head(head_request).await,
            BodySent::Answered(response) => response,
            BodySent::Refused => self.read_head(head_request).await?,
        };
        // The rest of the body is still in flight or unsent: the connection is done.
        response.keep_alive = false;
        Ok(response)
    }

    /// Writes the buffered head (and whatever was coalesced with it); on failure, says
    /// whether any of it went out.
    async fn send_head(&mut self) -> Result<(), (io::Error, bool)> {
        let mut written = 0;
        while written < self.write.len() {
            match self.stream.write(&self.write[written..]).await {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written > 0)),
                Ok(n) => written += n,
                Err(err) => return Err((err, written > 0)),
            }
        }
        self.write.clear();
        Ok(())
    }

    /// Streams the rest of the client's body (`first`, then what is still to come) while
    /// watching for an answer: a node may answer (413, 401, ...) before it has read the whole
    /// body and stop reading, and a proxy that only wrote would then wait for the response
    /// timeout. Interim answers (`100 Continue`) are consumed on the way.
    async fn send_body(
        &mut self,
        first: Option<Bytes>,
        body: &mut RequestBody,
        chunked: bool,
        head_request: bool,
    ) -> Result<BodySent, ExchangeError> {
        let Self {
            stream,
            read,
            write: scratch,
        } = self;
        let (reader, mut writer) = stream.split();
        let send = async {
            if let Some(data) = first {
                send_data(&mut writer, scratch, &data, chunked).await?;
            }
            while let Some(data) = body.next_data().await.map_err(|error| ExchangeError {
                error,
                sent: true,
                closed_early: false,
            })? {
                send_data(&mut writer, scratch, &data, chunked).await?;
            }
            if chunked {
                write_all(&mut writer, b"0\r\n\r\n").await?;
            }
            Ok::<(), ExchangeError>(())
        };
        tokio::pin!(send);
        loop {
            tokio::select! {
                sent = &mut send => return match sent {
                    Ok(()) => Ok(BodySent::Whole),
                    // A node that answers early often closes at once and the write fails;
                    // its answer may still be there to read (if not, reading says so).
                    Err(failed) if failed.error.side == Side::Upstream => Ok(BodySent::Refused),
                    Err(failed) => Err(failed),
                },
                readable = reader.readable() => {
                    readable.map_err(|err| ExchangeError::upstream(err, true))?;
                    read.reserve(READ_RESERVE);
                    match reader.try_read_buf(read) {
                        Ok(0) => {
                            return Err(ExchangeError::upstream(
                                "the node closed the connection during the request body",
                                true,
                            ))
                        }
                        // Readiness left over from the last exchange: keep sending.
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Err(ExchangeError::upstream(err, true)),
                        Ok(_) => {}
                    }
                    // Interim answers are consumed; an incomplete head waits for more.
                    loop {
                        match parse_head(read, head_request) {
                            Ok(Some(Parsed::Interim)) => continue,
                            Ok(Some(Parsed::Final(head))) => return Ok(BodySent::Answered(head)),
                            Ok(None) if read.len() > MAX_HEAD_BYTES => {
                                return Err(ExchangeError::upstream("response head too large", true))
                            }
                            Ok(None) => break,
                            Err(err) => return Err(ExchangeError::upstream(err, true)),
                        }
                    }
                }
            }
        }
    }

    /// Reads until a final response head is complete, skipping interim (1xx) responses.
    async fn read_head(&mut self, head_request: bool) -> Result<ResponseHead, ExchangeError> {
        let mut received = false;
        loop {
            if !self.read.is_empty() {
                received = true;
                match parse_head(&mut self.read, head_request) {
                    Ok(Some(Parsed::Final(head))) => return Ok(head),
                    Ok(Some(Parsed::Interim)) => continue,
                    Ok(None) if self.read.len() > MAX_HEAD_BYTES => {
                        return Err(ExchangeError::upstream("response head too large", true))
                    }
                    Ok(None) => {}
                    Err(err) => return Err(ExchangeError::upstream(err, true)),
                }
            }
            self.read.reserve(READ_RESERVE);
            let closed_early = match self.stream.read_buf(&mut self.read).await {
                Ok(0) => !received,
                Ok(_) => continue,
                Err(err) if is_disconnect(&err) => !received,
                Err(err) => return Err(ExchangeError::upstream(err, true)),
            };
            return Err(ExchangeError {
                closed_early,
                ..ExchangeError::upstream("the node closed the connection before answering", true)
            });
        }
    }
}

/// Writes one piece of the body, framed as a chunk when `chunked`; `scratch` (empty, left
/// empty) holds small pieces with their framing so that each takes one write.
async fn send_data(
    writer: &mut (impl AsyncWrite + Unpin),
    scratch: &mut Vec<u8>,
    data: &Bytes,
    chunked: bool,
) -> Result<(), ExchangeError> {
    if data.len() <= COALESCE_BYTES {
        encode_data(scratch, data, chunked);
        let result = write_all(writer, scratch).await;
        scratch.clear();
        return result;
    }
    if chunked {
        write_all(writer, format!("{:x}\r\n", data.len()).as_bytes()).await?;
    }
    write_all(writer, data).await?;
    if chunked {
        write_all(writer, b"\r\n").await?;
    }
    Ok(())
}

async fn write_all(
    writer: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), ExchangeError> {
    writer
        .write_all(bytes)
        .await
        .map_err(|err| ExchangeError::upstream(err, true))
}

/// Whether `err` means the peer closed or reset the connection.
fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How far a streamed request body got.
enum BodySent {
    /// All of it.
    Whole,
    /// The node answered before it had all of it.
    Answered(ResponseHead),
    /// The node stopped taking it (the connection broke); it may have answered.
    Refused,
}
