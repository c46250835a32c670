//! Failures: dead, failing, slow and unhealthy nodes; limits.

use std::time::Duration;

use crate::support::{
    assert_proxy_error, client, eventually, patience, settings, spread, MockBackend, Mode,
    TestBalancer,
};

/// The `/admin/nodes` row of `id`.
async fn node_row(balancer: &TestBalancer, id: &str) -> serde_json::Value {
    let nodes = balancer.admin_json("/admin/nodes").await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_down_gets_503_in_the_error_format_with_retry_after() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let balancer = TestBalancer::start(settings(&[&a, &b])).await;
    a.kill();
    b.kill();

    let response = client().get(balancer.url("/pets")).send().await.unwrap();

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("x-petmesh-proxy-error"));
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["statusCode"], 503);
    assert_eq!(body["error"], "Service Unavailable");
    assert!(body["message"].as_str().unwrap().len() > 10);
    // Once the probes agree the nodes are marked unhealthy; with every node down the panic
    // threshold keeps routing to all of them, so the answer stays a 503.
    eventually("nodes marked unhealthy", || async {
        let nodes = balancer.admin_json("/admin/nodes").await;
        let unhealthy = nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["healthy"] == false);
        unhealthy.then_some(()).ok_or(nodes.to_string())
    })
    .await;
    let response = client().get(balancer.url("/pets")).send().await.unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_are_retried_and_none_fail_when_a_node_is_killed_mid_run() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let c = MockBackend::start("c").await;
    let balancer = TestBalancer::start(settings(&[&a, &b, &c])).await;
    let client = client();

    let before = spread(&client, &balancer.url("/pets"), 150).await;
    assert_eq!(before.len(), 3);
    b.kill();
    // `spread` asserts that every response is a 200.
    let after = spread(&client, &balancer.url("/pets"), 300).await;
    let served_by_b = after.get("b").copied().unwrap_or(0);
    assert_eq!(served_by_b, 0, "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_out_at_the_first_refused_connect_and_back_once_probes_see_it() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let mut settings = settings(&[&a, &b]);
    // The probes alone would never mark `a` down, and its breaker would be half-open (letting
    // a trial request through) 100 ms after opening: only the refused connect can keep it out.
    settings.health.unhealthy_threshold = 1_000;
    settings.breaker.consecutive_failures = 1;
    settings.breaker.backoff_initial_ms = 100;
    settings.breaker.backoff_max_ms = 100;
    let balancer = TestBalancer::start(settings).await;
    let client = client();
    let url = balancer.url("/pets");
    assert_eq!(spread(&client, &url, 20).await.len(), 2);

    let addr = a.addr;
    a.kill();
    drop(a);
    // The mock's tasks end asynchronously: wait until its address refuses connections.
    eventually("a's listener gone", || async move {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Err("still accepting".to_owned()),
            Err(_) => Ok(()),
        }
    })
    .await;
    // `spread` asserts that every response is a 200 (the attempts on `a` are retried on `b`).
    // The first of them that needs a new connection to `a` is refused: `a` is out.
    let row = eventually("a unhealthy", || async {
        spread(&client, &url, 2).await;
        let row = node_row(&balancer, "a").await;
        (row["healthy"] == false)
            .then_some(row.clone())
            .ok_or(row.to_string())
    })
    .await;
    let attempts = row["requests"].clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = spread(&client, &url, 40).await;
    assert_eq!(later.get("a"), None, "{later:?}");
    assert_eq!(
        node_row(&balancer, "a").await["requests"],
        attempts,
        "no attempt on the dead node after the breaker's backoff"
    );

    // Back on the same address: taken back once the probes see it ready.
    let a = MockBackend::start_at("a", addr).await;
    eventually("a healthy again", || async {
        let row = node_row(&balancer, "a").await;
        (row["healthy"] == true)
            .then_some(())
            .ok_or(row.to_string())
    })
    .await;
    let back = spread(&client, &url, 20).await;
    assert!(back.get("a").is_some_and(|&n| n >= 5), "{back:?}");
    assert!(a.requests() >= 5);
}

