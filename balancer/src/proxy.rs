//! The request path: select → forward → classify → record, with retries on another node.
//!
//! For every client request:
//! 1. WebSocket upgrades go to [`ws`]; everything else continues here.
//! 2. Limits: a `Content-Length` over `limits.max_body_bytes` is answered 413 at once.
//! 3. Headers are rewritten ([`http`]): hop-by-hop removed, forwarding headers added.
//! 4. The worker's snapshot orders the candidate nodes (strategy, then eligibility).
//! 5. Each attempt takes a pooled connection (or opens one), sends, and waits for the response
//!    headers up to `limits.response_timeout_ms` ([`upstream`], on this task). The outcome
//!    feeds the node's breaker; a pooled connection the node had closed while idle is replaced
//!    without counting against it.
//! 6. A connect failure, or a 502/503 before anything went back to the client, is retried on
//!    the next candidate (not a 503 naming a shared dependency as down: every node would
//!    answer the same) when the request is idempotent (GET, HEAD, OPTIONS or
//!    `Idempotency-Key`), its body can be sent again (none, or never sent), attempts remain
//!    and the retry budget allows.
//! 7. The response streams back with `X-Petmesh-Node`; its connection returns to the pool when
//!    the body has been passed on completely.
//! 8. If the client's body was not read to its end (a 413, a node's early answer), the rest
//!    is discarded within bounds so that the client can read the answer ([`linger`]).

pub mod closer;
pub mod http;
pub mod linger;
pub mod upstream;
pub mod ws;

use std::{convert::Infallible, net::SocketAddr, rc::Rc, time::Duration};

use ::http::{
    header, request::Parts, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri,
    Version,
};
use http_body::Body as _;
use hyper::body::Incoming;
use petmesh_shared::error_body::DEPENDENCY_DOWN_HEADER;
use tokio::{net::TcpStream, time::Instant};

pub use self::http::{Client, RequestBody, ResponseBody};
use self::http::{Forwarding, NODE_HEADER};
use self::upstream::{Connection, StartedBody, UpstreamBody};
use crate::{
    backend::{NodeState, Traffic},
    deadline::Deadline,
    error::{ErrorKind, ProxyError, Side},
    worker::{Snapshot, Worker},
};

/// Serves one client request; never fails (errors become generated responses).
pub async fn handle(
    worker: Rc<Worker>,
    request: Request<Incoming>,
    client: Rc<Client>,
) -> Result<Response<ResponseBody>, Infallible> {
    let result = if ws::is_upgrade(&request) {
        // Boxed: upgrades are rare, and inline their state would make every request's future
        // (moved into place per request) bigger.
        Box::pin(ws::forward(&worker, request, &client)).await
    } else {
        forward(&worker, request, &client).await
    };
    Ok(result.unwrap_or_else(|err| error_response(&worker, err, client.addr)))
}

/// Logs and counts a generated error, and builds its response.
fn error_response(worker: &Worker, err: ProxyError, client: SocketAddr) -> Response<ResponseBody> {
    worker
        .state
        .metrics
        .proxy_errors
        .with_label_values(&[err.kind.as_str()])
        .inc();
    match err.kind {
        ErrorKind::BodyTooLarge
        | ErrorKind::BadRequest
        | ErrorKind::TooManyWebSockets
        | ErrorKind::TooManyHandshakes => {
            tracing::debug!(error = %err, client = %client, "request refused");
        }
        _ => tracing::warn!(error = %err, client = %client, "request failed"),
    }
    err.to_response()
}

/// Whether a request may be sent twice.
fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key("idempotency-key")
}

/// Rewrites the request head for a node (origin-form URI, HTTP/1.1, hop-by-hop headers
/// removed except a kept upgrade, a `Host`) and says what it must tell the node about the
/// client.
fn prepare_head<'c>(
    worker: &Worker,
    parts: &mut Parts,
    client: &'c Client,
    keep_upgrade: bool,
) -> Forwarding<'c> {
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if !parts.headers.contains_key(header::HOST) {
            if let Some(authority) = parts.uri.authority() {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, host);
                }
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    http::remove_hop_by_hop(&mut parts.headers, keep_upgrade);
    Forwarding {
        client,
        request_id: (!parts.headers.contains_key(http::REQUEST_ID))
            .then(|| worker.next_request_id()),
    }
}

