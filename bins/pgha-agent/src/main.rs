//! `pgha-agent`: one per PostgreSQL node. Runs PostgreSQL as its child, holds or follows the
//! leader lease in etcd, promotes, fences, rejoins, and serves the health API.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

mod first_primary;

use pgha_failover::api::{self, ApiState};
use pgha_failover::dcs::{Dcs, EtcdDcs};

/// The pgha agent of one node (see docs/FAILOVER.md).
#[derive(Debug, Parser)]
#[command(name = "pgha-agent", version, about)]
struct Cli {
    /// Cluster config file [default: $PGHA_CONFIG, else ./pgha.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// This agent's node (a `[[nodes]]` name).
    #[arg(long, env = "PGHA_NODE")]
    node: String,
}

fn main() -> ExitCode {
    // The supervisor of PostgreSQL is this executable too (no tokio, no logging setup).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).and_then(|a| a.to_str()) == Some(pgha_postgres::supervisor::SUPERVISE_ARG) {
        return pgha_postgres::supervisor::supervise_main(&args[2..]);
    }
    let cli = Cli::parse();
    let _logging =
        pgha_startup::init_logging("pgha-agent", pgha_startup::LogProfile::Service, None);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgha-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = pgha_startup::load_config(cli.config.as_deref())?;
    let config = Arc::new(loaded.config);
    let node = config
        .node(&cli.node)
        .with_context(|| format!("--node {}: no such node in {}", cli.node, loaded.source))?
        .clone();
    let dcs: Arc<dyn Dcs> = Arc::new(
        EtcdDcs::from_config(&config, &node.name)
            .await
            .context("connect to etcd")?,
    );
    match pgha_failover::ops::ensure_sole_agent(dcs.as_ref(), &config, &node.name).await {
        Err(e @ pgha_failover::FailoverError::Refused { .. }) => return Err(e.into()),
        // Without the DCS the agent starts anyway (it waits for the DCS and never leads
        // without it); this check is skipped then.
        Err(e) => tracing::warn!("could not check for another agent of this node: {e}"),
        Ok(()) => {}
    }
    let supervisor = std::env::current_exe().context("locate pgha-agent for its supervisor")?;
    let first = first_primary::from_config(&config);
    let (mut agent, shared) = pgha_failover::agent::build(
        config.clone(),
        &node.name,
        dcs.clone(),
        Some(supervisor),
        first,
    )?;
    // SIGHUP and POST /reload: pgha.toml again (tags, nofailover, noloadbalance, parameters).
    let source = loaded.source.clone();
    agent.reload_with(move || {
        pgha_config::load(source.clone())
            .map(|l| l.config)
            .map_err(|e| pgha_config::error_chain(&e))
    });
    let s = shared.clone();
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("no SIGHUP handler ({e}): reload with POST /reload");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading pgha.toml");
            s.request_reload();
        }
    });
    let cancel = CancellationToken::new();
    let token = config
        .failover
        .api_token
        .as_ref()
        .map(|s| s.read())
        .transpose()?;
    let api_task = match node.agent_address {
        Some(addr) => {
            let state = Arc::new(ApiState {
                shared: shared.clone(),
                dcs: dcs.clone(),
                config: config.clone(),
                token,
            });
            let c = cancel.clone();
            let listener_check = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "agent API address {addr} (nodes.{}.agent_address)",
                    node.name
                )
            })?;
            drop(listener_check);
            let tls = match config.tls.as_ref().filter(|t| t.agent_api) {
                Some(t) => Some(
                    pgha_tls::server_config(&t.cert_file(&node), &t.key_file(&node))
                        .context("agent API TLS ([tls] agent_api = true)")?,
                ),
                None => None,
            };
            Some(tokio::spawn(async move {
                api::serve(addr, state, c, tls).await
            }))
        }
        None => None,
    };
    let c = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received: shutting down");
        c.cancel();
    });
    tracing::info!(node = %node.name, "agent started");
    agent.run(cancel.clone()).await;
    cancel.cancel();
    if let Some(t) = api_task {
        let _ = t.await;
    }
    Ok(())
}
