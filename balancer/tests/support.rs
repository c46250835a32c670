//! Test support: mock backends, an in-process balancer, a private Redis, and waiting helpers.
//!
//! Mock backends are real HTTP servers on loopback port 0. Each answers with its own id (in
//! the `x-mock-id` header and a JSON echo of the request), does the WebSocket handshake on
//! `/ws` (then echoes messages prefixed with its id), and can be told to fail, to be slow, or
//! to close connections. Dropping one (or calling [`MockBackend::kill`]) closes its listener
//! and every connection, like a killed process.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use petmesh_balancer::{Application, Settings};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

// === waiting ===

/// How long eventual conditions may take: `PETMESH_TEST_PATIENCE_SECS` or 30 s.
pub fn patience() -> Duration {
    static PATIENCE: OnceLock<Duration> = OnceLock::new();
    *PATIENCE.get_or_init(|| {
        std::env::var("PETMESH_TEST_PATIENCE_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Duration::from_secs(30), Duration::from_secs_f64)
    })
}

/// Polls `check` every 20 ms until it returns `Ok`, panicking with the last error after
/// [`patience`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + patience();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not true after {:?}; last: {last}", patience())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Turns on logs when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        petmesh_shared::telemetry::init(petmesh_shared::telemetry::LogFormat::Pretty, "debug");
    }
}

// === mock backends ===

/// How a mock backend answers ordinary requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the echo.
    Ok,
    /// This status with the echo.
    Fail(u16),
    /// 503 naming a shared dependency as down (`x-petmesh-dependency-down: database`), as a
    /// node answers while PostgreSQL is unreachable.
    DependencyDown,
    /// Waits this long, then answers 200.
    Slow(Duration),
    /// Closes the connection without answering.
    Close,
}

#[derive(Debug)]
struct Control {
    id: String,
    mode: Mutex<Mode>,
    ready: AtomicBool,
    requests: AtomicUsize,
    websockets: AtomicUsize,
}

/// A mock node; killed on drop.
#[derive(Debug)]
pub struct MockBackend {
    /// Its id (what `X-Petmesh-Node` should say).
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    control: Arc<Control>,
    kill: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl MockBackend {
    /// Starts a backend with id `id` on a free loopback port.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(id, listener)
    }

    /// Starts a backend with id `id` on `addr`, e.g. where a killed one listened (waits for
    /// the old listener to be gone).
    pub async fn start_at(id: &str, addr: SocketAddr) -> Self {
        let listener = eventually("the address is free again", || async move {
            TcpListener::bind(addr).await.map_err(|e| e.to_string())
        })
        .await;
        Self::serve_on(id, listener)
    }

