//! Building and running the balancer: bind every listener (so port 0 is resolved before
//! anything is announced), read the node set once, then run the workers, the control plane
//! and the admin API until the caller's shutdown future resolves (a signal in production, a
//! channel in tests).

use std::{
    future::Future,
    net::{IpAddr, SocketAddr, TcpListener},
    sync::Arc,
};

use anyhow::Context as _;
use futures_util::stream::BoxStream;
use petmesh_shared::registry::MembershipEvent;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    admin, background,
    config::Settings,
    discovery::{RedisDiscovery, StaticDiscovery},
    metrics::Metrics,
    spread::Spread,
    state::BalancerState,
    worker,
    ws_limit::ClusterSlots,
};

/// Accept backlog of each proxy listener.
const BACKLOG: i32 = 4096;

/// Where the node set comes from, chosen by the settings.
enum Discovery {
    Static(StaticDiscovery),
    Redis(Box<RedisDiscovery>),
}

/// A balancer that is bound and knows its nodes, ready to serve.
pub struct Application {
    /// Shared state.
    state: Arc<BalancerState>,
    /// One `SO_REUSEPORT` listener per worker, all on the same port.
    listeners: Vec<TcpListener>,
    /// The proxy address actually bound.
    addr: SocketAddr,
    /// The admin listener.
    admin: tokio::net::TcpListener,
    /// The admin address actually bound.
    admin_addr: SocketAddr,
    /// The node source.
    discovery: Discovery,
    /// Membership events, subscribed before the first read.
    events: Option<BoxStream<'static, MembershipEvent>>,
    /// The Redis side of the WebSocket limit and the changes its lease task writes; `None`
    /// with static discovery.
    ws_cluster: Option<(Arc<ClusterSlots>, mpsc::UnboundedReceiver<IpAddr>)>,
}

impl Application {
    /// Binds the proxy listeners (one per worker) and the admin listener, and reads the node
    /// set once (a failed read is logged; the set then fills in as discovery recovers).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let workers = settings.worker_count();
        let wanted = SocketAddr::new(settings.listen.host, settings.listen.port);
        let first = bind_reuseport(wanted).with_context(|| format!("binding {wanted}"))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers {
            listeners.push(bind_reuseport(addr).with_context(|| format!("binding {addr}"))?);
        }
        let admin_wanted = SocketAddr::new(settings.admin.host, settings.admin.port);
        let admin = tokio::net::TcpListener::bind(admin_wanted)
            .await
            .with_context(|| format!("binding the admin API on {admin_wanted}"))?;
        let admin_addr = admin.local_addr()?;

        let backends = settings
            .static_backends()
            .map_err(|e| anyhow::anyhow!("discovery.static_upstreams: {e}"))?;
        let discovery = if backends.is_empty() {
            Discovery::Redis(Box::new(RedisDiscovery::new(
                settings.redis.target()?,
                &settings.cluster.name,
            )))
        } else {
            Discovery::Static(StaticDiscovery::new(backends))
        };
        let metrics = Metrics::new();
        let (ws_cluster, ws_changes) = match &discovery {
            Discovery::Static(_) => (None, None),
            Discovery::Redis(_) => {
                let slots = Arc::new(ClusterSlots::new(
                    settings.redis.target()?,
                    &settings.cluster.name,
                    &settings,
                    metrics.clone(),
                )?);
                let (tx, rx) = mpsc::unbounded_channel();
                (Some((slots.clone(), tx)), Some((slots, rx)))
            }
        };
        let state = Arc::new(BalancerState::new(settings, metrics, ws_cluster));
        if let Some((slots, _)) = &ws_changes {
            // Connected and registered before the first handshake (or logged as an outage).
            slots.renew(&state.ws_limit).await;
        }
        // Subscribe first, then read: an event published in between is then seen twice
        // (harmless) rather than never.
        let events = match &discovery {
            Discovery::Static(d) => {
                let events = background::subscribe(&state, d).await;
                background::refresh(&state, d).await;
                events
            }
            Discovery::Redis(d) => {
                let events = background::subscribe(&state, d.as_ref()).await;
                background::refresh(&state, d.as_ref()).await;
                events
            }
        };
        Ok(Self {
            state,
            listeners,
            addr,
            admin,
            admin_addr,
            discovery,
            events,
            ws_cluster: ws_changes,
        })
    }

    /// The proxy address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests and
    /// WebSocket tunnels finish for up to `shutdown.grace_period_secs`, and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = self.listeners.len();
        let mut finished = Vec::with_capacity(workers);
        let (spread, inboxes) = Spread::new(workers, &self.state.metrics);
        for (index, (listener, inbox)) in self.listeners.into_iter().zip(inboxes).enumerate() {
            let (done_tx, done_rx) = oneshot::channel();
            let state = self.state.clone();
            let stop = stop_rx.clone();
            let seat = worker::Seat {
                index,
                spread: spread.clone(),
                inbox,
            };
            std::thread::Builder::new()
                .name(format!("petmesh-worker-{index}"))
                .spawn(move || {
                    let _ = done_tx.send(worker::run(state, listener, seat, stop));
                })
                .context("starting a worker thread")?;
            finished.push(done_rx);
        }
        let discovery = match self.discovery {
            Discovery::Static(d) => tokio::spawn(background::run_discovery(
                self.state.clone(),
                d,
                self.events,
                stop_rx.clone(),
            )),
            Discovery::Redis(d) => tokio::spawn(background::run_discovery(
                self.state.clone(),
                *d,
                self.events,
                stop_rx.clone(),
            )),
        };
        let health = tokio::spawn(background::run_health(self.state.clone(), stop_rx.clone()));
        let admin = tokio::spawn(admin::run(self.state.clone(), self.admin, stop_rx.clone()));
        // The lease task outlives the workers, so the counts of tunnels closed while they
        // drain are still written; it is stopped once they have all finished.
        let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
        let instance = self
            .ws_cluster
            .as_ref()
            .map(|(slots, _)| slots.instance().to_owned());
        let leases = self.ws_cluster.map(|(slots, changes)| {
            tokio::spawn(slots.run(self.state.ws_limit.clone(), changes, lease_stop_rx))
        });
        tracing::info!(
            addr = %self.addr,
            admin_addr = %self.admin_addr,
            instance = instance.as_deref().unwrap_or("-"),
            workers,
            nodes = self.state.membership.current().len(),
            "listening"
        );

        shutdown.await;
        tracing::info!(
            grace_period_secs = self.state.settings.shutdown.grace_period_secs,
            "shutting down: no new connections, draining in-flight requests and tunnels"
        );
        let _ = stop_tx.send(true);
        let mut failure = None;
        for done in finished {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failure = Some(err),
                Err(_) => failure = Some(anyhow::anyhow!("a worker thread panicked")),
            }
        }
        let _ = lease_stop_tx.send(true);
        for task in [discovery, health, admin].into_iter().chain(leases) {
            let _ = task.await;
        }
        match failure {
            Some(err) => Err(err),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// A non-blocking listener on `addr` with `SO_REUSEPORT`, so each worker can own one and the
/// kernel spreads connections between them.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
