//! Building and running the node: pools, migrations, the bootstrap admin, the listener, and a
//! graceful shutdown driven by a future the caller supplies (a signal in production, a channel
//! in tests).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use poem::{
    listener::{Acceptor, TcpAcceptor},
    Server,
};
use secrecy::ExposeSecret;

use crate::{
    api,
    config::{OutboxSettings, Settings},
    error::ApiError,
    hardening::Hardening,
    jobs::worker::Workers,
    limits::Limits,
    membership::{Membership, Registration},
    outbox::relay::Relay,
    state::AppState,
    users,
};

/// The node's listener with `TCP_NODELAY` on every accepted connection. poem leaves Nagle's
/// algorithm on, and with it a WebSocket that writes small frames (a response, then events)
/// waits for the client's delayed ACK: up to 40 ms per frame on Linux.
pub struct NoDelay(TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<poem::web::LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> std::io::Result<(
        Self::Io,
        poem::web::LocalAddr,
        poem::web::RemoteAddr,
        poem::http::uri::Scheme,
    )> {
        let accepted = self.0.accept().await?;
        // Best effort: a socket that refuses the option still works, only slower.
        let _ = accepted.0.set_nodelay(true);
        Ok(accepted)
    }
}

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A node that is bound and ready to serve.
pub struct Application {
    /// The bound listener (port 0 resolved).
    acceptor: NoDelay,
    /// The address actually bound.
    addr: SocketAddr,
    /// Shared handler state; kept to flip readiness on shutdown.
    state: AppState,
    /// Request limits from the settings.
    limits: Limits,
    /// Security headers, header limits and CORS from the settings.
    hardening: Hardening,
    /// How long in-flight requests may take once shutdown begins.
    grace_period: Duration,
    /// How long the node keeps accepting after announcing `draining`.
    drain_delay: Duration,
    /// This node's registry entry, written from the moment the node serves until it has
    /// drained.
    registration: Registration,
    /// The outbox relay's settings.
    outbox: OutboxSettings,
}