    fn serve_on(id: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control {
            id: id.to_owned(),
            mode: Mutex::new(Mode::Ok),
            ready: AtomicBool::new(true),
            requests: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
        });
        let (kill, killed) = watch::channel(false);
        let server = tokio::spawn(serve(listener, control.clone(), killed));
        Self {
            id: id.to_owned(),
            addr,
            control,
            kill,
            server,
        }
    }

    /// Changes how ordinary requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.control.mode.lock().unwrap() = mode;
    }

    /// Makes `/health/ready` answer 200 (`true`) or 503.
    pub fn set_ready(&self, ready: bool) {
        self.control.ready.store(ready, Ordering::Relaxed);
    }

    /// Ordinary requests received (health probes not counted).
    pub fn requests(&self) -> usize {
        self.control.requests.load(Ordering::Relaxed)
    }

    /// WebSockets currently open.
    pub fn websockets(&self) -> usize {
        self.control.websockets.load(Ordering::Relaxed)
    }

    /// `id=addr` for `discovery.static_upstreams`.
    pub fn upstream(&self) -> String {
        format!("{}={}", self.id, self.addr)
    }

    /// Closes the listener and every connection at once.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
        self.server.abort();
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(listener: TcpListener, control: Arc<Control>, killed: watch::Receiver<bool>) {
    // Connection tasks live in this set, so aborting the server task closes them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        let killed = killed.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let control = control.clone();
                let killed = killed.clone();
                async move { Ok::<_, hyper::Error>(answer(control, killed, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    control: Arc<Control>,
    killed: watch::Receiver<bool>,
    mut request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if path == "/health/ready" {
        let ready = control.ready.load(Ordering::Relaxed);
        return reply(
            &control,
            if ready { 200 } else { 503 },
            Bytes::from_static(b"{}"),
        );
    }
    control.requests.fetch_add(1, Ordering::Relaxed);
    if path == "/ws" {
        return websocket(control, killed, &mut request);
    }
    if path == "/body" {
        return body_digest(&control, request).await;
    }
    if path == "/small-body" {
        // Like a node with a body limit: 413 as soon as the body passes 1 KiB, the rest unread.
        let limited = http_body_util::Limited::new(request.into_body(), 1024);
        return match limited.collect().await {
            Ok(_) => reply(&control, 200, Bytes::from_static(b"{}")),
            Err(_) => reply(&control, 413, Bytes::from_static(b"{}")),
        };
    }
    let mode = *control.mode.lock().unwrap();
    let status = match mode {
        Mode::Ok => 200,
        Mode::Fail(status) => status,
        Mode::DependencyDown => {
            let mut response = reply(&control, 503, Bytes::from_static(b"{}"));
            response.headers_mut().insert(
                "x-petmesh-dependency-down",
                header::HeaderValue::from_static("database"),
            );
            return response;
        }
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            200
        }
        Mode::Close => {
            // Never answer: the connection task is dropped with the error below.
            return std::future::pending().await;
        }
    };
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let echo = serde_json::json!({
        "id": control.id,
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
    });
    reply(
        &control,
        status,
        Bytes::from(serde_json::to_vec(&echo).unwrap()),
    )
}

/// An order-sensitive digest of `bytes` (FNV-1a), to compare bodies without echoing them.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Answers `/body`: how the request body arrived (framing headers) and its length and digest.
async fn body_digest(control: &Control, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    };
    let content_length = header(header::CONTENT_LENGTH);
    let transfer_encoding = header(header::TRANSFER_ENCODING);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return reply(control, 400, Bytes::from(err.to_string())),
    };
    let echo = serde_json::json!({
        "len": body.len(),
        "digest": digest(&body),
        "content-length": content_length,
        "transfer-encoding": transfer_encoding,
    });
    reply(
        control,
        200,
        Bytes::from(serde_json::to_vec(&echo).unwrap()),
    )
}