/// Forwards an HTTP request (or answers it with a generated error). When the answer is ready
/// before the client's body was read to its end (a 413, a node's early answer, a failure in
/// the middle of the upload), the rest of the body is discarded by a lingering close, so that
/// a client still sending can read the answer; the answer then says `Connection: close`.
///
/// One function with one exit, and the answer passed through untouched when the body was
/// read: a wrapper future around the sending part moved the request head and the response
/// once more per request (+1 % instructions per request, `BENCH_INSTRUCTIONS=1
/// scripts/bench-balancer`).
async fn forward(
    worker: &Rc<Worker>,
    request: Request<Incoming>,
    client: &Client,
) -> Result<Response<ResponseBody>, ProxyError> {
    let settings = &worker.state.settings;
    let (mut parts, body) = request.into_parts();
    let max_body = settings.limits.max_body_bytes;
    let declared_too_large = body.size_hint().lower() > max_body;
    // The head is only borrowed by each attempt, so a retry sends it again as it is; the body
    // can go again when there is none or when it was never sent.
    let mut body = RequestBody::new(body, max_body);
    let result: Result<Response<ResponseBody>, ProxyError> = 'answer: {
        if worker.is_stopping() {
            break 'answer Err(ProxyError::new(ErrorKind::ShuttingDown));
        }
        if declared_too_large {
            break 'answer Err(ProxyError::new(ErrorKind::BodyTooLarge));
        }
        let forwarding = prepare_head(worker, &mut parts, client, false);
        let snapshot = worker.snapshot();
        let order = snapshot.order(&worker.state, Traffic::Http, &parts.headers, client.addr);
        let Some(&first) = order.first() else {
            break 'answer Err(ProxyError::new(ErrorKind::NoHealthyNode));
        };
        snapshot.nodes[first].stats.picks[0].inc();
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&snapshot.nodes[first].backend.addr) {
                parts.headers.insert(header::HOST, host);
            }
        }

        let max_attempts = (settings.retry.max_attempts as usize).min(order.len());
        let idempotent = is_idempotent(&parts.method, &parts.headers);
        worker
            .budget
            .borrow_mut()
            .deposit(std::time::Instant::now());

        let mut last: Option<Result<Response<ResponseBody>, ProxyError>> = None;
        for (attempt, &index) in order.iter().take(max_attempts).enumerate() {
            if attempt > 0 {
                let retryable = match &last {
                    Some(Err(err)) => err.retryable,
                    Some(Ok(_)) => true,
                    None => false,
                };
                if !retryable {
                    break;
                }
                if !worker
                    .budget
                    .borrow_mut()
                    .try_withdraw(std::time::Instant::now())
                {
                    worker.state.metrics.retries_budget_exhausted.inc();
                    break;
                }
                worker.state.metrics.retries.inc();
            }
            let node = &snapshot.nodes[index];
            let request = Outgoing {
                head: &parts,
                forwarding: &forwarding,
                idempotent,
            };
            match attempt_once(worker, &snapshot, index, &request, &mut body).await {
                Ok(response) => {
                    let status = response.status();
                    let retry_status = status == StatusCode::BAD_GATEWAY
                        || (status == StatusCode::SERVICE_UNAVAILABLE
                            && !dependency_down(response.headers()));
                    if retry_status && idempotent && body.is_empty() {
                        tracing::debug!(node = %node.id(), %status, "node refused, trying another");
                        last = Some(Ok(response));
                        continue;
                    }
                    if !body.is_unread() {
                        // The usual case, straight into the return slot.
                        return Ok(response);
                    }
                    break 'answer Ok(response);
                }
                Err(err) => {
                    tracing::debug!(node = %node.id(), error = %err, "attempt failed");
                    last = Some(Err(err));
                }
            }
        }
        last.unwrap_or_else(|| Err(ProxyError::new(ErrorKind::NoHealthyNode)))
    };
    let Some(unread) = body.into_unread() else {
        return result;
    };
    linger::spawn(unread);
    let mut response = result.unwrap_or_else(|err| error_response(worker, err, client.addr));
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// Whether a node's 503 says a dependency every node shares (PostgreSQL, Redis) is down, so
/// another node would answer the same: such a 503 is passed on at once, not retried.
fn dependency_down(headers: &HeaderMap) -> bool {
    headers.contains_key(DEPENDENCY_DOWN_HEADER)
}

/// What every attempt of a request sends.
struct Outgoing<'a> {
    head: &'a Parts,
    forwarding: &'a Forwarding<'a>,
    idempotent: bool,
}

