//! The `pgha` operator CLI as a library, so xtask and tests drive the same code paths.

pub mod check;
pub mod cli;
pub mod ha;
pub mod logging;
pub mod node_ops;
pub mod render;
pub mod settings;
pub mod tls;
pub mod verify;
mod verify_archive;

use std::process::ExitCode;

use anyhow::Context;
use pgha_config::LoadedConfig;

use crate::cli::{CheckCommand, Cli, Command};

/// Loads the config chosen by `--config` / `PGHA_CONFIG` / `./pgha.toml`; errors say which file.
pub fn load_config(flag: Option<&std::path::Path>) -> anyhow::Result<LoadedConfig> {
    Ok(pgha_startup::load_config(flag)?)
}

/// An error and its causes on one line, each cause once: our error types already include their
/// source's text, so a plain `{:#}` would repeat it.
pub fn error_chain(e: &anyhow::Error) -> String {
    pgha_startup::error_chain(e.as_ref())
}

/// Runs one command; the exit code follows each command's convention.
pub async fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Check { what } => match what {
            CheckCommand::Replication(args) => {
                check::replication_main(cli.config.as_deref(), args).await
            }
            CheckCommand::Connections(args) => {
                check::connections_main(cli.config.as_deref(), args).await
            }
            CheckCommand::Archiving(args) => {
                check::archiving_main(cli.config.as_deref(), args).await
            }
        },
        Command::Verify(args) => verify::verify_main(cli.config.as_deref(), args).await,
        _ => match run_plain(&cli).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgha: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        },
    }
}

async fn run_plain(cli: &Cli) -> anyhow::Result<()> {
    let loaded = load_config(cli.config.as_deref())?;
    match &cli.command {
        Command::Status { json } => {
            let st = pgha_replication::ClusterStatus::collect(&loaded.config)
                .await
                .context("collect cluster status")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", pgha_replication::table::render(&loaded.config, &st));
            }
        }
        Command::Render(args) => match &args.what {
            Some(cli::RenderCommand::Alerts { out }) => {
                pgha_monitoring::alerts::write(out, &loaded.config.monitoring.alerts)?;
                println!("wrote {}", out.display());
            }
            None => render::run(&loaded.config, args).await?,
        },
        Command::SetMode { mode, force } => {
            if loaded.config.dcs.is_some() {
                // Before connecting anywhere (set_mode refuses it too).
                anyhow::bail!(
                    "{}: {}",
                    loaded.source.path().display(),
                    pgha_replication::ReplicationError::AgentsManageMode
                );
            }
            let st = pgha_replication::ClusterStatus::collect(&loaded.config).await?;
            let primary = st.primary.as_deref().context(
                "no single writable primary answered; cannot change the replication mode",
            )?;
            let node = loaded
                .config
                .node(primary)
                .context("primary not in config")?;
            let mut conn = pgha_postgres::connect_params(&loaded.config, node)?
                .connect()
                .await?;
            pgha_replication::set_mode(&mut conn, primary, &loaded.config, (*mode).into(), *force)
                .await?;
            println!("replication mode is now {mode} on primary {primary}");
        }
        Command::List { json } => ha::list(&loaded.config, *json).await?,
        Command::History { json } => ha::history(&loaded.config, *json).await?,
        Command::Topology => ha::topology(&loaded.config).await?,
        Command::ShowConfig => settings::show(&loaded.config).await?,
        Command::EditConfig(args) => settings::edit(&loaded.config, args).await?,
        Command::Restart {
            nodes,
            pending,
            scheduled,
            role,
            force,
        } => {
            let opts = node_ops::RestartOptions {
                pending: *pending,
                scheduled: scheduled.as_deref(),
                role: role.as_deref(),
                force: *force,
            };
            node_ops::restart(&loaded.config, nodes, &opts).await?
        }
        Command::Reinit { node, force } => node_ops::reinit(&loaded.config, node, *force).await?,
        Command::Reload { nodes } => node_ops::reload(&loaded.config, nodes).await?,
        Command::Switchover { cancel: true, .. } => ha::cancel_switchover(&loaded.config).await?,
        Command::Switchover {
            to, at, no_wait, ..
        } => ha::switchover(&loaded.config, to.as_deref(), at.as_deref(), *no_wait).await?,
        Command::Failover { to, no_wait } => ha::failover(&loaded.config, to, *no_wait).await?,
        Command::Tls { what } => tls::run(&loaded.config, what).await?,
        Command::Pause => ha::pause(&loaded.config, true).await?,
        Command::Resume => ha::pause(&loaded.config, false).await?,
        Command::DemoteCluster { force } => ha::demote_cluster(&loaded.config, *force).await?,
        Command::PromoteCluster {
            no_wait,
            force,
            timeout,
        } => ha::promote_cluster(&loaded.config, *no_wait, *force, *timeout).await?,
        Command::Check { .. } | Command::Verify(_) => unreachable!("handled in run"),
    }
    Ok(())
}
