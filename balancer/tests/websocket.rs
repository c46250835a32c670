//! WebSocket tunnels: messages both ways, least-connections placement, the per-IP limit, a
//! client that stops reading.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Error as WsError, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::support::{eventually, settings, MockBackend, TestBalancer};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket through the balancer and returns it with the id of the node that greeted.
async fn open(balancer: &TestBalancer) -> (Socket, String) {
    let (mut socket, response) = connect_async(balancer.ws_url("/ws")).await.unwrap();
    let node = response.headers()["x-petmesh-node"]
        .to_str()
        .unwrap()
        .to_owned();
    let greeting = socket.next().await.unwrap().unwrap();
    assert_eq!(greeting, Message::text(format!("hello from {node}")));
    (socket, node)
}

/// Waits until the balancer counts `expected` open tunnels per node (by `/admin/nodes`).
async fn wait_for_counts(balancer: &TestBalancer, expected: &[(&str, i64)]) {
    eventually("websocket counts", || async {
        let nodes = balancer.admin_json("/admin/nodes").await;
        for (id, count) in expected {
            let node = nodes
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == *id)
                .unwrap();
            if node["ws_connections"] != *count {
                return Err(format!("{nodes}"));
            }
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_flow_both_ways_through_the_balancer() {
    let backend = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&backend])).await;

    let (mut socket, node) = open(&balancer).await;
    assert_eq!(node, "a");
    for i in 0..5 {
        socket
            .send(Message::text(format!("ping {i}")))
            .await
            .unwrap();
        let echo = socket.next().await.unwrap().unwrap();
        assert_eq!(echo, Message::text(format!("a: ping {i}")));
    }
    socket.close(None).await.unwrap();
    wait_for_counts(&balancer, &[("a", 0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_websockets_to_the_node_with_fewest() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let balancer = TestBalancer::start(settings(&[&a, &b])).await;

    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(open(&balancer).await);
    }
    let on_a = sockets.iter().filter(|(_, n)| n == "a").count();
    assert_eq!(on_a, 2, "ties alternate");

    // Close both tunnels on `a`: it now has the fewest, so the next two go there.
    let mut kept = Vec::new();
    for (mut socket, node) in sockets {
        if node == "a" {
            socket.close(None).await.unwrap();
        } else {
            kept.push(socket);
        }
    }
    wait_for_counts(&balancer, &[("a", 0), ("b", 2)]).await;
    let (_s1, first) = open(&balancer).await;
    let (_s2, second) = open(&balancer).await;
    assert_eq!((first.as_str(), second.as_str()), ("a", "a"));
    wait_for_counts(&balancer, &[("a", 2), ("b", 2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_websocket_from_one_ip_gets_429() {
    let backend = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&backend])).await;

    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(open(&balancer).await);
    }
    let refused = connect_async(balancer.ws_url("/ws")).await.unwrap_err();
    let WsError::Http(response) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    assert_eq!(response.status(), 429);
    assert_eq!(
        response.headers()["x-petmesh-proxy-error"],
        "too_many_websockets"
    );
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["statusCode"], 429);

    // A slot frees up when a tunnel closes.
    let (mut socket, _) = sockets.pop().unwrap();
    socket.close(None).await.unwrap();
    wait_for_counts(&balancer, &[("a", 9)]).await;
    open(&balancer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_tunnel_after_the_send_timeout() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.limits.ws_send_timeout_ms = 300;
    let balancer = TestBalancer::start(settings).await;
    let (mut socket, node) = open(&balancer).await;
    wait_for_counts(&balancer, &[(&node, 1)]).await;

    // 64 MiB asked for and never read: more than every socket buffer on the way can hold, so
    // the balancer's copy to this client blocks until the send timeout ends the tunnel.
    socket.send(Message::text("flood 1024")).await.unwrap();

    wait_for_counts(&balancer, &[(&node, 0)]).await;
    drop(socket);
}
