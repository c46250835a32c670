//! What HTTP forwarding does to a message: hop-by-hop headers (RFC 9110 §7.6.1), the
//! `X-Forwarded-*`, `Forwarded` and `X-Request-Id` headers, and the two body types that stream
//! through the proxy without buffering.

use std::{
    net::{IpAddr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::upstream::UpstreamBody;
use crate::{
    error::{BoxError, ErrorKind, ProxyError},
    worker::RequestId,
};

/// The header naming the node that served a response.
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-petmesh-node");

/// The request id header, generated when the client sent none.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `X-Forwarded-Proto`.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers that are always removed (besides those listed in `Connection`).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether `name` is always hop-by-hop (`Upgrade` included).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// Removes the hop-by-hop headers: the fixed list, `Upgrade`, and every header `Connection`
/// names. With `keep_upgrade` (a WebSocket handshake) `Upgrade` and `Connection: upgrade` are
/// passed on, because the upgrade is what the next hop must see.
///
/// Runs on every request (responses from nodes drop theirs while being parsed, see
/// [`super::upstream`]), so it looks at the names present once and removes only those: most
/// requests carry no hop-by-hop header at all, and removing an absent one still costs a hash
/// lookup.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named in `Connection` can only be present when `Connection` is.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let keep = |name: &HeaderName| keep_upgrade && name == header::UPGRADE;
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) && !keep(name))
        .cloned()
        .collect();
    doomed.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The usual tokens name no header to remove (or one already doomed); skipping
            // them saves parsing a header name on most responses.
            .filter(|token| {
                !(token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close"))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .filter(|name| !keep(name)),
    );
    for name in doomed {
        headers.remove(name);
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What forwarding needs to know about a client connection, computed once per connection
/// rather than per request.
#[derive(Debug, Clone)]
pub struct Client {
    /// The peer address.
    pub addr: SocketAddr,
    /// The IP as an `X-Forwarded-For` element.
    xff: HeaderValue,
    /// `for=<ip>;proto=http` as a `Forwarded` element (RFC 7239, IPv6 quoted).
    forwarded: HeaderValue,
}

impl Client {
    /// The forwarding values of a connection from `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        let node = match addr.ip() {
            IpAddr::V4(_) => ip.clone(),
            IpAddr::V6(_) => format!("\"[{ip}]\""),
        };
        Self {
            addr,
            xff: HeaderValue::from_str(&ip).expect("an IP is a valid header value"),
            forwarded: HeaderValue::from_str(&format!("for={node};proto=http"))
                .expect("a Forwarded element is a valid header value"),
        }
    }
}

/// What a request tells its node about the client: `X-Forwarded-For` and `Forwarded` (RFC 7239)
/// extended with the client's element, `X-Forwarded-Proto` (kept when a TLS terminator in
/// front already set it, else `http`) and `X-Request-Id` (kept, or the generated one).
///
/// HTTP forwarding writes these straight into the request head it sends
/// ([`Forwarding::write`]) instead of inserting them into the client's header map: four
/// insertions grew the map (a reallocation and a rehash) on every request. A WebSocket
/// handshake, which goes through hyper's client, gets them in its map ([`Forwarding::insert`]).
#[derive(Debug)]
pub struct Forwarding<'a> {
    /// The client connection.
    pub client: &'a Client,
    /// The `X-Request-Id` to add, when the client sent none.
    pub request_id: Option<RequestId>,
}

impl Forwarding<'_> {
    /// Whether the client's `name` fields are left out of the head because
    /// [`Forwarding::write`] writes them extended.
    pub fn replaces(name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR || name == header::FORWARDED
    }

    /// Writes the forwarding fields as `name: value\r\n` lines, given the client's `headers`.
    pub fn write(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        let mut line = |name: &HeaderName, value: &dyn Fn(&mut Vec<u8>)| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            value(out);
            out.extend_from_slice(b"\r\n");
        };
        line(&X_FORWARDED_FOR, &|out| {
            extended_list(headers, &X_FORWARDED_FOR, &self.client.xff, out);
        });
        line(&header::FORWARDED, &|out| {
            extended_list(headers, &header::FORWARDED, &self.client.forwarded, out);
        });
        if !headers.contains_key(X_FORWARDED_PROTO) {
            line(&X_FORWARDED_PROTO, &|out| out.extend_from_slice(b"http"));
        }
        if let Some(id) = &self.request_id {
            line(&REQUEST_ID, &|out| out.extend_from_slice(id.as_bytes()));
        }
    }

    /// Puts the forwarding fields into `headers`.
    pub fn insert(self, headers: &mut HeaderMap) {
        for (name, element) in [
            (X_FORWARDED_FOR, &self.client.xff),
            (header::FORWARDED, &self.client.forwarded),
        ] {
            let mut list = Vec::new();
            extended_list(headers, &name, element, &mut list);
            let value = HeaderValue::from_bytes(&list).unwrap_or_else(|_| element.clone());
            // `insert` replaces every value: repeated fields become one list.
            headers.insert(name, value);
        }
        headers
            .entry(X_FORWARDED_PROTO)
            .or_insert_with(|| HeaderValue::from_static("http"));
        if let Some(id) = self.request_id {
            headers
                .entry(REQUEST_ID)
                .or_insert_with(|| id.to_header_value());
        }
    }
}

