//! Rate limits that hold for the cluster as a whole: one client address's anonymous requests,
//! and one user's requests from any address, REST or WebSocket, spread over every node, spend
//! one budget; a forged `X-Forwarded-For` buys nothing; without Redis every node limits alone
//! at its share.

use std::{collections::BTreeSet, net::IpAddr};

use petmesh_tests::{
    assert_eventually, cluster::RATE_LIMITS_ENV, metrics, ApiClient, TestCluster, TestResponse,
    WsClient,
};
use reqwest::Method;

use crate::support::{until_balanced, TcpProxy, PASSWORD};

/// The budgets of these tests: small enough to spend in a test, large enough to spread.
const ANONYMOUS: usize = 12;
const AUTHENTICATED: usize = 15;

/// 3 nodes and a balancer with the small budgets.
async fn limited_cluster() -> TestCluster {
    let cluster = TestCluster::builder()
        .nodes(3)
        .balancer(true)
        .env(RATE_LIMITS_ENV, "true")
        .env(
            "PETMESH_NODE__RATE_LIMIT__ANONYMOUS_PER_HOUR",
            ANONYMOUS.to_string(),
        )
        .env(
            "PETMESH_NODE__RATE_LIMIT__AUTHENTICATED_PER_HOUR",
            AUTHENTICATED.to_string(),
        )
        .start()
        .await;
    until_balanced(&cluster).await;
    cluster
}

fn address(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 100 + n])
}

/// A header as a number.
#[track_caller]
fn number(resp: &TestResponse, name: &str) -> u64 {
    resp.header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} on {} {}", resp.status, resp.text))
}

/// Statuses of `count` GETs of `path` by `client`, with the nodes that served them, checking
/// the `RateLimit-*` headers of every answer.
async fn spend(
    client: &ApiClient,
    path: &str,
    count: usize,
    limit: usize,
) -> (Vec<u16>, BTreeSet<String>) {
    let mut statuses = Vec::new();
    let mut nodes = BTreeSet::new();
    for n in 0..count {
        let resp = client.get(path).await.unwrap();
        assert_eq!(
            number(&resp, "ratelimit-limit"),
            limit as u64,
            "{}",
            resp.text
        );
        let remaining = number(&resp, "ratelimit-remaining");
        assert!(number(&resp, "ratelimit-reset") > 0);
        if resp.status == 429 {
            assert_eq!(remaining, 0);
            assert!(number(&resp, "retry-after") > 0);
            assert_eq!(resp.body["statusCode"], 429, "{}", resp.text);
        } else {
            assert_eq!(remaining, (limit - 1 - n) as u64, "{}", resp.text);
        }
        if let Some(node) = resp.header("x-petmesh-node") {
            nodes.insert(node.to_owned());
        }
        statuses.push(resp.status);
    }
    (statuses, nodes)
}

fn expected(allowed: usize, ok: u16, total: usize) -> Vec<u16> {
    let mut statuses = vec![ok; allowed];
    statuses.resize(total, 429);
    statuses
}

#[tokio::test]
async fn one_address_gets_exactly_its_budget_across_every_node() {
    let cluster = limited_cluster().await;
    let client = cluster.entry_client().from_address(address(1));
    // Unknown routes under /api/v1 spend the budget too (404s are answers like any other).
    let (statuses, nodes) = spend(&client, "/api/v1/pets/999999", ANONYMOUS + 6, ANONYMOUS).await;
    assert_eq!(statuses, expected(ANONYMOUS, 401, ANONYMOUS + 6));
    assert_eq!(nodes.len(), 3, "spread over every node: {nodes:?}");
    // Another address has its own budget; health and metrics are never limited.
    let other = cluster.entry_client().from_address(address(2));
    other
        .get("/api/v1/pets/1")
        .await
        .unwrap()
        .assert_status(401);
    for path in ["/health/ready", "/metrics", "/openapi.json"] {
        let resp = client.get(path).await.unwrap();
        resp.assert_status(200);
        assert_eq!(resp.header("ratelimit-limit"), None, "{path}");
    }
}

