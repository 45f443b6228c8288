//! `pgha-pgbouncer`: render PgBouncer's files from pgha.toml and the live cluster, follow the
//! primary (re-render + RELOAD on change), PAUSE/RESUME around a planned switchover.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgha_config::PghaConfig;
use pgha_pooling_config::{
    follow, install, AdminConsole, ConsoleTarget, Follower, PollingLeaderSource, Topology,
};

/// PgBouncer in front of a pgha cluster.
#[derive(Debug, Parser)]
#[command(name = "pgha-pgbouncer", version, about, long_about = None)]
pub struct Cli {
    /// Cluster config file [default: $PGHA_CONFIG, else ./pgha.toml]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render pgbouncer.ini and userlist.txt for the current primary and replicas and install
    /// them at pooling.ini_path / pooling.userlist_path (or into --out for review).
    Render {
        /// Write both files into this directory instead of the configured paths.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// RELOAD PgBouncer through its admin console after installing.
        #[arg(long, conflicts_with = "out")]
        reload: bool,
    },
    /// Watch the primary (polling every node) and re-render + RELOAD PgBouncer on every change;
    /// runs until SIGINT/SIGTERM.
    Follow {
        /// Poll interval [default: pooling.poll_interval].
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<Duration>,
    },
    /// PAUSE: let running transactions finish, then hold new queries until `resume`.
    Pause {
        /// Only this database entry.
        #[arg(long)]
        db: Option<String>,
        /// How long to wait for running transactions to finish; on timeout PgBouncer is resumed
        /// and the command fails.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print the SQL that lets `pooling.auth_user` look up SCRAM secrets through a SECURITY
    /// DEFINER function (run it with psql as a superuser on the primary), and the matching
    /// `auth_query`.
    AuthSql,
    /// RESUME after `pause`.
    Resume {
        /// Only this database entry.
        #[arg(long)]
        db: Option<String>,
    },
}

/// Runs one command: exit 0 on success, 1 with the error chain on stderr otherwise.
pub async fn run(cli: Cli) -> ExitCode {
    match run_inner(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgha-pgbouncer: {}", pgha_startup::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(cli: &Cli) -> anyhow::Result<()> {
    let loaded = pgha_startup::load_config(cli.config.as_deref())?;
    let config = loaded.config;
    let pool = pgha_pooling_config::section(&config)
        .with_context(|| format!("config {}", loaded.source))?;
    pgha_pooling_config::check(pool).with_context(|| format!("config {}", loaded.source))?;
    match &cli.command {
        Command::AuthSql => {
            let sql = pgha_pooling_config::auth_setup_sql(pool)
                .context("pooling.auth_user is not set: set it (e.g. \"pgbouncer_auth\") first")?;
            print!("{sql}");
            Ok(())
        }
        Command::Render { out, reload } => render(&config, out.as_ref(), *reload).await,
        Command::Follow { interval } => {
            let pool = pgha_pooling_config::section(&config)?;
            let interval = interval.unwrap_or(pool.poll_interval);
            let console = ConsoleTarget::from_config(&config)?;
            let mut source = PollingLeaderSource::new(config.clone(), interval);
            let mut follower = Follower::new(config, console);
            tracing::info!(?interval, "following the primary");
            follow(&mut follower, &mut source, shutdown_signal())
                .await
                .context("follow the primary")?;
            Ok(())
        }
        Command::Pause { db, timeout } => console_cmd(&config, |mut c| async move {
            c.set_command_timeout(*timeout);
            let r = c.pause(db.as_deref()).await;
            c.close().await;
            r
        })
        .await
        .map(|()| println!("PgBouncer paused{}", on(db))),
        Command::Resume { db } => console_cmd(&config, |mut c| async move {
            let r = c.resume(db.as_deref()).await;
            c.close().await;
            r
        })
        .await
        .map(|()| println!("PgBouncer resumed{}", on(db))),
    }
}

fn on(db: &Option<String>) -> String {
    db.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

async fn console_cmd<F, Fut>(config: &PghaConfig, f: F) -> anyhow::Result<()>
where
    F: FnOnce(AdminConsole) -> Fut,
    Fut: std::future::Future<Output = pgha_pooling_config::Result<()>>,
{
    let target = ConsoleTarget::from_config(config)?;
    let c = AdminConsole::connect(&target).await?;
    Ok(f(c).await?)
}

async fn render(config: &PghaConfig, out: Option<&PathBuf>, reload: bool) -> anyhow::Result<()> {
    let pool = pgha_pooling_config::section(config)?;
    let topology = Topology::collect(config)
        .await
        .context("find the primary and replicas")?;
    let rendered = pgha_pooling_config::render_live(config, &topology).await?;
    let mut target = pool.clone();
    if let Some(dir) = out {
        target.ini_path = dir.join("pgbouncer.ini");
        target.userlist_path = dir.join("userlist.txt");
    }
    let files = install(&target, &rendered)?;
    println!("{}", topology.describe());
    println!(
        "wrote {} and {}",
        files.ini.display(),
        files.userlist.display()
    );
    if reload {
        let console = ConsoleTarget::from_config(config)?;
        let mut c = AdminConsole::connect(&console).await?;
        let r = c.reload().await;
        c.close().await;
        r?;
        println!("PgBouncer reloaded");
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
