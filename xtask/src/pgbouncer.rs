//! PgBouncer beside a local cluster (`cargo xtask cluster up --pgbouncer`, `bench pgbouncer`):
//! a `[pooling]` section appended to its pgha.toml, files rendered by pgha-pooling-config,
//! PgBouncer started as the `postgres` user, its pid in `<state>/pgbouncer/pgbouncer.pid`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pgha_config::PghaConfig;
use pgha_local_cluster::{free_port, LocalCluster, CONFIG_FILE};
use pgha_pooling_config::{install, AdminConsole, ConsoleTarget, Topology};

/// Directory of PgBouncer's files inside a state dir.
pub fn dir(state: &Path) -> PathBuf {
    state.join("pgbouncer")
}

fn pid_file(state: &Path) -> PathBuf {
    dir(state).join("pgbouncer.pid")
}

/// A `[pooling]` section for a local cluster: PgBouncer on a free loopback port, exposing
/// `databases` (read-write and `_ro`), files under `<state>/pgbouncer/`.
pub fn section_toml(state: &Path, port: u16, databases: &[&str], users: &[&str]) -> String {
    let d = dir(state);
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[pooling]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\n\
         databases = [{}]\nusers = [{}]\nini_path = \"{d}/pgbouncer.ini\"\n\
         userlist_path = \"{d}/userlist.txt\"\nlog_file = \"{d}/pgbouncer.log\"\n",
        list(databases),
        list(users),
        d = d.display()
    )
}

/// Renders both files for the live cluster and installs them.
pub async fn render(config: &PghaConfig) -> anyhow::Result<Topology> {
    let pool = pgha_pooling_config::section(config)?;
    if config.tls.is_some() {
        // The cluster's certificates exist; this issues PgBouncer's (kept when present).
        pgha_tls::init(config, &pgha_tls::InitOptions::default())?;
    }
    let topology = Topology::collect(config).await?;
    install(
        pool,
        &pgha_pooling_config::render_live(config, &topology).await?,
    )?;
    Ok(topology)
}

fn running_pid(state: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(state))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "pgbouncer").then_some(pid)
}

/// `cluster up --pgbouncer`: adds a `[pooling]` section if the cluster has none, renders, and
/// starts PgBouncer in the background (or RELOADs the running one).
pub async fn up(cluster: &LocalCluster) -> anyhow::Result<()> {
    crate::deps::ensure_postgres()?;
    let state = cluster.root();
    let path = state.join(CONFIG_FILE);
    let mut config = cluster.config().clone();
    if config.pooling.is_none() {
        let port = free_port("127.0.0.1")?;
        let mut text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.push_str(&section_toml(state, port.port, &["postgres"], &[]));
        pgha_postgres::files::write_atomic(&path, text.as_bytes(), 0o644, None)?;
        config = pgha_config::load(pgha_config::ConfigSource::Flag(path.clone()))?.config;
    }
    let pool = pgha_pooling_config::section(&config)?.clone();
    let topology = render(&config).await?;
    if let Some(pid) = running_pid(state) {
        let mut c = AdminConsole::connect(&ConsoleTarget::from_config(&config)?).await?;
        c.reload().await?;
        c.close().await;
        eprintln!(
            "xtask: PgBouncer (pid {pid}) reloaded: {}",
            topology.describe()
        );
    } else {
        let pid = pgha_pooling_config::start_detached(&pool, Duration::from_secs(15))?;
        std::fs::write(pid_file(state), format!("{pid}\n"))?;
        eprintln!(
            "xtask: PgBouncer started (pid {pid}): {}",
            topology.describe()
        );
    }
    let db = pool
        .databases
        .first()
        .map(String::as_str)
        .unwrap_or("postgres");
    println!(
        "\nPgBouncer on {}:{} (read-write `{db}`, read-only `{db}{}`), e.g.\n  \
         PGPASSWORD=$(cat {}/secrets/superuser.password) psql -h {} -p {} -U {} {db}",
        pool.listen_addr,
        pool.listen_port,
        pool.read_only_suffix,
        state.display(),
        pool.listen_addr,
        pool.listen_port,
        config.postgres.superuser,
    );
    println!(
        "Follow the primary: cargo run -p pgha-pgbouncer -- -c {} follow",
        path.display()
    );
    Ok(())
}

/// `cluster down`: stops PgBouncer if it runs.
pub fn down(state: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(state) else {
        return Ok(());
    };
    pgha_pooling_config::terminate(pid);
    for _ in 0..250 {
        if running_pid(state).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(pid_file(state));
    eprintln!("xtask: PgBouncer (pid {pid}) stopped");
    Ok(())
}
