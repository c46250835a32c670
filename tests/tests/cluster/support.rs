//! Helpers for the cluster tests: the registry as Redis holds it, a TCP proxy that can play a
//! Redis outage, a small steady load, request bodies the test sends piece by piece, and
//! telling which node served a response that came through the balancer.

mod load;
mod registry;
mod tcp_proxy;

pub use load::{Load, Outcome};
pub use registry::Registry;
pub use tcp_proxy::TcpProxy;

use futures_util::StreamExt as _;
use petmesh_tests::{TestCluster, TestResponse};
use serde_json::json;
use tokio::sync::mpsc;

/// The header the balancer adds to every proxied response: the id of the node that served it.
pub const SERVED_BY: &str = "x-petmesh-node";

/// The password every test user gets.
pub const PASSWORD: &str = "s3cret-passw0rd";

/// The node that served `resp` through the balancer; panics when the header is missing.
#[track_caller]
pub fn served_by(resp: &TestResponse) -> String {
    resp.header(SERVED_BY)
        .unwrap_or_else(|| panic!("no {SERVED_BY} header: {} {}", resp.status, resp.text))
        .to_owned()
}

/// A request body sent in pieces as the test decides (`Transfer-Encoding: chunked`), so a
/// request can be held in flight for as long as the test needs.
pub struct SlowBody {
    /// Feeds the body stream; dropping it ends the body.
    chunks: mpsc::UnboundedSender<Vec<u8>>,
}

impl SlowBody {
    /// The sender and the body to attach to a request.
    pub fn new() -> (Self, reqwest::Body) {
        let (chunks, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
        });
        (Self { chunks }, reqwest::Body::wrap_stream(stream.boxed()))
    }

    /// Sends the next piece.
    pub fn send(&self, chunk: impl Into<Vec<u8>>) {
        self.chunks
            .send(chunk.into())
            .expect("the request is still reading its body");
    }

    /// Ends the body (the last chunk).
    pub fn finish(self) {}
}

/// The JSON of a registration of `username`, split into `parts` pieces of about equal size.
pub fn registration_in_parts(username: &str, parts: usize) -> Vec<Vec<u8>> {
    let body = json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": PASSWORD,
    })
    .to_string()
    .into_bytes();
    let size = body.len().div_ceil(parts);
    body.chunks(size).map(<[u8]>::to_vec).collect()
}

/// The row of node `id` in the balancer's `/admin/nodes`, if listed.
pub async fn admin_row(cluster: &TestCluster, id: &str) -> Option<serde_json::Value> {
    let table = cluster.balancer().admin_nodes().await.unwrap();
    table
        .as_array()?
        .iter()
        .find(|row| row["id"] == id)
        .cloned()
}

/// Attempts the balancer has sent node `id` so far (`requests` in `/admin/nodes`); `None`
/// once it no longer lists the node.
pub async fn attempts_sent(cluster: &TestCluster, id: &str) -> Option<u64> {
    admin_row(cluster, id)
        .await
        .map(|row| row["requests"].as_u64().expect("requests is a count"))
}

/// How many of `n` sequential `GET /health/live` through the balancer each node served.
pub async fn spread(cluster: &TestCluster, n: usize) -> std::collections::BTreeMap<String, usize> {
    let client = cluster.balancer().client();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let resp = client.get("/health/live").await.unwrap();
        resp.assert_status(200);
        *counts.entry(served_by(&resp)).or_default() += 1;
    }
    counts
}

/// Starts the balancer's routing check for every node of `cluster` and waits for it.
pub async fn until_balanced(cluster: &TestCluster) {
    let ids: Vec<&str> = cluster.nodes().iter().map(|n| n.id()).collect();
    cluster
        .balancer()
        .until_routing_to(&ids, petmesh_tests::eventually::patience())
        .await
        .unwrap();
}
