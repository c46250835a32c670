//! The request path: select → forward → classify → record, with retries on another node.
//!
//! For every client request:
//! 1. WebSocket upgrades go to [`ws`]; everything else continues here.
//! 2. Limits: a `Content-Length` over `limits.max_body_bytes` is answered 413 at once.
//! 3. Headers are rewritten ([`http`]): hop-by-hop removed, forwarding headers added.
//! 4. The worker's snapshot orders the candidate nodes (strategy, then eligibility).
//! 5. Each attempt takes a pooled connection (or opens one), sends, and waits for the response
//!    headers up to `limits.response_timeout_ms`. The outcome feeds the node's breaker.
//! 6. A connect failure, or a 502/503 before anything went back to the client, is retried on
//!    the next candidate when the request is idempotent (GET, HEAD, OPTIONS or
//!    `Idempotency-Key`), its body can be sent again (none, or never sent), attempts remain
//!    and the retry budget allows.
//! 7. The response streams back with `X-Petmesh-Node`; its connection returns to the pool when
//!    the body has been passed on completely.

pub mod http;
pub mod ws;

use std::{convert::Infallible, net::SocketAddr, rc::Rc, time::Duration};

use ::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use self::http::{BodyDone, NODE_HEADER};
pub use self::http::{Client, RequestBody, ResponseBody};
use crate::{
    backend::{NodeState, Traffic},
    error::{ErrorKind, ProxyError},
    worker::{Snapshot, Worker},
};

