//! `petmesh-node`: thin entry point. Parses the command line, loads and validates the settings
//! (refusing to start with one line per problem), installs telemetry, and runs the subcommand.

// The middleware stack of `api::app` nests one type per layer (twice for function layers), and
// the compiler's default depth of 128 no longer covers the layout of its request future.
#![recursion_limit = "256"]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use petmesh_node::{
    config::Settings,
    startup::{Application, MIGRATOR},
    users,
};
use petmesh_shared::{config, probe, shutdown, telemetry};
use secrecy::ExposeSecret;

/// The petmesh API node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Optional YAML settings file; `PETMESH_NODE__*` variables override it.
    #[arg(long, global = true, env = "PETMESH_NODE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API until SIGTERM or Ctrl-C, then drain and exit.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load the demo catalogue (a few hundred pets) unless pets exist already.
    Seed,
    /// Create an admin account, or reset the password and role of an existing one.
    CreateAdmin {
        /// Username of the admin (default: bootstrap.admin_username).
        #[arg(long)]
        username: Option<String>,
        /// Email of a new admin (default: bootstrap.admin_email).
        #[arg(long)]
        email: Option<String>,
        /// Password (default: PETMESH_ADMIN_PASSWORD); prefer the variable, command lines are
        /// visible to other users of the machine.
        #[arg(long)]
        password: Option<String>,
    },
    /// Load and validate the settings exactly as `serve` would, connecting to nothing: exit 0,
    /// or 64 with one line per unknown or invalid setting.
    CheckConfig,
    /// Ask this node's `/health/live` (on `server.port`) whether it is up: exit 0 or 1. For
    /// container health checks.
    Healthcheck,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars().collect()) {
        Ok(settings) => settings,
        Err(problems) => return config::refuse(&problems),
    };
    match cli.command {
        Command::CheckConfig => {
            println!("configuration ok");
            return ExitCode::SUCCESS;
        }
        Command::Healthcheck => {
            let addr = probe::local_addr(settings.server.host, settings.server.port);
            return probe::healthcheck("petmesh-node", addr, "/health/live");
        }
        _ => {}
    }
    telemetry::init(settings.log_format(), &settings.log.level);
    match run(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "petmesh-node failed");
            eprintln!("petmesh-node: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => {
            let app = Application::build(&settings).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Command::Migrate => {
            let db = settings.database.lazy_pool()?;
            MIGRATOR.run(&db).await.context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Seed => {
            let db = settings.database.lazy_pool()?;
            let inserted = petmesh_node::seed::seed(&db)
                .await
                .context("seeding the catalogue")?;
            println!("seeded {inserted} pets");
            Ok(())
        }
        Command::CreateAdmin {
            username,
            email,
            password,
        } => {
            let bootstrap = &settings.bootstrap;
            let password = password
                .or_else(|| {
                    bootstrap
                        .admin_password
                        .as_ref()
                        .map(|p| p.expose_secret().to_owned())
                })
                .context("no password: pass --password or set PETMESH_ADMIN_PASSWORD")?;
            let username = username.unwrap_or_else(|| bootstrap.admin_username.clone());
            let email = email.unwrap_or_else(|| bootstrap.admin_email.clone());
            let db = settings.database.lazy_pool()?;
            let created = users::ensure_admin(&db, &username, &email, &password)
                .await
                .map_err(|err| anyhow::anyhow!("{err:?}"))?;
            let verb = if created { "created" } else { "updated" };
            println!("admin `{username}` {verb}");
            Ok(())
        }
        Command::CheckConfig | Command::Healthcheck => unreachable!("answered before start-up"),
    }
}
