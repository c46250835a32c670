//! A node's response body as the client side (hyper) streams it, handing the connection back
//! to the pool once the body has ended cleanly.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{
    chunked::{ChunkedDecoder, Decoded},
    head::{Framing, ResponseHead},
    Connection, READ_RESERVE,
};
use crate::{error::BoxError, proxy::InFlight};

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