/// Nodes `a` and `b` behind a balancer whose breakers open after 3 failures in a row and then
/// stay open for the rest of the test.
async fn two_nodes_with_a_quick_breaker() -> (MockBackend, MockBackend, TestBalancer) {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let mut settings = settings(&[&a, &b]);
    settings.breaker.consecutive_failures = 3;
    settings.breaker.backoff_initial_ms = 60_000;
    settings.breaker.backoff_max_ms = 60_000;
    let balancer = TestBalancer::start(settings).await;
    (a, b, balancer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_is_retried_elsewhere_and_its_breaker_opens() {
    let (a, _b, balancer) = two_nodes_with_a_quick_breaker().await;
    a.set_mode(Mode::Fail(503));

    let counts = spread(&client(), &balancer.url("/pets"), 20).await;

    assert_eq!(
        counts.get("a"),
        None,
        "a's 503s were retried on b: {counts:?}"
    );
    assert_eq!(node_row(&balancer, "a").await["breaker"], "open");
    let tried_on_a = a.requests();
    spread(&client(), &balancer.url("/pets"), 20).await;
    assert_eq!(a.requests(), tried_on_a, "an open breaker gets no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_naming_a_shared_dependency_is_passed_on_without_retry_or_breaker() {
    let (a, _b, balancer) = two_nodes_with_a_quick_breaker().await;
    a.set_mode(Mode::DependencyDown);

    let client = client();
    let mut from_a = 0;
    for _ in 0..20 {
        let response = client.get(balancer.url("/pets")).send().await.unwrap();
        if response.headers()["x-petmesh-node"] == "a" {
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["x-petmesh-dependency-down"], "database");
            from_a += 1;
        } else {
            assert_eq!(response.status(), 200);
        }
    }

    assert!(
        from_a > 3,
        "a was picked more often than the breaker's threshold: {from_a}"
    );
    assert_eq!(
        a.requests(),
        from_a,
        "every request a got came back from a: none was retried"
    );
    assert_eq!(node_row(&balancer, "a").await["breaker"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_the_node_answered() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;
    a.set_mode(Mode::Fail(503));

    let response = client()
        .post(balancer.url("/orders"))
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["x-petmesh-node"],
        "a",
        "the node's own answer"
    );
    assert!(!response.headers().contains_key("x-petmesh-proxy-error"));
    assert_eq!(a.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_gets_504_after_the_response_timeout() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.response_timeout_ms = 300;
    let balancer = TestBalancer::start(settings).await;
    a.set_mode(Mode::Slow(Duration::from_secs(5)));

    let started = std::time::Instant::now();
    let response = client().get(balancer.url("/pets")).send().await.unwrap();

    assert_proxy_error(&response, 504, "response_timed_out");
    assert!(started.elapsed() < Duration::from_secs(4));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["statusCode"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_to_send_its_head_is_cut_off_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.header_read_timeout_ms = 300;
    let balancer = TestBalancer::start(settings).await;

    // Half a head, then nothing: the balancer closes the connection.
    let mut slow = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
    slow.write_all(b"GET /pets HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(patience(), slow.read_to_end(&mut rest))
        .await
        .expect("the balancer closes a connection stuck in its head");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not before the timeout: closed after {:?} with {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(a.requests(), 0);

    // The same goes for a kept-alive connection that sends nothing after its request.
    let mut idle = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
    idle.write_all(b"GET /pets HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(patience(), idle.read_to_end(&mut answer))
        .await
        .expect("the balancer closes an idle connection");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "the request itself was answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_node_is_skipped_until_it_is_ready_again() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let balancer = TestBalancer::start(settings(&[&a, &b])).await;
    let client = client();

    a.set_ready(false);
    eventually("a unhealthy", || async {
        let row = node_row(&balancer, "a").await;
        (row["healthy"] == false)
            .then_some(())
            .ok_or(row.to_string())
    })
    .await;
    let counts = spread(&client, &balancer.url("/pets"), 20).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");

    a.set_ready(true);
    eventually("a healthy", || async {
        let row = node_row(&balancer, "a").await;
        (row["healthy"] == true)
            .then_some(())
            .ok_or(row.to_string())
    })
    .await;
    let counts = spread(&client, &balancer.url("/pets"), 20).await;
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.max_body_bytes = 16;
    let balancer = TestBalancer::start(settings).await;

    let response = client()
        .post(balancer.url("/pets"))
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();

    assert_proxy_error(&response, 413, "body_too_large");
    assert_eq!(a.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_gets_431_and_never_reaches_a_node() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.max_header_bytes = 16 * 1024;
    let balancer = TestBalancer::start(settings).await;

    let mut raw = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
    let head = format!(
        "GET /pets HTTP/1.1\r\nHost: x\r\nX-Large: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(patience(), raw.read_to_end(&mut answer))
        .await
        .expect("the balancer answers and closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(a.requests(), 0);

    // Within the limit: forwarded.
    let fine = client()
        .get(balancer.url("/pets"))
        .header("x-fine", "a".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
}
