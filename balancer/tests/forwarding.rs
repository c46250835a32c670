//! Forwarding of messages: request and response bodies in every framing, interim and bodiless
//! responses, and keep-alive connections to a node (reuse, and a node closing them).

use bytes::Bytes;
use serde_json::Value;

use crate::support::{
    assert_proxy_error, client, digest, eventually, patience, settings, MockBackend, RawBackend,
    RawReply, TestBalancer,
};

/// `len` bytes of a pattern that does not repeat every 256 bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A balancer with the raw backend as its only node.
async fn balancer_for(raw: &RawBackend) -> TestBalancer {
    let mut settings = settings(&[]);
    settings.discovery.static_upstreams = raw.upstream();
    TestBalancer::start(settings).await
}

/// POSTs `body` to the mock backend's `/body` and returns what it says it received.
async fn post_body(
    client: &reqwest::Client,
    balancer: &TestBalancer,
    body: reqwest::Body,
) -> Value {
    client
        .post(balancer.url("/body"))
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `/admin/nodes` row of the only node.
async fn only_node(balancer: &TestBalancer) -> Value {
    balancer.admin_json("/admin/nodes").await[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_node_whole_whatever_their_framing() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;
    let client = client();
    let big = pattern(1 << 20);

    let small = post_body(&client, &balancer, "hello".into()).await;
    assert_eq!(small["len"], 5);
    assert_eq!(small["digest"], digest(b"hello"));

    let with_length = post_body(&client, &balancer, big.clone().into()).await;
    assert_eq!(with_length["len"], big.len());
    assert_eq!(with_length["digest"], digest(&big));
    assert_eq!(with_length["content-length"], big.len().to_string());
    assert_eq!(with_length["transfer-encoding"], Value::Null);

    let pieces: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(100_000)
        .map(|piece| Ok(Bytes::copy_from_slice(piece)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let chunked = post_body(&client, &balancer, body).await;
    assert_eq!(chunked["len"], big.len());
    assert_eq!(chunked["digest"], digest(&big));
    assert_eq!(chunked["transfer-encoding"], "chunked");
    assert_eq!(chunked["content-length"], Value::Null);

    // The node's `100 Continue` (its answer to `Expect`) is no reason to stop sending: an
    // upload slow enough that the node's 100 comes in the middle of it.
    let slow = futures_util::stream::unfold(0, |piece| async move {
        if piece == 10 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let bytes = Bytes::from(pattern(65_536));
        Some((Ok::<_, std::io::Error>(bytes), piece + 1))
    });
    let expecting: Value = client
        .post(balancer.url("/body"))
        .header("expect", "100-continue")
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let whole: Vec<u8> = (0..10).flat_map(|_| pattern(65_536)).collect();
    assert_eq!(expecting["len"], whole.len());
    assert_eq!(expecting["digest"], digest(&whole));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_before_it_has_read_the_whole_body_is_heard_at_once() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.response_timeout_ms = 15_000;
    let balancer = TestBalancer::start(settings).await;

    // Far more body than the sockets between balancer and node hold once the node stops
    // reading after its first KiB. A raw client, because the answer comes while it is still
    // sending, and HTTP clients tend to report the failed upload instead of the answer.
    let len = 8 << 20;
    let stream = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let upload = tokio::spawn(async move {
        let head = format!("POST /small-body HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&pattern(len)).await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(patience(), async {
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    upload.abort();

    assert!(read.is_ok(), "no answer within {:?}", patience());
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        answer.starts_with("http/1.1 413"),
        "the node's answer, not a timeout: {answer}"
    );
    assert!(answer.contains("x-petmesh-node: a\r\n"), "{answer}");
    assert!(!answer.contains("x-petmesh-proxy-error"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_over_the_limit_gets_413() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.max_body_bytes = 16;
    let balancer = TestBalancer::start(settings).await;

    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..3)
        .map(|_| Ok(Bytes::from_static(b"0123456789")))
        .collect();
    let response = client()
        .post(balancer.url("/body"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();

    assert_proxy_error(&response, 413, "body_too_large");
    assert_eq!(
        only_node(&balancer).await["errors"],
        0,
        "not the node's fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_stream_back_in_every_framing_and_keep_alive_connections_are_reused() {
    let large = pattern(1 << 20);
    let large_response = {
        let mut bytes =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", large.len()).into_bytes();
        bytes.extend_from_slice(&large);
        bytes
    };
    let raw = RawBackend::start("raw", move |request| {
        let send = |text: &str| RawReply::Send(text.as_bytes().to_vec());
        match request.line.as_str() {
            "GET /chunked" => send(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            ),
            "GET /large" => RawReply::Send(large_response.clone()),
            "HEAD /large" => send("HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n"),
            "GET /continue" => send(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            ),
            "GET /empty" => send("HTTP/1.1 204 No Content\r\n\r\n"),
            "GET /until-close" => {
                RawReply::SendAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec())
            }
            "GET /last" => RawReply::SendAndClose(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nlast".to_vec(),
            ),
            _ => send("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        }
    })
    .await;
    let balancer = balancer_for(&raw).await;
    let client = client();

    for _ in 0..2 {
        let response = client.get(balancer.url("/chunked")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-petmesh-node"], "raw");
        assert!(response.headers().get("x-t").is_none());
        assert_eq!(response.text().await.unwrap(), "hello world");

        let response = client.get(balancer.url("/large")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), large);

        let response = client.head(balancer.url("/large")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "1048576");
        assert!(response.bytes().await.unwrap().is_empty());

        let response = client.get(balancer.url("/continue")).send().await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(response.text().await.unwrap(), "ok");

        let response = client.get(balancer.url("/empty")).send().await.unwrap();
        assert_eq!(response.status(), 204);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    assert_eq!(
        raw.connections(),
        1,
        "all of that on one kept-alive connection"
    );

    for path in ["/until-close", "/until-close", "/last", "/last"] {
        let response = client.get(balancer.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let expected = if path == "/last" {
            "last"
        } else {
            "until the end"
        };
        assert_eq!(response.text().await.unwrap(), expected);
    }
    // The first /until-close still went on the kept-alive connection; each later request
    // needed a new one.
    assert_eq!(
        raw.connections(),
        4,
        "a connection ended by its response is not reused"
    );
    assert_eq!(only_node(&balancer).await["errors"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_the_node_drops_is_replaced_without_resending_a_post() {
    // Every connection answers its first request and closes on the second without a word, as
    // a node does when its keep-alive timeout strikes just as a request arrives.
    let raw = RawBackend::start("raw", |request| match request.nth {
        1 => RawReply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        _ => RawReply::Close,
    })
    .await;
    let balancer = balancer_for(&raw).await;
    let client = client();

    let first = client.get(balancer.url("/a")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "ok");
    let second = client.get(balancer.url("/b")).send().await.unwrap();
    assert_eq!(second.status(), 200, "a GET goes again on a new connection");
    assert_eq!(only_node(&balancer).await["errors"], 0);

    let post = client.post(balancer.url("/c")).send().await.unwrap();
    assert_proxy_error(&post, 502, "upstream_failed");
    let lines: Vec<String> = raw.seen().into_iter().map(|r| r.line).collect();
    assert_eq!(lines, ["GET /a", "GET /b", "GET /b", "POST /c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_node_closed_while_idle_is_not_used_again() {
    // Keep-alive responses (no `Connection: close`), but the node closes after each.
    let raw = RawBackend::start("raw", |_| {
        RawReply::SendAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let balancer = balancer_for(&raw).await;
    let client = client();

    for i in 0..5 {
        let response = client
            .post(balancer.url(&format!("/p{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {i}");
        eventually("the node closed the connection", || async {
            match raw.closed_connections() {
                n if n == i + 1 => Ok(()),
                n => Err(format!("{n} closed")),
            }
        })
        .await;
    }
    assert_eq!(raw.seen().len(), 5, "each POST sent once");
    assert_eq!(only_node(&balancer).await["errors"], 0);
}