/// Writes `name`'s values in `headers` as one list (empty elements dropped) with `element`
/// appended.
fn extended_list(headers: &HeaderMap, name: &HeaderName, element: &HeaderValue, out: &mut Vec<u8>) {
    for value in headers.get_all(name) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(element.as_bytes());
}

// === RequestBody ===

/// A request body on its way to a node: nothing (replayable) or the client's stream, cut off
/// once it exceeds `limits.max_body_bytes`.
#[derive(Debug)]
pub enum RequestBody {
    /// No body; a request with it can be sent again.
    Empty,
    /// The client's body, streamed.
    Stream {
        /// The client's body.
        inner: Incoming,
        /// Bytes still allowed.
        remaining: u64,
    },
    /// The client's body was read to its end, or broke off: nothing of it is left to read.
    Ended,
}

impl RequestBody {
    /// Wraps the client's body; an already finished body becomes [`RequestBody::Empty`].
    pub fn new(inner: Incoming, limit: u64) -> Self {
        if inner.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Stream {
                inner,
                remaining: limit,
            }
        }
    }

    /// Whether there is no body (so the request can be sent any number of times).
    pub fn is_empty(&self) -> bool {
        matches!(self, RequestBody::Empty)
    }

    /// Whether part of the client's body is still to come.
    pub fn is_unread(&self) -> bool {
        matches!(self, RequestBody::Stream { inner, .. } if !inner.is_end_stream())
    }

    /// The client's body if part of it is still to come: the answer is ready before the body
    /// was read to its end (see [`super::linger`]).
    pub fn into_unread(self) -> Option<Incoming> {
        match self {
            RequestBody::Stream { inner, .. } if !inner.is_end_stream() => Some(inner),
            _ => None,
        }
    }

    /// The next piece of the client's body, `None` at its end. Trailers are dropped. A body
    /// over the limit is [`ErrorKind::BodyTooLarge`] (and the rest of it stays unread); one
    /// the client broke off, `BadRequest`.
    pub async fn next_data(&mut self) -> Result<Option<Bytes>, ProxyError> {
        let RequestBody::Stream { inner, remaining } = self else {
            return Ok(None);
        };
        loop {
            let frame = match inner.frame().await {
                None => {
                    *self = RequestBody::Ended;
                    return Ok(None);
                }
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    *self = RequestBody::Ended;
                    return Err(ProxyError::because(ErrorKind::BadRequest, err));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            if len > *remaining {
                return Err(ProxyError::new(ErrorKind::BodyTooLarge));
            }
            *remaining -= len;
            return Ok(Some(data));
        }
    }
}

// === ResponseBody ===

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// Generated by the balancer (errors, admin pages), or a node's body that was complete
    /// with its head.
    Full(Option<Bytes>),
    /// A node's body streaming through [`upstream`](super::upstream).
    Upstream(UpstreamBody),
    /// A node's body read by hyper's client (a refused WebSocket handshake).
    Incoming(Incoming),
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes))
    }
}

impl ResponseBody {
    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => body.poll_frame(cx),
            ResponseBody::Incoming(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Incoming(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Incoming(inner) => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn websocket_upgrade_headers_survive_when_kept() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["sec-websocket-key"], "abc");
    }

    #[test]
    fn forwarding_fields_extend_the_lists_and_keep_the_clients_request_id() {
        let client = Client::new(([10, 0, 0, 1], 5000).into());
        let mut map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-request-id", "r1"),
        ]);
        Forwarding {
            client: &client,
            request_id: None,
        }
        .insert(&mut map);
        assert_eq!(
            map["x-forwarded-for"],
            "203.0.113.9, 198.51.100.7, 10.0.0.1"
        );
        assert_eq!(map.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["forwarded"], "for=10.0.0.1;proto=http");
        assert_eq!(map["x-request-id"], "r1");

        let mut map = headers(&[("forwarded", " "), ("x-forwarded-proto", "https")]);
        Forwarding {
            client: &Client::new("[::1]:5000".parse().unwrap()),
            request_id: Some(RequestId::new(0xabc, 1)),
        }
        .insert(&mut map);
        assert_eq!(map["x-forwarded-for"], "::1");
        assert_eq!(map["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-request-id"], "0000000000000abc0000000000000001");
    }

    #[test]
    fn written_forwarding_fields_say_the_same_as_inserted_ones() {
        let client = Client::new(([10, 0, 0, 1], 5000).into());
        let map = headers(&[("x-forwarded-for", "203.0.113.9"), ("accept", "*/*")]);
        let forwarding = || Forwarding {
            client: &client,
            request_id: Some(RequestId::new(0xabc, 1)),
        };
        let mut written = Vec::new();
        forwarding().write(&map, &mut written);
        let mut inserted = map.clone();
        forwarding().insert(&mut inserted);
        let mut lines: Vec<String> = inserted
            .iter()
            .filter(|(name, _)| *name != "accept")
            .map(|(name, value)| format!("{name}: {}\r\n", value.to_str().unwrap()))
            .collect();
        lines.sort();
        let mut written: Vec<String> = String::from_utf8(written)
            .unwrap()
            .split_inclusive("\r\n")
            .map(str::to_owned)
            .collect();
        written.sort();
        assert_eq!(written, lines);
    }
}
