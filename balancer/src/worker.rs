//! One event loop per core: a thread with a current-thread tokio runtime, its own
//! `SO_REUSEPORT` listener (connections kept evenly spread over the workers by
//! [`crate::spread`]), its own snapshot of the node set and strategies, its own pool of
//! upstream connections and its own retry budget.
//!
//! Why: on loopback most of a proxy's CPU is kernel time and the rest is easily lost to
//! cross-thread hand-offs (ARCHITECTURE.md, "What the balancer's speed depends on"). Keeping a
//! client connection, the upstream connection serving it and all per-request bookkeeping on one
//! thread means no locks and no wake-ups of other cores per request; the only shared writes are
//! a few relaxed atomic counters.
//!
//! Shutdown (per worker, driven by the `shutdown` watch):
//! 1. stop accepting (the listener is dropped; the kernel spreads new connections over the
//!    other workers' listeners until they close theirs too);
//! 2. ask every connection to finish its current request and close (`graceful_shutdown`);
//! 3. wait for connections and WebSocket tunnels to end, up to the grace period;
//! 4. return, which drops the runtime and with it whatever is still open.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    future::Future as _,
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use http::HeaderValue;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use crate::{
    backend::{NodeState, Traffic},
    deadline::{self, WorkerTimer},
    proxy::{self, closer::Closer, upstream::Connection},
    retry::RetryBudget,
    selection::{self, BackendSelection, PickContext},
    spread::{Handoff, Spread},
    state::{BalancerState, ConnectionSlot},
};

/// Idle upstream connections kept per node and worker.
const MAX_IDLE_PER_NODE: usize = 512;

/// One worker's view of the node set, rebuilt when the membership generation changes.
pub struct Snapshot {
    /// The membership generation this was built from.
    generation: u64,
    /// The nodes, in the order the strategies index them.
    pub nodes: Arc<[Arc<NodeState>]>,
    /// Strategy for HTTP requests.
    http: Box<dyn BackendSelection>,
    /// Strategy for WebSocket upgrades.
    ws: Box<dyn BackendSelection>,
}

/// A worker: everything one event loop owns. Lives in an `Rc` on its own thread.
pub struct Worker {
    /// Shared state (settings, membership, metrics, limits).
    pub state: Arc<BalancerState>,
    /// The current snapshot; replaced, never mutated.
    snapshot: RefCell<Rc<Snapshot>>,
    /// Idle keep-alive connections per node ([`NodeState::key`]).
    pool: RefCell<HashMap<u64, Vec<Connection>, BuildHasherDefault<KeyHasher>>>,
    /// This worker's retry budget.
    pub budget: RefCell<RetryBudget>,
    /// Random per-worker prefix of generated request ids.
    id_prefix: u64,
    /// Request ids generated so far.
    id_counter: Cell<u64>,
    /// Open client connections and WebSocket tunnels of this worker (drained on shutdown).
    open: Cell<usize>,
    /// Woken whenever `open` drops to zero.
    idle: tokio::sync::Notify,
    /// Shutdown has begun on this worker: connections finish their current request and close.
    stopping: Cell<bool>,
    /// Wakes the client connections when `stopping` turns true.
    stop: tokio::sync::Notify,
    /// Closes the sockets of ended tunnels, a few at a time.
    pub closer: Rc<Closer>,
}

// === impl Worker ===

impl Worker {
    /// A worker over `state`, one of `workers`.
    pub fn new(state: Arc<BalancerState>, workers: usize) -> Self {
        let retry = &state.settings.retry;
        let budget = RetryBudget::new(
            retry.budget_ratio,
            f64::from(retry.min_per_second) / workers as f64,
            Instant::now(),
        );
        let snapshot = build_snapshot(&state);
        Self {
            snapshot: RefCell::new(Rc::new(snapshot)),
            pool: RefCell::new(HashMap::default()),
            budget: RefCell::new(budget),
            id_prefix: rand::random(),
            id_counter: Cell::new(0),
            open: Cell::new(0),
            idle: tokio::sync::Notify::new(),
            stopping: Cell::new(false),
            stop: tokio::sync::Notify::new(),
            closer: Rc::default(),
            state,
        }
    }

    /// Whether shutdown has begun on this worker (no new requests are taken).
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// The current snapshot, rebuilt first if the membership changed (one atomic load when not).
    pub fn snapshot(&self) -> Rc<Snapshot> {
        let generation = self.state.membership.generation();
        if self.snapshot.borrow().generation != generation {
            *self.snapshot.borrow_mut() = Rc::new(build_snapshot(&self.state));
        }
        self.snapshot.borrow().clone()
    }