impl Application {
    /// Connects (lazily) to PostgreSQL and Redis, applies migrations when configured, creates the
    /// bootstrap admin when configured, and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let db = settings
            .database
            .lazy_pool()
            .context("database.url is not a valid PostgreSQL URL")?;
        let redis = settings
            .redis
            .connect()
            .context("redis.url is not a valid Redis URL")?;
        if settings.database.migrate_on_start {
            MIGRATOR.run(&db).await.context("applying migrations")?;
        }
        if let Some(password) = &settings.bootstrap.admin_password {
            bootstrap_admin(&db, settings, password.expose_secret()).await?;
        }
        crate::auth::password::warm_up();
        let state = AppState::new(settings, db, redis)?;
        let listener = tokio::net::TcpListener::bind((settings.server.host, settings.server.port))
            .await
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let acceptor = NoDelay(TcpAcceptor::from_tokio(listener)?);
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("listener has no socket address")?;
        let registration =
            Registration::new(settings, &state, settings.cluster.advertised_addr(addr));
        Ok(Self {
            acceptor,
            addr,
            state,
            limits: Limits {
                body_limit_bytes: settings.server.body_limit_bytes,
                upload_limit_bytes: settings.pets.max_image_bytes
                    + crate::limits::UPLOAD_FRAMING_BYTES,
                request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
            },
            hardening: Hardening::new(&settings.server),
            grace_period: Duration::from_secs(settings.server.grace_period_secs),
            drain_delay: Duration::from_millis(settings.server.drain_delay_ms),
            registration,
            outbox: settings.outbox.clone(),
        })
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers in the cluster and serves until `shutdown` resolves, then drains:
    /// 1. readiness turns 503 and the registry entry turns `draining` (announced at once, so
    ///    balancers stop sending new work); then `server.drain_delay_ms` passes;
    /// 2. the listener closes and in-flight requests finish, for at most the grace period;
    /// 3. WebSocket clients get `system:reconnect` and close 1012, so they reconnect elsewhere
    ///    (through the balancer) and resume from their offsets;
    /// 4. the outbox relay relays what the last requests wrote and gives up its topics' leases
    ///    (another node takes them over at its next poll), the entry is deleted and `left` announced;
    /// 5. this returns `Ok`, and `main` exits 0.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tracing::info!(
            addr = %self.addr,
            node_id = %self.state.node_id,
            http_addr = %self.registration.info().http_addr,
            "listening"
        );
        let mut membership = Membership::spawn(self.registration);
        // Payment workers stop claiming as soon as draining starts and finish the job in hand.
        let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
        let workers = Workers::new(self.state.clone()).spawn(workers_stopped);
        let connections = self.state.hub.clone();
        let feed = tokio::spawn(self.state.hub.clone().run());
        let monitor = tokio::spawn(crate::monitor::run(self.state.clone()));
        // The relay outlives the HTTP server, so events of the last requests still go out
        // from here; then it hands its topics over.
        let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(Relay::new(&self.state, self.outbox).run(relay_stopped));
        let metrics = std::sync::Arc::clone(&self.state.metrics);
        let state = self.state.clone();
        let drain_delay = self.drain_delay;
        let draining = &mut membership;
        let signal = async move {
            shutdown.await;
            // 1.
            state.start_draining();
            let _ = stop_workers.send(true);
            draining.drain().await;
            tokio::time::sleep(drain_delay).await;
            // 3. runs alongside 2: poem waits for every connection, upgraded ones included, so
            // WebSockets must be asked to close as the listener closes, not after.
            let told = state.hub.close_all_for_restart();
            tracing::info!(
                websockets = told,
                "shutting down: draining in-flight requests"
            );
        };
        let app = api::app(self.state, self.limits, self.hardening);
        // 2.
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, signal, Some(self.grace_period))
            .await;
        for worker in workers {
            // A worker still busy after the grace period loses its lease; another node retries.
            let _ = tokio::time::timeout(self.grace_period, worker).await;
        }
        let left = connections.wait_closed(self.grace_period).await;
        if left > 0 {
            tracing::warn!(
                websockets = left,
                "grace period elapsed with WebSockets still open"
            );
        }
        let _ = stop_relay.send(true);
        let _ = tokio::time::timeout(self.grace_period, relay).await;
        feed.abort();
        monitor.abort();
        // 4.
        membership.leave().await;
        served.context("serving HTTP")?;
        // Requests cut off by the grace period never reach the gauge's decrement.
        match metrics.http_in_flight.get() {
            0 => tracing::info!("drained, exiting"),
            unfinished => tracing::warn!(unfinished, "grace period elapsed, exiting"),
        }
        Ok(())
    }
}

/// Creates the bootstrap admin if it does not exist yet. Several nodes may start at once: the
/// one that loses the insert race sees the conflict and moves on.
async fn bootstrap_admin(
    db: &sqlx::PgPool,
    settings: &Settings,
    password: &str,
) -> anyhow::Result<()> {
    let bootstrap = &settings.bootstrap;
    let exists: bool = sqlx::query_scalar(
        "select exists (select 1 from app_user where lower(username) = lower($1))",
    )
    .bind(&bootstrap.admin_username)
    .fetch_one(db)
    .await
    .context("checking for the bootstrap admin")?;
    if exists {
        return Ok(());
    }
    let new = users::NewUser {
        username: bootstrap.admin_username.clone(),
        email: bootstrap.admin_email.clone(),
        password: password.to_owned(),
        first_name: None,
        last_name: None,
        phone: None,
        role: crate::auth::Role::Admin,
    };
    match users::create(db, new).await {
        Ok(_) => {
            tracing::info!(username = %bootstrap.admin_username, "created bootstrap admin");
            Ok(())
        }
        Err(ApiError::Conflict(_)) => Ok(()),
        Err(err) => anyhow::bail!("creating the bootstrap admin failed: {err:?}"),
    }
}
