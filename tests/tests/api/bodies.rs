//! Refused request bodies, seen by a client that writes its whole request before it reads
//! (Python's urllib, most SDKs): the 413, the node's own or the balancer's, must reach it
//! readable, with the common error body, instead of a connection reset; and the lingering
//! that makes that possible is bounded. The client is a raw socket, because HTTP libraries
//! read while they send.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use petmesh_tests::TestCluster;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The node's default `server.body_limit_bytes`.
const NODE_LIMIT: usize = 1 << 20;

/// The balancer's default `limits.max_body_bytes`.
const BALANCER_LIMIT: usize = 10 << 20;

/// What the node reads and throws away after a 413, at most (`node/src/limits.rs`, mirrored
/// here because the bound is what is being tested).
const LINGER_MAX_BYTES: usize = 64 << 20;

/// How long the node waits for more of a refused body before it gives up (`limits.rs`).
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// Over both limits.
const HUGE: usize = 12 << 20;

/// Over the node's limit, under the balancer's, and more than the sockets in between hold
/// (a few MiB on loopback), so that the client is still writing when the answer comes.
const LARGE: usize = 8 << 20;

/// Bound on each exchange.
const PATIENCE: Duration = Duration::from_secs(60);

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

    /// Whether the answer tells the client that the connection ends after it.
    fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }

    /// Asserts a 413 with the common error body.
    fn assert_413(&self) {
        assert_eq!(self.status, 413, "{self:?}");
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {:?}", String::from_utf8_lossy(&self.body)));
        assert_eq!(body["statusCode"], 413, "{body}");
        assert_eq!(body["error"], "Payload Too Large", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    /// Asserts the node's own 413 (passed on by the balancer when there is one).
    fn assert_node_413(&self) {
        self.assert_413();
        let body: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&NODE_LIMIT.to_string()), "{message}");
        assert_eq!(self.header("x-petmesh-proxy-error"), None, "{self:?}");
    }
}