#[tokio::test]
async fn one_user_gets_exactly_its_budget_from_any_address_rest_and_websocket_alike() {
    let cluster = limited_cluster().await;
    let entry = cluster.entry_client();
    entry
        .from_address(address(9))
        .register("busy", "busy@example.com", PASSWORD)
        .await
        .unwrap()
        .assert_status(201);
    let token = cluster
        .entry_client()
        .from_address(address(9))
        .login("busy", PASSWORD)
        .await
        .unwrap()
        .access_token;
    // Five WebSocket requests spend the same budget...
    let mut ws = WsClient::login(&cluster.balancer().base_url(), &token)
        .await
        .unwrap();
    for _ in 0..5 {
        ws.request("ping", serde_json::json!({}))
            .await
            .unwrap()
            .ok();
    }
    // ...as the REST requests, each from another address.
    let mut statuses = Vec::new();
    for n in 0..(AUTHENTICATED - 5 + 4) {
        let client = cluster
            .entry_client()
            .from_address(address(10 + n as u8))
            .token(&token);
        statuses.push(client.get("/api/v1/auth/me").await.unwrap().status);
    }
    assert_eq!(
        statuses,
        expected(AUTHENTICATED - 5, 200, AUTHENTICATED - 1)
    );
    let refused = ws.request("ping", serde_json::json!({})).await.unwrap();
    assert_eq!(refused.error_code(), "RATE_LIMITED");
}

#[tokio::test]
async fn a_forged_x_forwarded_for_buys_no_budget() {
    let cluster = limited_cluster().await;
    for (via, client) in [
        ("balancer", cluster.entry_client().from_address(address(3))),
        ("node", cluster.client(2).from_address(address(4))),
    ] {
        let mut statuses = Vec::new();
        for n in 0..(ANONYMOUS + 3) {
            let request = client
                .request(Method::GET, "/api/v1/pets/1")
                .header("x-forwarded-for", format!("198.51.100.{n}"));
            statuses.push(client.send(request).await.unwrap().status);
        }
        assert_eq!(
            statuses,
            expected(ANONYMOUS, 401, ANONYMOUS + 3),
            "via the {via}"
        );
    }
}

#[tokio::test]
async fn without_redis_each_node_limits_alone_at_its_share() {
    // Every node reaches Redis through a proxy that can play the outage.
    let mut cluster = TestCluster::builder()
        .nodes(0)
        .env(RATE_LIMITS_ENV, "true")
        .env(
            "PETMESH_NODE__RATE_LIMIT__ANONYMOUS_PER_HOUR",
            ANONYMOUS.to_string(),
        )
        .start()
        .await;
    let proxy = TcpProxy::for_redis(&cluster).await;
    for _ in 0..3 {
        let url = proxy.redis_url();
        cluster
            .spawn_node(|config| config.env("REDIS_URL", url))
            .await
            .unwrap();
    }
    let per_node = ANONYMOUS / 3;
    // Each node must have counted the others before the outage (it divides by that count).
    for node in 0..3 {
        let client = cluster.client(node);
        assert_eventually!(
            metrics::value(
                &client.get("/metrics").await.unwrap().text,
                "petmesh_node_registry_nodes"
            ) == Some(3.0),
            "node {node} sees 3 nodes"
        );
    }

    proxy.set_up(false);
    let node = cluster.client(1).from_address(address(5));
    let mut statuses = Vec::new();
    for _ in 0..(per_node + 4) {
        statuses.push(node.get("/api/v1/pets/1").await.unwrap().status);
    }
    assert_eq!(
        statuses,
        expected(per_node, 401, per_node + 4),
        "no 5xx, the node's share"
    );
    let text = cluster.client(1).get("/metrics").await.unwrap().text;
    assert!(
        metrics::value(&text, "petmesh_node_rate_limit_fallbacks_total").unwrap()
            >= (per_node + 4) as f64
    );
    let warnings = cluster
        .node(1)
        .logs()
        .iter()
        .filter(|l| l.contains("each node enforces rate limits on its own"))
        .count();
    assert_eq!(warnings, 1, "one warning per outage");
}

/// A WebSocket handshake from `source` to `base_url`: the HTTP status it got.
async fn handshake_from(source: IpAddr, base_url: &str) -> u16 {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let addr: std::net::SocketAddr = base_url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("handshake: {err}"),
    }
}

#[tokio::test]
async fn websocket_handshakes_spend_the_address_budget_too() {
    let cluster = limited_cluster().await;
    let source = address(6);
    let client = cluster.entry_client().from_address(source);
    let (statuses, _) = spend(&client, "/api/v1/pets/1", ANONYMOUS - 1, ANONYMOUS).await;
    assert_eq!(statuses, vec![401; ANONYMOUS - 1]);
    let base_url = cluster.balancer().base_url();
    assert_eq!(
        handshake_from(source, &base_url).await,
        101,
        "the last request of the budget"
    );
    assert_eq!(handshake_from(source, &base_url).await, 429);
    assert_eq!(
        handshake_from(address(7), &base_url).await,
        101,
        "another address"
    );
}
