//! WebSocket: the Upgrade request is forwarded to a node chosen by `strategy.ws`; when the node
//! answers 101, both upgraded connections are spliced byte for byte until either side closes.
//!
//! The balancer does not parse WebSocket frames: the node speaks the protocol, the balancer
//! only counts tunnels (per node, for least-connections and metrics; per client IP, for the
//! limit). A tunnel holds its node's `Arc<NodeState>`, so its count stays right and the tunnel
//! stays open when the node set changes or the node leaves it.

use std::{net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{closer::Closer, http::NODE_HEADER, prepare_head, Client, ResponseBody};
use crate::{
    backend::{HandshakeInFlight, NodeState, Traffic},
    deadline::Deadline,
    error::{ErrorKind, ProxyError},
    worker::{OpenGuard, Worker},
    ws_limit::WsSlot,
};

/// Whether `request` asks to become a WebSocket.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// Forwards an Upgrade request and, on 101, starts the tunnel.
pub async fn forward(
    worker: &Rc<Worker>,
    mut request: Request<Incoming>,
    client: &Client,
) -> Result<Response<ResponseBody>, ProxyError> {
    if worker.is_stopping() {
        return Err(ProxyError::new(ErrorKind::ShuttingDown));
    }
    // First the handshake's turn: until then it costs a parsed request and a timer, no
    // connection to a node and no Redis round trip.
    let waited = worker
        .state
        .handshakes
        .admit()
        .await
        .map_err(|_| ProxyError::new(ErrorKind::TooManyHandshakes))?;
    if waited {
        worker.state.metrics.ws_handshakes_paced.inc();
    }
    // One Redis round trip per handshake (never per HTTP request): the limit is cluster-wide.
    let slot = worker
        .state
        .ws_limit
        .acquire(client.addr.ip())
        .await
        .map_err(|_| ProxyError::new(ErrorKind::TooManyWebSockets))?;
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    prepare_head(worker, &mut parts, client, true).insert(&mut parts.headers);
    let snapshot = worker.snapshot();
    let order = snapshot.order(&worker.state, Traffic::Ws, &parts.headers, client.addr);
    let Some(&first) = order.first() else {
        return Err(ProxyError::new(ErrorKind::NoHealthyNode));
    };
    snapshot.nodes[first].stats.picks[1].inc();
    let limits = &worker.state.settings.limits;
    let max_attempts = (worker.state.settings.retry.max_attempts as usize).min(order.len());
    let mut last = ProxyError::new(ErrorKind::NoHealthyNode);
    // Only connect failures are retried: nothing reached the node, and a handshake has no body.
    for &index in order.iter().take(max_attempts) {
        let node = snapshot.nodes[index].clone();
        let mut upstream_request = Request::new(Empty::<Bytes>::new());
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = parts.uri.clone();
        *upstream_request.headers_mut() = parts.headers.clone();
        if !upstream_request.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&node.backend.addr) {
                upstream_request.headers_mut().insert(header::HOST, host);
            }
        }
        node.stats.requests.inc();
        let answer = {
            let _waiting = HandshakeInFlight::start(&node.stats);
            handshake(worker, &node, upstream_request, limits).await
        };
        let mut response = match answer {
            Ok(response) => response,
            Err(err) => {
                node.breaker.record(false);
                node.stats.errors.inc();
                let retryable = err.retryable;
                last = err;
                if retryable {
                    continue;
                }
                return Err(last);
            }
        };
        node.breaker
            .record(response.status() != StatusCode::BAD_GATEWAY);
        let mut headers = std::mem::take(response.headers_mut());
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        super::http::remove_hop_by_hop(&mut headers, switching);
        headers.insert(NODE_HEADER, node.id_header.clone());
        let status = response.status();
        if switching {
            node.stats.ws_connections.inc();
            let node_upgrade = hyper::upgrade::on(&mut response);
            let tunnel = Tunnel {
                node,
                send_timeout: Duration::from_millis(limits.ws_send_timeout_ms),
                _slot: slot,
                _open: worker.track(),
                closer: worker.closer.clone(),
            };
            tokio::task::spawn_local(tunnel.run(client_upgrade, node_upgrade, client.addr));
            let mut reply = Response::new(ResponseBody::empty());
            *reply.status_mut() = status;
            *reply.headers_mut() = headers;
            return Ok(reply);
        }
        // The node refused the upgrade (401, 404, ...): pass its answer on.
        let (mut parts, body) = response.into_parts();
        parts.headers = headers;
        return Ok(Response::from_parts(parts, ResponseBody::Incoming(body)));
    }
    Err(last)
}