/// The length of the first response in `raw` (framed by `Content-Length`), once it is all
/// there.
fn complete_len(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head_text = String::from_utf8_lossy(&raw[..end]);
    let length: usize = head_text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    (raw.len() >= end + length).then_some(end + length)
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

/// The head of a POST of a pet whose body is framed by `framing`. The body limit comes
/// before authentication, so no token is needed to be refused.
fn head(len: usize, framing: Framing) -> String {
    let framing = match framing {
        Framing::Length => format!("content-length: {len}"),
        Framing::Chunked => "transfer-encoding: chunked".to_owned(),
    };
    format!(
        "POST /api/v1/pets HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    )
}

/// Sends a POST with `len` body bytes to `addr` the way a client that reads only after
/// sending does: everything first (every write must succeed), then reads the answer. What
/// follows the answer must be sound too: after `Connection: close`, a clean end of the
/// connection (no reset, nothing more); otherwise the whole body was read before the answer
/// (a node's early 413 can reach the balancer after it has passed the whole body on), and the
/// connection carries the next request.
async fn upload_then_read(addr: SocketAddr, len: usize, framing: Framing) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(head(len, framing).as_bytes())
            .await
            .expect("the head is written");
        let piece = vec![b' '; 64 * 1024];
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
            written.unwrap_or_else(|err| {
                panic!("{framing:?}: writing the body failed after {sent} bytes: {err}")
            });
            sent += n;
        }
        if let Framing::Chunked = framing {
            stream
                .write_all(b"0\r\n\r\n")
                .await
                .expect("the last chunk is written");
        }
        let mut raw = Vec::new();
        let answer_len = loop {
            if let Some(n) = complete_len(&raw) {
                break n;
            }
            let mut buf = [0; 16 * 1024];
            let read = stream.read(&mut buf).await.unwrap_or_else(|err| {
                panic!(
                    "{framing:?}: reading the answer failed ({err}) after {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
            assert!(
                read > 0,
                "{framing:?}: the connection ended before a complete answer: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..read]);
        };
        let answer = parse_answer(&raw[..answer_len]);
        let mut after = raw.split_off(answer_len);
        if answer.closes() {
            stream.read_to_end(&mut after).await.unwrap_or_else(|err| {
                panic!("{framing:?}: the connection did not end cleanly ({err}): {answer:?}")
            });
            assert!(after.is_empty(), "nothing after the answer: {after:?}");
        } else {
            assert!(
                after.is_empty(),
                "nothing before the next request: {after:?}"
            );
            stream
                .write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                .await
                .expect("the kept connection takes the next request");
            stream.read_to_end(&mut after).await.unwrap();
            let next = parse_answer(&after);
            assert_eq!(next.status, 200, "the kept connection serves: {next:?}");
        }
        answer
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{framing:?}: no complete exchange within {PATIENCE:?}"))
}

#[tokio::test]
async fn a_too_large_body_written_whole_before_reading_gets_the_nodes_readable_413() {
    let cluster = TestCluster::start(1).await;
    let node = cluster.node(0).addr();

    for framing in [Framing::Length, Framing::Chunked] {
        let answer = upload_then_read(node, HUGE, framing).await;
        answer.assert_node_413();
        assert!(answer.closes(), "{answer:?}");
    }
    // The node is fine afterwards.
    cluster
        .client(0)
        .get("/health/live")
        .await
        .unwrap()
        .assert_status(200);
}

#[tokio::test]
async fn through_the_balancer_a_too_large_body_written_whole_gets_a_readable_413() {
    let cluster = TestCluster::builder().nodes(1).balancer(true).start().await;
    let balancer = cluster.balancer();
    balancer
        .until_routing_to(&["node-1"], PATIENCE)
        .await
        .unwrap();
    const { assert!(NODE_LIMIT < LARGE && LARGE < BALANCER_LIMIT && BALANCER_LIMIT < HUGE) };

    // Between the two limits: the node refuses, the balancer passes its 413 on (closing the
    // connection, unless the node's answer came after the whole body had been passed on).
    for framing in [Framing::Length, Framing::Chunked] {
        let answer = upload_then_read(balancer.addr(), LARGE, framing).await;
        answer.assert_node_413();
        assert_eq!(
            answer.header("x-petmesh-node"),
            Some("node-1"),
            "{answer:?}"
        );
    }
    // Declared over the balancer's limit: the balancer refuses at once.
    let declared = upload_then_read(balancer.addr(), HUGE, Framing::Length).await;
    declared.assert_413();
    assert!(declared.closes(), "{declared:?}");
    assert_eq!(
        declared.header("x-petmesh-proxy-error"),
        Some("body_too_large"),
        "{declared:?}"
    );
    // Chunked over both: the node's limit is passed first.
    let chunked = upload_then_read(balancer.addr(), HUGE, Framing::Chunked).await;
    chunked.assert_node_413();
    assert!(chunked.closes(), "{chunked:?}");
}

#[tokio::test]
async fn a_client_that_stalls_after_its_body_is_refused_is_cut_off_after_the_idle_bound() {
    let cluster = TestCluster::start(1).await;
    let mut stream = TcpStream::connect(cluster.node(0).addr()).await.unwrap();
    stream
        .write_all(head(HUGE, Framing::Length).as_bytes())
        .await
        .unwrap();
    stream.write_all(&vec![b' '; 2 << 20]).await.unwrap();
    let stalled = Instant::now();

    // The 413 is there to read at once, and the connection ends after the idle bound.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(LINGER_IDLE + PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the node closes a stalled connection");
    let waited = stalled.elapsed();
    assert!(read.is_ok(), "a clean close, nothing left unread: {read:?}");
    let answer = parse_answer(&raw);
    answer.assert_node_413();
    assert!(answer.closes(), "{answer:?}");
    assert!(
        waited >= LINGER_IDLE - Duration::from_millis(100),
        "the node waited for more body before closing: {waited:?}"
    );
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_its_body_is_refused_is_cut_off_after_the_byte_bound() {
    let cluster = TestCluster::start(1).await;
    let mut stream = TcpStream::connect(cluster.node(0).addr()).await.unwrap();
    stream
        .write_all(head(1 << 40, Framing::Length).as_bytes())
        .await
        .unwrap();
    let piece = vec![b' '; 256 * 1024];
    let mut sent = 0usize;
    let cut_off = tokio::time::timeout(PATIENCE, async {
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
