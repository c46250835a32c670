//! Refused request bodies, seen by clients that write their whole request before they read
//! (Python's urllib, most SDKs): the answer (the balancer's 413, or a node's early one) must be
//! readable, not lost to a connection reset, and the lingering that makes it readable is
//! bounded. The client here is a raw socket, because HTTP libraries read while they send.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::support::{patience, settings, MockBackend, TestBalancer};

/// The default `limits.max_body_bytes` (10 MiB): the tests run against the real defaults.
const BALANCER_LIMIT: usize = 10 << 20;

/// What the balancer reads and throws away after answering early, at most
/// (`proxy::linger`; mirrored here because the bound is what is being tested).
const LINGER_MAX_BYTES: usize = 64 << 20;

/// How long the balancer waits for more of a refused body before it gives up
/// (`proxy::linger`, nginx's `lingering_timeout`).
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// How an upload frames its body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    Chunked,
}

/// An HTTP response as read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Field names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Parses one complete response framed by `Content-Length` from `raw`.
fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {text:?}"));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {text:?}"));
    let body = raw[end + 4..].to_vec();
    assert_eq!(
        body.len(),
        length,
        "a complete body and nothing after it: {text:?}"
    );
    Answer {
        status,
        headers,
        body,
    }
}

/// The request head of a POST to `path` whose body is framed by `framing`.
fn head(path: &str, len: usize, framing: Framing) -> String {
    let framing = match framing {
        Framing::Length => format!("content-length: {len}"),
        Framing::Chunked => "transfer-encoding: chunked".to_owned(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    )
}

/// Sends a POST with `len` body bytes to `addr` the way a client that reads only after
/// sending does: everything first (every write must succeed), then reads the answer up to
/// the end of the connection, which must be a clean one (no reset).
async fn upload_then_read(
    addr: std::net::SocketAddr,
    path: &str,
    len: usize,
    framing: Framing,
) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(head(path, len, framing).as_bytes())
            .await
            .expect("the head is written");
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = piece.len().min(len - sent);
            let written = match framing {
                Framing::Length => stream.write_all(&piece[..n]).await,
                Framing::Chunked => {
                    let mut chunk = format!("{n:x}\r\n").into_bytes();
                    chunk.extend_from_slice(&piece[..n]);
                    chunk.extend_from_slice(b"\r\n");
                    stream.write_all(&chunk).await
                }
            };
            written
                .unwrap_or_else(|err| panic!("writing the body failed after {sent} bytes: {err}"));
            sent += n;
        }
        if let Framing::Chunked = framing {
            stream
                .write_all(b"0\r\n\r\n")
                .await
                .expect("the last chunk is written");
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap_or_else(|err| {
            panic!(
                "reading the answer failed ({err}) after {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
        parse_answer(&raw)
    };
    tokio::time::timeout(patience(), exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete exchange within {:?}", patience()))
}

/// Asserts that `answer` is the balancer's own 413 with the common error body, and that it
/// tells the client the connection ends.
fn assert_balancer_413(answer: &Answer) {
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(
        answer.header("x-petmesh-proxy-error"),
        Some("body_too_large")
    );
    assert_eq!(answer.header("connection"), Some("close"));
    let body = answer.json();
    assert_eq!(body["statusCode"], 413, "{body}");
    assert_eq!(body["error"], "Payload Too Large", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_a_too_large_body_before_reading_reads_the_413() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;
    let len = 12 << 20;
    assert!(len > BALANCER_LIMIT);

    // Declared too large: answered at once, before a byte of the body was read.
    let declared = upload_then_read(balancer.addr, "/body", len, Framing::Length).await;
    assert_balancer_413(&declared);
    // Chunked: forwarded until it passes the limit, then refused.
    let chunked = upload_then_read(balancer.addr, "/body", len, Framing::Chunked).await;
    assert_balancer_413(&chunked);

    assert_eq!(a.requests(), 1, "only the chunked upload reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_early_413_reaches_a_client_still_writing_its_body() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;

    // Under the balancer's limit, over the node's (`/small-body` answers 413 after 1 KiB and
    // reads no more), and more than the sockets in between hold (a few MiB on loopback), so
    // that the client is still writing when the answer comes.
    let len = 8 << 20;
    assert!(len < BALANCER_LIMIT);
    for framing in [Framing::Length, Framing::Chunked] {
        let answer = upload_then_read(balancer.addr, "/small-body", len, framing).await;
        assert_eq!(answer.status, 413, "{framing:?}: {answer:?}");
        assert_eq!(answer.header("x-petmesh-node"), Some("a"), "{answer:?}");
        assert_eq!(answer.header("x-petmesh-proxy-error"), None, "{answer:?}");
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        assert_eq!(answer.body, b"{}", "the node's own body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_after_a_refusal_is_cut_off_after_the_idle_bound() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;

    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream
        .write_all(head("/body", 12 << 20, Framing::Length).as_bytes())
        .await
        .unwrap();
    stream.write_all(&vec![b'x'; 1 << 20]).await.unwrap();
    let stalled = Instant::now();

    // The answer is there to read at once, and the connection ends after the idle bound.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(LINGER_IDLE + patience(), stream.read_to_end(&mut raw))
        .await
        .expect("the balancer closes a stalled connection");
    let waited = stalled.elapsed();
    assert!(read.is_ok(), "a clean close, nothing left unread: {read:?}");
    assert_balancer_413(&parse_answer(&raw));
    assert!(
        waited >= LINGER_IDLE - Duration::from_millis(100),
        "the balancer waited for more body before closing: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_a_refusal_is_cut_off_after_the_byte_bound() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;

    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream
        .write_all(head("/body", 1 << 40, Framing::Length).as_bytes())
        .await
        .unwrap();
    let piece = vec![b'x'; 256 * 1024];
    let mut sent = 0usize;
    let cut_off = tokio::time::timeout(patience(), async {
        loop {
            match stream.write(&piece).await {
                Ok(n) => sent += n,
                Err(err) => return err,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still accepted after {sent} bytes"));

    assert!(
        matches!(
            cut_off.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{cut_off}"
    );
    // Everything up to the bound was read; beyond it, at most what the sockets and buffers in
    // between hold.
    assert!(sent > LINGER_MAX_BYTES, "cut off early, after {sent} bytes");
    assert!(
        sent < LINGER_MAX_BYTES + (32 << 20),
        "cut off late, after {sent} bytes"
    );
}
