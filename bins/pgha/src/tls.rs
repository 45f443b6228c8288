//! `pgha tls init|install`.

use anyhow::Context;
use pgha_config::PghaConfig;
use pgha_postgres::{LocalInstance, OsUser};

use crate::cli::TlsCommand;

pub async fn run(config: &PghaConfig, what: &TlsCommand) -> anyhow::Result<()> {
    match what {
        TlsCommand::Init { days, renew } => {
            let opts = pgha_tls::InitOptions {
                days: *days,
                renew: *renew,
                ..Default::default()
            };
            let report = pgha_tls::init(config, &opts)?;
            for f in &report.files {
                let verb = if f.created { "wrote" } else { "kept " };
                println!("{verb} {}  ({})", f.path.display(), f.what);
            }
            if report.files.iter().any(|f| f.created) {
                println!("next: `pgha tls install` on each host (or restart its agent), which reloads PostgreSQL");
            }
            Ok(())
        }
        TlsCommand::Install { node } => install(config, node.as_deref()).await,
    }
}

async fn install(config: &PghaConfig, only: Option<&str>) -> anyhow::Result<()> {
    if config.tls.is_none() {
        anyhow::bail!("pgha.toml has no [tls] section: nothing to install");
    }
    if let Some(n) = only {
        config
            .node(n)
            .with_context(|| format!("--node {n}: no such node in pgha.toml"))?;
    }
    let mut done = 0;
    for node in &config.nodes {
        if only.is_some_and(|n| n != node.name) || (only.is_none() && !node.data_dir.exists()) {
            continue;
        }
        let owner = OsUser::for_server(config.os_user_of(node))?;
        pgha_replication::install_tls_files(config, node, owner.as_ref())?;
        let inst = LocalInstance::from_config(config, node)?;
        // A reload re-reads ssl_cert_file and ssl_key_file (PostgreSQL 10+): no restart.
        match inst.connect_params().connect().await {
            Ok(mut c) => {
                sqlx::query("SELECT pg_reload_conf()")
                    .execute(&mut c)
                    .await
                    .with_context(|| format!("{}: pg_reload_conf()", node.name))?;
                println!(
                    "{}: installed in {} and reloaded",
                    node.name,
                    node.tls_install_dir().display()
                );
            }
            Err(e) => println!(
                "{}: installed in {}; not reloaded ({e}); it applies at the next start",
                node.name,
                node.tls_install_dir().display()
            ),
        }
        done += 1;
    }
    if done == 0 {
        anyhow::bail!("no node's data dir is on this machine; use --node NAME");
    }
    Ok(())
}
