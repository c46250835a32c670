//! The HTTP readiness probe: `GET <path>` on a fresh connection, 2xx = ready.
//!
//! Every probe opens a new TCP connection on purpose: a pooled connection can keep answering
//! while the node's listener is gone or its accept queue is full, and those L4 problems are
//! exactly what a probe must surface. At one probe per node per second that costs nothing.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Probes `GET <path>` with a deadline.
#[derive(Debug, Clone)]
pub struct HttpHealthCheck {
    /// Path requested, e.g. `/health/ready`.
    path: String,
    /// Bound on the whole probe (connect + response headers).
    timeout: Duration,
}

impl HttpHealthCheck {
    /// A probe of `path` bounded by `timeout`.
    pub fn new(path: impl Into<String>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
        }
    }

    /// Ok when the node answered 2xx within the timeout; otherwise what went wrong.
    pub async fn check(&self, host: &str, addr: SocketAddr) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.probe(host, addr)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn probe(&self, host: &str, addr: SocketAddr) -> Result<(), String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = Request::get(self.path.as_str())
            .header(header::HOST, host)
            .header(header::CONNECTION, "close")
            .header(header::USER_AGENT, "petmesh-balancer-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let result = sender.send_request(request).await;
        driver.abort();
        let response = result.map_err(|e| format!("request: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("status {}", response.status()))
        }
    }
}
