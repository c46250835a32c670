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

pub mod chunked;

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll, Waker},
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use self::chunked::{ChunkedDecoder, Decoded};
use super::{
    http::{is_hop_by_hop, remove_hop_by_hop, Forwarding, RequestBody},
    InFlight,
};
use crate::error::{BoxError, ErrorKind, ProxyError, Side};

/// Most header fields a node's response may have (hyper's default too).
const MAX_HEADERS: usize = 100;

/// Largest response head accepted from a node.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Free space ensured in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;

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

/// A node's response head, with what its body's framing is.
pub struct ResponseHead {
    /// The status (never 1xx).
    pub status: StatusCode,
    /// The node's header fields, without the hop-by-hop ones.
    pub headers: HeaderMap,
    framing: Framing,
    /// Whether the connection may carry another request after this response.
    keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// The end of the connection.
    Close,
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

/// Encodes the request line and header fields, with the forwarding fields, into `out`
/// (cleared first). `chunked` adds the framing of a streamed body without `Content-Length`.
fn encode_head(out: &mut Vec<u8>, head: &Parts, forwarding: &Forwarding<'_>, chunked: bool) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if Forwarding::replaces(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    forwarding.write(&head.headers, out);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a piece of body to `out`, as a chunk when `chunked`.
fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    out.extend_from_slice(data);
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
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

/// A complete head found at the start of the read buffer.
enum Parsed {
    /// A 1xx response, consumed.
    Interim,
    /// The final response head, consumed.
    Final(ResponseHead),
}

/// Parses the head at the start of `buf` and consumes it; `None` when it is not complete yet.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Parsed>, BoxError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or_default())?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err("the node switched protocols on a plain request".into());
        }
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let http11 = response.version == Some(1);
    // Where each name and value lie in the head, so that the values can be slices of it once
    // the parser's borrow of the buffer is over.
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let mut spans = [const { (0..0, 0..0) }; MAX_HEADERS];
    let count = response.headers.len();
    for (slot, field) in spans.iter_mut().zip(response.headers.iter()) {
        *slot = (span(field.name.as_bytes()), span(field.value));
    }
    let head = buf.split_to(len).freeze();

    let mut headers = HeaderMap::with_capacity(count + 1);
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut lists_names = false;
    for (name, value) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name.clone()])?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))?;
        if name == header::CONTENT_LENGTH {
            let parsed = parse_length(value.as_bytes()).ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(parsed);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides (a later field can add one).
            chunked = last_token(value.as_bytes()).eq_ignore_ascii_case(b"chunked");
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive |= is_keep_alive;
                lists_names |= !(is_close || is_keep_alive || token.is_empty());
            }
            if lists_names {
                // Kept for `remove_hop_by_hop` below, which removes what it names too.
                headers.append(name, value);
                continue;
            }
        }
        // Hop-by-hop fields end here (RFC 9110 §7.6.1); the framing ones were read above.
        if !is_hop_by_hop(&name) {
            headers.append(name, value);
        }
    }
    if lists_names {
        remove_hop_by_hop(&mut headers, false);
    }

    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, transfer_encoding, chunked, length) {
        (true, ..) => Framing::Empty,
        (false, true, true, _) => Framing::Chunked,
        (false, true, false, _) => Framing::Close,
        (false, false, _, Some(length)) => Framing::Length(length),
        (false, false, _, None) => Framing::Close,
    };
    if transfer_encoding && length.is_some() {
        // RFC 9112 §6.3: the coding wins; a message with both is suspect, so no reuse either.
        headers.remove(header::CONTENT_LENGTH);
        close = true;
    }
    let keep_alive = !close && (http11 || keep_alive) && framing != Framing::Close;
    Ok(Some(Parsed::Final(ResponseHead {
        status,
        headers,
        framing,
        keep_alive,
    })))
}

/// A `Content-Length` value: digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// The last comma-separated token of a header value.
fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(value)
        .trim_ascii()
}

// === UpstreamBody ===

/// Where a streaming body is.
#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

/// A node's response body streaming to the client. When it ends, the connection goes back to
/// the pool (if it can carry another request) and the node's in-flight count drops; dropped
/// early, it closes the connection.
pub struct UpstreamBody {
    /// `None` once the body is complete.
    conn: Option<Connection>,
    state: BodyState,
    keep_alive: bool,
    in_flight: Option<InFlight>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("state", &self.state)
            .field("done", &self.conn.is_none())
            .finish()
    }
}

/// `conn` after a response that allows `keep_alive`, if it can carry another request: nothing
/// of the node's left unread (bytes beyond the response mean the node broke the framing).
fn reusable(conn: Connection, keep_alive: bool) -> Option<Connection> {
    (keep_alive && conn.read.is_empty()).then_some(conn)
}