/// Sends the request to node `index` once, over a pooled connection or a new one. The node's
/// in-flight count covers the attempt until the response body is done. A failed attempt is
/// retryable when nothing was sent, or when the request is idempotent without a body.
async fn attempt_once(
    worker: &Rc<Worker>,
    snapshot: &Rc<Snapshot>,
    index: usize,
    request: &Outgoing<'_>,
    body: &mut RequestBody,
) -> Result<Response<ResponseBody>, ProxyError> {
    let node: &NodeState = &snapshot.nodes[index];
    let limits = &worker.state.settings.limits;
    node.stats.requests.inc();
    node.stats.in_flight.inc();
    let in_flight = InFlight {
        snapshot: snapshot.clone(),
        index,
        worker: worker.clone(),
    };
    let replayable = request.idempotent && body.is_empty();
    let timeout = Duration::from_millis(limits.response_timeout_ms);
    let mut pooled = worker.checkout(node.key);
    let (conn, response) = loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => match connect_tcp(
                worker,
                node,
                Duration::from_millis(limits.connect_timeout_ms),
            )
            .await
            {
                Ok(stream) => Connection::new(stream),
                Err(err) => {
                    node.breaker.record(false);
                    node.stats.errors.inc();
                    return Err(err);
                }
            },
        };
        let started = Instant::now();
        let exchange = conn.exchange(request.head, request.forwarding, body);
        match Deadline::after(timeout).bound(exchange).await {
            Ok(Ok(response)) => {
                node.stats.latency.observe(started.elapsed().as_secs_f64());
                break (conn, response);
            }
            Ok(Err(failed)) => {
                // A pooled connection the node closed while it sat idle: says nothing about
                // the node, and what it could not have processed goes again on a new one.
                if reused && failed.closed_early && (!failed.sent || replayable) {
                    continue;
                }
                if failed.error.side == Side::Upstream {
                    node.breaker.record(false);
                    node.stats.errors.inc();
                }
                let retryable = failed.error.side == Side::Upstream && (!failed.sent || replayable);
                return Err(failed.error.retryable(retryable));
            }
            Err(_) => {
                node.breaker.record(false);
                node.stats.errors.inc();
                return Err(ProxyError::new(ErrorKind::ResponseTimedOut));
            }
        }
    };
    let status = response.status;
    let failed = matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    );
    // A node answering that a shared dependency is down is working: opening its breaker
    // (and soon every node's) would refuse the requests it can still serve from caches.
    node.breaker
        .record(!failed || dependency_down(&response.headers));
    if failed {
        node.stats.errors.inc();
    }
    let body = match UpstreamBody::start(conn, &response, in_flight) {
        StartedBody::Complete(bytes) => ResponseBody::Full(bytes),
        StartedBody::Streaming(body) => ResponseBody::Upstream(body),
    };
    let mut headers = response.headers;
    headers.insert(NODE_HEADER, node.id_header.clone());
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    Ok(reply)
}

/// Opens a TCP connection to `node`, bounded by `timeout`. A refused, unreachable or
/// timed-out connect marks the node unhealthy at once (see [`crate::health`] for why); a
/// failure that says nothing about the node (no local port left) does not.
pub(crate) async fn connect_tcp(
    worker: &Worker,
    node: &NodeState,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let err = match tokio::time::timeout(timeout, TcpStream::connect(node.sock_addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
        Ok(Err(err)) => {
            let local = matches!(
                err.kind(),
                std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::AddrInUse
            );
            if !local {
                node.mark_unreachable(&worker.state.metrics, &err);
            }
            ProxyError::because(ErrorKind::ConnectFailed, err)
        }
        Err(_) => {
            node.mark_unreachable(&worker.state.metrics, &"connect timed out");
            ProxyError::new(ErrorKind::ConnectTimedOut)
        }
    };
    Err(err)
}

/// Holds a node's in-flight count until the response body is done, then hands the connection
/// back to the worker's pool when it can carry another request.
pub struct InFlight {
    snapshot: Rc<Snapshot>,
    index: usize,
    worker: Rc<Worker>,
}

impl InFlight {
    /// The exchange is over; `reusable` is its connection when that can be pooled.
    pub fn release(self, reusable: Option<Connection>) {
        if let Some(conn) = reusable {
            self.worker
                .checkin(self.snapshot.nodes[self.index].key, conn);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.snapshot.nodes[self.index].stats.in_flight.dec();
    }
}
