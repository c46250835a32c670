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

use crate::{api, config::Settings, error::ApiError, limits::Limits, state::AppState, users};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A node that is bound and ready to serve.
pub struct Application {
    /// The bound listener (port 0 resolved).
    acceptor: TcpAcceptor,
    /// The address actually bound.
    addr: SocketAddr,
    /// Shared handler state; kept to flip readiness on shutdown.
    state: AppState,
    /// Request limits from the settings.
    limits: Limits,
    /// How long in-flight requests may take once shutdown begins.
    grace_period: Duration,
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
            .pool()
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
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .context("listener has no socket address")?;
        Ok(Self {
            acceptor,
            addr,
            state,
            limits: Limits {
                body_limit_bytes: settings.server.body_limit_bytes,
                request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
            },
            grace_period: Duration::from_secs(settings.server.grace_period_secs),
        })
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then turns not-ready and drains in-flight requests for
    /// at most the grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr, node_id = %self.state.node_id, "listening");
        let state = self.state.clone();
        let signal = async move {
            shutdown.await;
            state.start_draining();
            tracing::info!("shutting down: draining in-flight requests");
        };
        let app = api::app(self.state, self.limits);
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, signal, Some(self.grace_period))
            .await
            .context("serving HTTP")?;
        tracing::info!("drained, exiting");
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