/// Opens a fresh connection (tunnels are never pooled) and sends the handshake.
async fn handshake(
    worker: &Worker,
    node: &NodeState,
    request: Request<Empty<Bytes>>,
    limits: &crate::config::LimitSettings,
) -> Result<Response<Incoming>, ProxyError> {
    let connect = Duration::from_millis(limits.connect_timeout_ms);
    let stream = super::connect_tcp(worker, node, connect).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| ProxyError::because(ErrorKind::ConnectFailed, err))?;
    tokio::task::spawn_local(async move {
        let _ = connection.with_upgrades().await;
    });
    let timeout = Duration::from_millis(limits.response_timeout_ms);
    match tokio::time::timeout(timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => Err(ProxyError::because(ErrorKind::UpstreamFailed, err)),
        Err(_) => Err(ProxyError::new(ErrorKind::ResponseTimedOut)),
    }
}

/// An open tunnel: counted on its node, its client's IP and its worker until it ends.
struct Tunnel {
    /// The node, kept alive (and counted) even if it leaves the set.
    node: Arc<NodeState>,
    /// `limits.ws_send_timeout_ms`: how long one chunk may wait for its reader.
    send_timeout: Duration,
    /// The client IP's WebSocket slot, released when the tunnel ends.
    _slot: WsSlot,
    /// Keeps the worker's shutdown waiting for this tunnel (up to the grace period).
    _open: OpenGuard,
    /// The worker's closer, which closes the tunnel's sockets once it ends.
    closer: Rc<Closer>,
}

impl Tunnel {
    async fn run(
        self,
        client: hyper::upgrade::OnUpgrade,
        node: hyper::upgrade::OnUpgrade,
        peer: SocketAddr,
    ) {
        match tokio::try_join!(client, node) {
            Ok((client, node)) => {
                let (client, node, up, down) =
                    splice(TokioIo::new(client), TokioIo::new(node), self.send_timeout).await;
                self.closer.close([client.into_inner(), node.into_inner()]);
                tracing::debug!(node = %self.node.id(), client = %peer, up, down, "websocket closed");
            }
            Err(err) => {
                tracing::warn!(node = %self.node.id(), client = %peer, error = %err, "websocket upgrade failed");
            }
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.node.stats.ws_connections.dec();
    }
}

/// Copies bytes both ways until either side closes or stops reading for `send_timeout`, and
/// returns both connections, to be closed (by the worker's [`Closer`]), and the bytes copied
/// (client → node, node → client).
///
/// Not `copy_bidirectional`: that keeps a half-closed connection open until the other side
/// closes as well, but a WebSocket has no use for half-close. After the close handshake the
/// server closes TCP, and a client that never closes its end would pin the tunnel (and its
/// counts) forever. The send timeout covers a reader that stops: a copy blocked writing to it
/// would never see the other side close.
async fn splice<C, N>(client: C, node: N, send_timeout: Duration) -> (C, N, u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut node_read, mut node_write) = tokio::io::split(node);
    let mut up = 0;
    let mut down = 0;
    {
        let upstream = copy_counting(&mut client_read, &mut node_write, &mut up, send_timeout);
        let downstream = copy_counting(&mut node_read, &mut client_write, &mut down, send_timeout);
        tokio::pin!(upstream, downstream);
        tokio::select! {
            _ = &mut upstream => {}
            _ = &mut downstream => {}
        }
    }
    (
        client_read.unsplit(client_write),
        node_read.unsplit(node_write),
        up,
        down,
    )
}

/// `tokio::io::copy` that reports progress in `count` even when cancelled, and gives up when
/// the writer takes more than `send_timeout` to accept one chunk (a coarse deadline of the
/// worker, not a tokio timer per chunk).
async fn copy_counting<R, W>(
    reader: &mut R,
    writer: &mut W,
    count: &mut u64,
    send_timeout: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Not zeroed: a tunnel mostly idles, and zeroing (and so faulting in) 16 KiB per direction
    // for each of thousands of tunnels was a visible part of a reconnect storm's cost. Only the
    // bytes a read fills are touched.
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        let n = match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let sent = Deadline::after(send_timeout)
            .bound(async {
                writer.write_all(&buf[..n]).await?;
                writer.flush().await
            })
            .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        *count += n as u64;
    }
}
