//! Response heads read from a node (`httparse` into a `HeaderMap`, the body's framing per RFC
//! 9112) and request heads and body pieces written to it.

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::{
    error::BoxError,
    proxy::http::{is_hop_by_hop, remove_hop_by_hop, Forwarding},
};

/// Most header fields a node's response may have (hyper's default too).
const MAX_HEADERS: usize = 100;

/// Largest response head accepted from a node.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A node's response head, with what its body's framing is.
pub struct ResponseHead {
    /// The status (never 1xx).
    pub status: StatusCode,
    /// The node's header fields, without the hop-by-hop ones.
    pub headers: HeaderMap,
    pub(super) framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub(super) keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// The end of the connection.
    Close,
}

/// Encodes the request line and header fields, with the forwarding fields, into `out`
/// (cleared first). `chunked` adds the framing of a streamed body without `Content-Length`.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    head: &Parts,
    forwarding: &Forwarding<'_>,
    chunked: bool,
) {
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
pub(super) fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
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

/// A complete head found at the start of the read buffer.
pub(super) enum Parsed {
    /// A 1xx response, consumed.
    Interim,
    /// The final response head, consumed.
    Final(ResponseHead),
}

/// Parses the head at the start of `buf` and consumes it; `None` when it is not complete yet.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Parsed>, BoxError> {
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
        let client = crate::proxy::Client::new(([10, 0, 0, 1], 5000).into());
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
