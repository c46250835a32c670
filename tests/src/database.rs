//! A fresh, migrated database per test, dropped when the test ends.
//!
//! Every test gets its own database inside a shared server, so tests can run in parallel
//! without seeing each other's rows, and a failing test leaves nothing behind for the next
//! one. The migrations are the ones the node applies (`../migrations`), compiled in with
//! `sqlx::migrate!`; `build.rs` makes cargo rebuild this crate when one is added.

use std::str::FromStr as _;

use anyhow::Context as _;
use reqwest::Url;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

/// The node's migrations, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connections in the pool a test uses to arrange and inspect data. The nodes have pools of
/// their own; this one only has to be big enough for a test's direct queries.
const POOL_SIZE: u32 = 4;

/// A database named `test_<uuid>`, migrated, dropped with `DROP DATABASE ... WITH (FORCE)`
/// when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// The database's name, as created (no quoting needed: `test_` + hex).
    name: String,
    /// URL of the new database, for the nodes.
    url: String,
    /// URL of the maintenance database, kept to connect for the `DROP` on drop.
    maintenance_url: String,
    /// The test's own pool. Its connections are cut by the forced drop, so it isn't closed first.
    pool: PgPool,
}

// === impl TestDatabase ===

impl TestDatabase {
    /// Creates and migrates a new database on the server that `maintenance_url` points to
    /// (any database on it the user may connect to, normally `postgres`).
    pub async fn create(maintenance_url: &str) -> anyhow::Result<Self> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let url = database_url(maintenance_url, &name)?;

        let mut conn = PgConnection::connect(maintenance_url)
            .await
            .with_context(|| format!("connecting to the maintenance database {maintenance_url}"))?;
        sqlx::query(&format!(r#"create database "{name}""#))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;

        // From here on the database exists, so build `Self` first: an error in the steps
        // below then drops it again instead of leaking it.
        let options = PgConnectOptions::from_str(&url).with_context(|| format!("parsing {url}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_lazy_with(options);
        let db = Self {
            name,
            url,
            maintenance_url: maintenance_url.to_owned(),
            pool,
        };
        MIGRATOR
            .run(&db.pool)
            .await
            .with_context(|| format!("migrating database {}", db.name))?;
        Ok(db)
    }

    /// The database's name (`test_<uuid>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database, as nodes get it in `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on this database for the test's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // `Drop` can't await, and blocking inside a runtime (the usual case: a `#[tokio::test]`)
        // panics, so the drop runs on its own thread with its own small runtime.
        let name = self.name.clone();
        let maintenance_url = self.maintenance_url.clone();
        let dropper = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime to drop the database")?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&maintenance_url)
                    .await
                    .with_context(|| format!("connecting to {maintenance_url}"))?;
                // FORCE cuts the nodes' and our pool's connections instead of waiting for them.
                sqlx::query(&format!(r#"drop database if exists "{name}" with (force)"#))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("dropping database {name}"))?;
                let _ = conn.close().await;
                Ok(())
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("petmesh-tests: {e:#}"),
            Err(_) => eprintln!(
                "petmesh-tests: the thread dropping database {} panicked",
                self.name
            ),
        }
    }
}

/// `maintenance_url` with its path replaced by `/<name>`; user, host, port and query
/// parameters (such as `sslmode`) stay as they are.
pub(crate) fn database_url(maintenance_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = Url::parse(maintenance_url)
        .with_context(|| format!("parsing the maintenance database URL {maintenance_url}"))?;
    url.set_path(&format!("/{name}"));
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "test_1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/test_1"
        );
        assert_eq!(
            database_url("postgres://u:p@db:5432/postgres?sslmode=disable", "test_2").unwrap(),
            "postgres://u:p@db:5432/test_2?sslmode=disable"
        );
        assert_eq!(
            database_url("postgres://u@db:5432", "test_3").unwrap(),
            "postgres://u@db:5432/test_3"
        );
    }

    /// Needs PostgreSQL installed (scripts/lib/deps.sh).
    #[tokio::test]
    async fn database_is_created_migrated_and_dropped() {
        let server = crate::PostgresServer::start().await.unwrap();
        let db = TestDatabase::create(&server.url()).await.unwrap();
        let name = db.name().to_owned();
        let applied: i64 =
            sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(applied, MIGRATOR.iter().count() as i64);

        drop(db);
        let mut conn = PgConnection::connect(&server.url()).await.unwrap();
        let left: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0, "database {name} dropped");
    }
}