/// Serves one client request; never fails (errors become generated responses).
pub async fn handle(
    worker: Rc<Worker>,
    request: Request<Incoming>,
    client: Rc<Client>,
) -> Result<Response<ResponseBody>, Infallible> {
    let result = if ws::is_upgrade(&request) {
        ws::forward(&worker, request, &client).await
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
        ErrorKind::BodyTooLarge | ErrorKind::BadRequest | ErrorKind::TooManyWebSockets => {
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

/// Rewrites the request head for a node: origin-form URI, HTTP/1.1, hop-by-hop headers
/// removed (except a kept upgrade), forwarding headers, and a `Host`.
fn prepare_head(
    worker: &Worker,
    parts: &mut ::http::request::Parts,
    client: &Client,
    keep_upgrade: bool,
) {
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
    http::add_forwarding(&mut parts.headers, client, || worker.next_request_id());
}

async fn forward(
    worker: &Rc<Worker>,
    request: Request<Incoming>,
    client: &Client,
) -> Result<Response<ResponseBody>, ProxyError> {
    let settings = &worker.state.settings;
    if *worker.shutdown.borrow() {
        return Err(ProxyError::new(ErrorKind::ShuttingDown));
    }
    let (mut parts, body) = request.into_parts();
    let max_body = settings.limits.max_body_bytes;
    if body.size_hint().lower() > max_body {
        return Err(ProxyError::new(ErrorKind::BodyTooLarge));
    }
    prepare_head(worker, &mut parts, client, false);
    let snapshot = worker.snapshot();
    let order = snapshot.order(&worker.state, Traffic::Http, &parts.headers, client.addr);
    let Some(&first) = order.first() else {
        return Err(ProxyError::new(ErrorKind::NoHealthyNode));
    };
    snapshot.nodes[first].stats.picks[0].inc();
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(&snapshot.nodes[first].backend.addr) {
            parts.headers.insert(header::HOST, host);
        }
    }

    let body = RequestBody::new(body, max_body);
    let max_attempts = (settings.retry.max_attempts as usize).min(order.len());
    let idempotent = is_idempotent(&parts.method, &parts.headers);
    // A copy of the head to rebuild the request after a 502/503, only when that retry can
    // happen (the body has nothing in it to lose).
    let replay =
        (idempotent && max_attempts > 1 && matches!(body, RequestBody::Empty)).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
    let mut request = Some(Request::from_parts(parts, body));
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
            if !retryable || !(idempotent || request.is_some()) {
                break;
            }
            if request.is_none() {
                request = replay.as_ref().map(|(method, uri, headers)| {
                    let mut rebuilt = Request::new(RequestBody::Empty);
                    *rebuilt.method_mut() = method.clone();
                    *rebuilt.uri_mut() = uri.clone();
                    *rebuilt.headers_mut() = headers.clone();
                    rebuilt
                });
            }
            if request.is_none() {
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
        let req = request.take().expect("a request for every attempt");
        match attempt_once(worker, &snapshot, index, req).await {
            Ok(response) => {
                let status = response.status();
                let retry_status =
                    status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE;
                if retry_status && idempotent && replay.is_some() {
                    tracing::debug!(node = %node.id(), %status, "node refused, trying another");
                    last = Some(Ok(response));
                    continue;
                }
                return Ok(response);
            }
            Err((err, recovered)) => {
                tracing::debug!(node = %node.id(), error = %err, "attempt failed");
                request = recovered;
                // A request that was sent may only be sent again when it is idempotent.
                let err = if request.is_none() && !(idempotent && replay.is_some()) {
                    err.retryable(false)
                } else {
                    err
                };
                last = Some(Err(err));
            }
        }
    }
    last.unwrap_or_else(|| Err(ProxyError::new(ErrorKind::NoHealthyNode)))
}

/// The failure of one attempt, with the request when it was never sent.
type AttemptError = (ProxyError, Option<Request<RequestBody>>);

/// Sends `request` to node `index` once. The node's in-flight count covers the attempt until
/// the response body is done.
async fn attempt_once(
    worker: &Rc<Worker>,
    snapshot: &Rc<Snapshot>,
    index: usize,
    mut request: Request<RequestBody>,
) -> Result<Response<ResponseBody>, AttemptError> {
    let node: &NodeState = &snapshot.nodes[index];
    let limits = &worker.state.settings.limits;
    node.stats.requests.inc();
    node.stats.in_flight.inc();
    let mut in_flight = InFlight {
        snapshot: snapshot.clone(),
        index,
        worker: worker.clone(),
        sender: None,
    };
    // A pooled connection may have been closed by the node meanwhile; hyper hands the request
    // back unsent in that case, and the next try opens a fresh connection.
    let mut pooled = worker.checkout(node.key);
    let (sender, response) = loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => continue,
            },
            None => match connect(
                worker,
                node,
                Duration::from_millis(limits.connect_timeout_ms),
            )
            .await
            {
                Ok(sender) => sender,
                Err(err) => {
                    node.breaker.record(false);
                    node.stats.errors.inc();
                    return Err((err, Some(request)));
                }
            },
        };
        let started = Instant::now();
        let timeout = Duration::from_millis(limits.response_timeout_ms);
        match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
            Ok(Ok(response)) => {
                node.stats.latency.observe(started.elapsed().as_secs_f64());
                break (sender, response);
            }
            Ok(Err(mut err)) => match err.take_message() {
                Some(unsent) if reused => request = unsent,
                unsent => {
                    node.breaker.record(false);
                    node.stats.errors.inc();
                    let error = ProxyError::because(ErrorKind::UpstreamFailed, err.into_error())
                        .retryable(true);
                    return Err((error, unsent));
                }
            },
            Err(_) => {
                node.breaker.record(false);
                node.stats.errors.inc();
                return Err((ProxyError::new(ErrorKind::ResponseTimedOut), None));
            }
        }
    };
    let status = response.status();
    let failed = matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    );
    node.breaker.record(!failed);
    if failed {
        node.stats.errors.inc();
    }
    let (mut parts, body) = response.into_parts();
    http::remove_hop_by_hop(&mut parts.headers, false);
    parts.headers.insert(NODE_HEADER, node.id_header.clone());
    in_flight.sender = Some(sender);
    let body = ResponseBody::upstream(body, Box::new(in_flight));
    Ok(Response::from_parts(parts, body))
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

/// Opens a keep-alive connection to `node`, bounded by `timeout`.
async fn connect(
    worker: &Worker,
    node: &NodeState,
    timeout: Duration,
) -> Result<SendRequest<RequestBody>, ProxyError> {
    let stream = connect_tcp(worker, node, timeout).await?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|err| ProxyError::because(ErrorKind::ConnectFailed, err))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Holds a node's in-flight count (and the connection) until the response body is done.
struct InFlight {
    snapshot: Rc<Snapshot>,
    index: usize,
    worker: Rc<Worker>,
    sender: Option<SendRequest<RequestBody>>,
}

impl BodyDone for InFlight {
    fn done(mut self: Box<Self>, complete: bool) {
        if let (true, Some(sender)) = (complete, self.sender.take()) {
            let key = self.snapshot.nodes[self.index].key;
            self.worker.checkin(key, sender);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.snapshot.nodes[self.index].stats.in_flight.dec();
    }
}
