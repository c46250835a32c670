//! A TCP proxy that can be switched off and on, to play an outage of the server behind it
//! without stopping the server (which other tests share) or losing its port.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections to an upstream while up. Going down closes every forwarded
/// connection and makes new ones close at once, which clients see as the server being gone.
pub struct TcpProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// Up or down; the connection tasks watch it. Dropped with the proxy, which closes them.
    up: watch::Sender<bool>,
    /// The accept loop; aborted on drop.
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to `upstream` on a free loopback port, up.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, up_rx) = watch::channel(true);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut up_rx = up_rx.clone();
                if !*up_rx.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = up_rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, accept }
    }

    /// A proxy in front of `cluster`'s Redis, up (nodes given its [`Self::redis_url`] lose
    /// Redis when it goes down).
    ///
    /// Needs a single Redis server: one proxy can't stand for a Redis Cluster, whose clients
    /// follow the members' own addresses. Tests using it are left out of the Redis Cluster
    /// variant (`scripts/test-redis-cluster`).
    pub async fn for_redis(cluster: &petmesh_tests::TestCluster) -> Self {
        assert_eq!(
            cluster.redis_mode(),
            petmesh_tests::RedisMode::Standalone,
            "TcpProxy::for_redis needs a single Redis server"
        );
        let upstream = cluster
            .redis_url()
            .trim_start_matches("redis://")
            .parse()
            .expect("the harness's Redis URL is redis://ip:port");
        Self::start(upstream).await
    }

    /// `redis://<addr>`, for a proxy in front of Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Switches forwarding on or off.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