    /// A fresh request id: per-worker random prefix plus a counter, no syscall per request.
    pub fn next_request_id(&self) -> RequestId {
        let n = self.id_counter.get().wrapping_add(1);
        self.id_counter.set(n);
        RequestId::new(self.id_prefix, n)
    }

    /// An idle pooled connection to node `key` that can still carry a request; the most
    /// recently used first (its socket is the likeliest to be warm and open).
    pub fn checkout(&self, key: u64) -> Option<Connection> {
        let mut pool = self.pool.borrow_mut();
        let idle = pool.get_mut(&key)?;
        while let Some(mut conn) = idle.pop() {
            if conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn checkin(&self, key: u64, conn: Connection) {
        if self.stopping.get() {
            return;
        }
        let mut pool = self.pool.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_NODE {
            idle.push(conn);
        }
    }

    /// Marks one more connection or tunnel open; the guard closes it again.
    pub fn track(self: &Rc<Self>) -> OpenGuard {
        self.open.set(self.open.get() + 1);
        OpenGuard {
            worker: self.clone(),
        }
    }

    /// Drops pooled connections to nodes that are no longer in the set.
    fn prune_pool(&self, snapshot: &Snapshot) {
        self.pool
            .borrow_mut()
            .retain(|key, _| snapshot.nodes.iter().any(|n| n.key == *key));
    }
}

/// Hashes node keys (small distinct integers, not attacker-chosen) with one multiplication
/// instead of SipHash: the pool is looked up twice per request.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing spreads sequential keys over the high bits the table probes with.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// Keeps a connection or tunnel counted as open until dropped.
pub struct OpenGuard {
    worker: Rc<Worker>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let open = self.worker.open.get() - 1;
        self.worker.open.set(open);
        if open == 0 {
            self.worker.idle.notify_waiters();
        }
    }
}

/// A generated `X-Request-Id`: 32 lower-case hex digits, kept on the stack (written into the
/// request head, or made a header value for a WebSocket handshake).
#[derive(Debug, Clone, Copy)]
pub struct RequestId([u8; 32]);

impl RequestId {
    /// The id of request `counter` of the worker with id prefix `prefix`.
    pub fn new(prefix: u64, counter: u64) -> Self {
        let mut id = [0u8; 32];
        hex(prefix, &mut id[..16]);
        hex(counter, &mut id[16..]);
        Self(id)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as a header value.
    pub fn to_header_value(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).expect("hex is a valid header value")
    }
}

/// Writes `value` as 16 lower-case hex digits.
fn hex(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate().take(16) {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn build_snapshot(state: &BalancerState) -> Snapshot {
    let generation = state.membership.generation();
    let nodes = state.membership.current();
    let strategy = &state.settings.strategy;
    Snapshot {
        generation,
        http: selection::build(strategy.http, &nodes, strategy),
        ws: selection::build(strategy.ws, &nodes, strategy),
        nodes,
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// The nodes to try for one request, best first: the strategy's order, without draining,
    /// unhealthy and breaker-open nodes. When fewer than `panic_threshold` of the non-draining
    /// nodes are eligible, health is ignored (panic mode) so the survivors aren't flattened.
    pub fn order(
        &self,
        state: &BalancerState,
        traffic: Traffic,
        headers: &http::HeaderMap,
        client: SocketAddr,
    ) -> Vec<usize> {
        let strategy = match traffic {
            Traffic::Http => &self.http,
            Traffic::Ws => &self.ws,
        };
        let key = strategy.needs_key().then(|| {
            state
                .settings
                .strategy
                .hash_key
                .extract(headers, client.ip())
        });
        let mut all = Vec::with_capacity(self.nodes.len());
        strategy.candidates(
            &PickContext {
                nodes: &self.nodes,
                traffic,
                key: key.as_deref(),
            },
            &mut all,
        );
        let enabled = all
            .iter()
            .filter(|&&i| !self.nodes[i].is_draining())
            .count();
        let eligible = all.iter().filter(|&&i| self.nodes[i].is_eligible()).count();
        if (eligible as f64) < state.settings.panic_threshold * enabled as f64 {
            all.retain(|&i| !self.nodes[i].is_draining());
        } else {
            all.retain(|&i| self.nodes[i].is_eligible());
        }
        all
    }
}

// === serving ===

/// Where a worker stands among the others: its index, the shared [`Spread`], and its inbox of
/// connections handed over by other workers.
pub struct Seat {
    /// This worker's index.
    pub index: usize,
    /// Every worker's load and inbox.
    pub spread: Arc<Spread>,
    /// Connections other workers accepted for this one.
    pub inbox: mpsc::UnboundedReceiver<Handoff>,
}

/// Runs one worker on the current thread until shutdown completes.
pub fn run(
    state: Arc<BalancerState>,
    listener: std::net::TcpListener,
    seat: Seat,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let limits = &state.settings.limits;
        let shortest = limits
            .header_read_timeout_ms
            .min(limits.response_timeout_ms)
            .min(limits.ws_send_timeout_ms);
        let tick = deadline::tick_for(Duration::from_millis(shortest));
        tokio::task::spawn_local(deadline::run_ticker(tick));
        let listener = TcpListener::from_std(listener)?;
        let worker = Rc::new(Worker::new(state, seat.spread.workers()));
        let closer = worker.closer.clone();
        tokio::task::spawn_local(async move { closer.run().await });
        serve(worker, listener, seat, shutdown).await;
        anyhow::Ok(())
    })
}

/// Accepts (and takes handed-over connections) until `shutdown`, then drains.
async fn serve(
    worker: Rc<Worker>,
    listener: TcpListener,
    mut seat: Seat,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = &worker.state.settings.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(WorkerTimer)
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        // Bounds the request head; hyper answers 431 beyond. (Its header-count limit, 100,
        // stays at the default: a custom count moves the parser's array to the heap, −5 %.)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true)
        .writev(false);
    let builder = Rc::new(builder);
    let mut generation = worker.snapshot().generation;
    let start = |stream: tokio::net::TcpStream, peer: SocketAddr, slot: ConnectionSlot| {
        let _ = stream.set_nodelay(true);
        let guards = (worker.track(), seat.spread.serve(seat.index), slot);
        tokio::task::spawn_local(serve_connection(
            worker.clone(),
            builder.clone(),
            stream,
            peer,
            guards,
        ));
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(slot) = worker.state.admit_connection() else {
                    continue;
                };
                let snapshot = worker.snapshot();
                if snapshot.generation != generation {
                    generation = snapshot.generation;
                    worker.prune_pool(&snapshot);
                }
                let target = seat.spread.target(seat.index);
                if target == seat.index {
                    start(stream, peer, slot);
                    continue;
                }
                let Ok(stream) = stream.into_std() else { continue };
                if let Err(back) = seat.spread.hand_over(target, Handoff { stream, peer, slot }) {
                    if let Ok(stream) = tokio::net::TcpStream::from_std(back.stream) {
                        start(stream, back.peer, back.slot);
                    }
                }
            }
            Some(handoff) = seat.inbox.recv() => {
                if let Ok(stream) = tokio::net::TcpStream::from_std(handoff.stream) {
                    start(stream, handoff.peer, handoff.slot);
                }
            }
            _ = crate::state::stopped(&mut shutdown) => break,
        }
    }
    // Connections handed over but not started yet are closed with the inbox.
    seat.inbox.close();
    worker.stopping.set(true);
    worker.stop.notify_waiters();
    drop(listener);
    worker.pool.borrow_mut().clear();
    let grace = worker.state.settings.grace_period();
    let drained = async {
        while worker.open.get() > 0 {
            let idle = worker.idle.notified();
            if worker.open.get() == 0 {
                break;
            }
            idle.await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            open = worker.open.get(),
            "grace period over: closing remaining connections and tunnels"
        );
    }
}

async fn serve_connection<G>(
    worker: Rc<Worker>,
    builder: Rc<http1::Builder>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    _guards: G,
) {
    let service_worker = worker.clone();
    let client = Rc::new(proxy::Client::new(peer));
    let service =
        service_fn(move |request| proxy::handle(service_worker.clone(), request, client.clone()));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    // The stop signal is polled alongside the connection on every wake-up, so it is a flag
    // check: the notification only registers this task's waker, once.
    let notified = worker.stop.notified();
    tokio::pin!(notified);
    let mut registered = false;
    let stopped = std::future::poll_fn(|cx| {
        if worker.stopping.get() {
            return Poll::Ready(());
        }
        if !registered {
            registered = true;
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    });
    tokio::select! {
        biased;
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, client = %peer, "client connection ended with an error");
            }
            return;
        }
        () = stopped => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