fn reply(control: &Control, status: u16, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-mock-id", control.id.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// The server side of a WebSocket handshake; the socket greets with `hello from <id>` and
/// echoes every text message as `<id>: <message>`, except `flood <n>`, which it answers with
/// `n` binary messages of 64 KiB (for a client that does not read them).
fn websocket(
    control: Arc<Control>,
    mut killed: watch::Receiver<bool>,
    request: &mut Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get("sec-websocket-key") else {
        return reply(&control, 400, Bytes::from_static(b"{}"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(request);
    let id = control.id.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        control.websockets.fetch_add(1, Ordering::Relaxed);
        let greeting = format!("hello from {}", control.id);
        if socket.send(Message::text(greeting)).await.is_ok() {
            loop {
                tokio::select! {
                    message = socket.next() => match message {
                        Some(Ok(Message::Text(text))) if text.as_str().starts_with("flood ") => {
                            let count: usize = text.as_str()[6..].parse().unwrap_or(0);
                            for _ in 0..count {
                                if socket.send(Message::binary(vec![0u8; 64 * 1024])).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            let echo = format!("{}: {}", control.id, text.as_str());
                            if socket.send(Message::text(echo)).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                    _ = killed_signal(&mut killed) => break,
                }
            }
        }
        control.websockets.fetch_sub(1, Ordering::Relaxed);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .header("x-mock-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn killed_signal(killed: &mut watch::Receiver<bool>) {
    let _ = killed.wait_for(|k| *k).await;
}

// === raw backends ===

/// What a [`RawBackend`] sends for one request.
#[derive(Debug, Clone)]
pub enum RawReply {
    /// These bytes; the connection stays open for the next request.
    Send(Vec<u8>),
    /// These bytes, then the connection is closed.
    SendAndClose(Vec<u8>),
    /// Nothing: the connection is closed at once.
    Close,
}

/// One request as a [`RawBackend`] read it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Method and target, e.g. `GET /chunked`.
    pub line: String,
    /// The request's position on its connection (1 = first).
    pub nth: usize,
}

/// The answer script of a [`RawBackend`].
type Script = dyn Fn(&RawRequest) -> RawReply + Send + Sync;

/// A node that writes scripted bytes, for framings and misbehaviour an HTTP library would not
/// produce: chunked bodies with extensions and trailers, close-delimited bodies, interim
/// responses, connections closed without an answer. `/health/ready` is always 200 (and not
/// counted); requests are read up to the end of their head plus `Content-Length` bytes.
pub struct RawBackend {
    /// Its id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    closed: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl RawBackend {
    /// Starts a backend answering every request with `script`.
    pub async fn start(
        id: &str,
        script: impl Fn(&RawRequest) -> RawReply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let server = tokio::spawn({
            let (seen, closed) = (seen.clone(), closed.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, closed, script) = (seen.clone(), closed.clone(), script.clone());
                    connections.spawn(async move {
                        if raw_connection(stream, &seen, &*script).await {
                            closed.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Self {
            id: id.to_owned(),
            addr,
            seen,
            closed,
            server,
        }
    }

    /// `id=addr` for `discovery.static_upstreams`.
    pub fn upstream(&self) -> String {
        format!("{}={}", self.id, self.addr)
    }

    /// The requests answered so far (health probes not included).
    pub fn seen(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Connections that carried counted requests (each one's first request has `nth` 1).
    pub fn connections(&self) -> usize {
        self.seen().iter().filter(|r| r.nth == 1).count()
    }

    /// Connections that carried counted requests and are closed now.
    pub fn closed_connections(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves one connection; returns whether it carried a counted request.
async fn raw_connection(
    mut stream: tokio::net::TcpStream,
    seen: &Mutex<Vec<RawRequest>>,
    script: &Script,
) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if matches!(stream.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                return nth > 0;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            if matches!(stream.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                return nth > 0;
            }
        }
        buf.drain(..head_end + length);
        let line = head.lines().next().unwrap_or("");
        let line = line.rsplit_once(' ').map_or(line, |(l, _)| l).to_owned();
        if line.ends_with(" /health/ready") {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
            let _ = stream.write_all(ok).await;
            return nth > 0;
        }
        nth += 1;
        let request = RawRequest { line, nth };
        seen.lock().unwrap().push(request.clone());
        match script(&request) {
            RawReply::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return true;
                }
            }
            RawReply::SendAndClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return true;
            }
            RawReply::Close => return true,
        }
    }
}

// === the balancer ===

/// Settings for a test balancer: the real defaults, then loopback port 0 for both listeners,
/// one worker, fast health checks, and `backends` as static upstreams.
pub fn settings(backends: &[&MockBackend]) -> Settings {
    let mut settings = Settings::load(None, Default::default()).expect("defaults are valid");
    settings.listen.host = [127, 0, 0, 1].into();
    settings.listen.port = 0;
    settings.admin.host = [127, 0, 0, 1].into();
    settings.admin.port = 0;
    settings.workers = 1;
    settings.health.interval_ms = 100;
    settings.health.timeout_ms = 500;
    settings.shutdown.grace_period_secs = 5;
    settings.discovery.static_upstreams = backends
        .iter()
        .map(|b| b.upstream())
        .collect::<Vec<_>>()
        .join(",");
    settings
}

/// A balancer running in this process; stopped (gracefully) on drop.
pub struct TestBalancer {
    /// The proxy address.
    pub addr: SocketAddr,
    /// The admin address.
    pub admin_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestBalancer {
    /// Validates `settings`, builds and runs the balancer.
    pub async fn start(settings: Settings) -> Self {
        init_logs();
        let settings = settings.validate().expect("test settings are valid");
        let app = Application::build(settings).await.expect("balancer builds");
        let (addr, admin_addr) = (app.addr(), app.admin_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://<proxy addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://<proxy addr><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `GET` on the admin API, parsed as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET` on the admin API, as text (e.g. `/metrics`).
    pub async fn admin_text(&self, path: &str) -> String {
        reqwest::get(format!("http://{}{path}", self.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the balancer gracefully and waits until `run_until_stopped` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestBalancer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Asserts that `response` is one the balancer generated: `status` and
/// `x-petmesh-proxy-error: kind`.
pub fn assert_proxy_error(response: &reqwest::Response, status: u16, kind: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["x-petmesh-proxy-error"], kind);
}

/// A client that never reuses a connection across tests and fails fast.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends `n` GETs to `url` one after the other and counts which backend answered each
/// (by `X-Petmesh-Node`).
pub async fn spread(client: &reqwest::Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let node = response.headers()["x-petmesh-node"]
            .to_str()
            .unwrap()
            .to_owned();
        *counts.entry(node).or_insert(0) += 1;
    }
    counts
}

// === Redis ===

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub async fn start() -> Self {
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/lib/deps.sh)");
            let mut server = Self { child, port };
            let deadline = Instant::now() + patience();
            // A lost race for the port makes the server exit: try another port.
            while Instant::now() < deadline && matches!(server.child.try_wait(), Ok(None)) {
                if let Ok(mut conn) = redis::Client::open(server.url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                {
                    let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return server;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the test to write the registry with.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
