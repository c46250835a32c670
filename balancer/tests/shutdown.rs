//! Graceful shutdown: in-flight requests finish, tunnels get the grace period, then exit.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::support::{client, eventually, settings, MockBackend, Mode, TestBalancer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_stops() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;
    a.set_mode(Mode::Slow(Duration::from_millis(700)));
    let url = balancer.url("/pets");
    let request = tokio::spawn(async move { client().get(url).send().await });
    eventually("request reached the node", || async {
        (a.requests() == 1)
            .then_some(())
            .ok_or(a.requests().to_string())
    })
    .await;

    let addr = balancer.addr;
    balancer.stop().await.unwrap();

    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_are_closed_when_the_grace_period_ends() {
    let a = MockBackend::start("a").await;
    let mut settings = settings(&[&a]);
    settings.shutdown.grace_period_secs = 1;
    let balancer = TestBalancer::start(settings).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(balancer.ws_url("/ws"))
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();

    let started = Instant::now();
    balancer.stop().await.unwrap();

    assert!(started.elapsed() < Duration::from_secs(5));
    // The tunnel is gone: the client sees the end of the stream (or an error).
    let next = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("socket closed");
    assert!(!matches!(
        next,
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
    ));
}