/// What a response's body is once its head has been read.
pub enum StartedBody {
    /// Complete already: no body, or all of it came with the head.
    Complete(Option<Bytes>),
    /// Still to be read from the node.
    Streaming(UpstreamBody),
}

impl UpstreamBody {
    /// Starts the body of `head` on `conn`. When the whole body is already buffered (the usual
    /// small response), the connection is released at once and no streaming is needed.
    pub fn start(mut conn: Connection, head: &ResponseHead, in_flight: InFlight) -> StartedBody {
        let complete = match head.framing {
            Framing::Empty => Some(None),
            Framing::Length(length) if length <= conn.read.len() as u64 => {
                Some((length > 0).then(|| conn.read.split_to(length as usize).freeze()))
            }
            _ => None,
        };
        if let Some(body) = complete {
            in_flight.release(reusable(conn, head.keep_alive));
            return StartedBody::Complete(body);
        }
        let state = match head.framing {
            Framing::Length(length) => BodyState::Length(length),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            _ => BodyState::Close,
        };
        StartedBody::Streaming(UpstreamBody {
            conn: Some(conn),
            state,
            keep_alive: head.keep_alive,
            in_flight: Some(in_flight),
        })
    }

    /// The body is over: hand the connection back when it ended cleanly and can be reused.
    fn finish(&mut self, complete: bool) {
        let conn = self.conn.take();
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.release(conn.and_then(|conn| reusable(conn, complete && self.keep_alive)));
        }
    }

    /// The next piece of the body.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                BodyState::Length(remaining) => {
                    if !conn.read.is_empty() {
                        let take = (*remaining).min(conn.read.len() as u64);
                        let data = conn.read.split_to(take as usize).freeze();
                        *remaining -= take;
                        if *remaining == 0 {
                            self.finish(true);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done) => {
                        self.finish(true);
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => {
                        self.finish(false);
                        return Poll::Ready(Some(Err(err.into())));
                    }
                },
                BodyState::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            conn.read.reserve(READ_RESERVE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.read
            ));
            match read {
                Ok(0) if matches!(self.state, BodyState::Close) => {
                    self.finish(true);
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.finish(false);
                    return Poll::Ready(Some(Err(
                        "the node closed the connection in the middle of the body".into(),
                    )));
                }
                Ok(_) => {}
                Err(err) => {
                    self.finish(false);
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
    }

    /// Whether the body is complete.
    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    /// The exact size left when it is known.
    pub fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.state) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), BodyState::Length(remaining)) => SizeHint::with_exact(*remaining),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, head_request: bool) -> (ResponseHead, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        loop {
            match parse_head(&mut buf, head_request).unwrap() {
                Some(Parsed::Final(head)) => return (head, buf),
                Some(Parsed::Interim) => continue,
                None => panic!("incomplete head"),
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Framing::Close,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Close\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
        ];
        for (raw, head_request, framing, keep_alive) in cases {
            let (head, _) = parse(raw, head_request);
            assert_eq!(head.framing, framing, "{raw:?}");
            assert_eq!(head.keep_alive, keep_alive, "{raw:?}");
        }
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_dropped() {
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
            false,
        );
        let names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nX-Kept: 1\r\n\
             Content-Length: 0\r\n\r\n",
            false,
        );
        let mut names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "x-kept"]);
        assert!(!head.keep_alive);
    }

    #[test]
    fn interim_responses_are_skipped_and_the_body_stays_in_the_buffer() {
        let (head, rest) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\nhi",
            false,
        );
        assert_eq!(head.status, StatusCode::CREATED);
        let values: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&rest[..], b"hi");
    }

    #[test]
    fn a_head_arriving_in_pieces_is_incomplete_until_its_end() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for cut in 1..raw.len() {
            let mut buf = BytesMut::from(&raw[..cut]);
            assert!(parse_head(&mut buf, false).unwrap().is_none(), "cut {cut}");
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 999999 Nope\r\n\r\n",
            "NOTHTTP\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(parse_head(&mut buf, false).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn request_heads_are_encoded_with_the_framing_of_their_body() {
        let mut request = http::Request::post("/pets?x=1")
            .header("host", "node")
            .header("accept", "a")
            .header("accept", "b")
            .body(())
            .unwrap();
        *request.version_mut() = http::Version::HTTP_11;
        let (parts, ()) = request.into_parts();
        let client = super::super::Client::new(([10, 0, 0, 1], 5000).into());
        let forwarding = Forwarding {
            client: &client,
            request_id: None,
        };
        let mut out = Vec::new();
        encode_head(&mut out, &parts, &forwarding, true);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /pets?x=1 HTTP/1.1\r\nhost: node\r\naccept: a\r\naccept: b\r\n\
             x-forwarded-for: 10.0.0.1\r\nforwarded: for=10.0.0.1;proto=http\r\n\
             x-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        encode_data(&mut out, &[b'x'; 26], true);
        assert!(out.ends_with(b"\r\n\r\n1a\r\nxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n"));
    }
}
