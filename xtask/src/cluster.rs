//! `cargo xtask cluster up|status|psql|down`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use pgha_config::{ConfigSource, ReplicationMode};
use pgha_local_cluster::{ClusterSpec, LocalCluster, LocalClusterError, CONFIG_FILE};
use pgha_postgres::{LocalInstance, OsUser, PgControl, StopMode};

use crate::{agents, deps};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a primary and N streaming replicas (creating them on first use). Safe to repeat.
    Up {
        /// Number of replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Synchronous replication (commits wait for one standby).
        #[arg(long)]
        sync: bool,
        /// Also start PgBouncer in front of the cluster (read-write and read-only entries).
        #[arg(long)]
        pgbouncer: bool,
        /// TLS everywhere: a local CA and node certificates (`pgha tls init`), ssl=on,
        /// hostssl-only pg_hba, replication and every client with verify-full, HTTPS agent API.
        #[arg(long)]
        tls: bool,
        /// 2: also a second site in <state>/site-b: a standby cluster (own etcd) whose standby
        /// leader streams from this one and falls back to its WAL archive; see
        /// `pgha promote-cluster` and `cargo xtask drill dr`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        sites: u8,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Show the nodes, their roles, LSNs and lag.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Open psql on a node as the superuser (extra arguments go to psql after `--`).
    Psql {
        /// Node name, e.g. node1.
        node: String,
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// Stop every node; --purge also deletes data dirs, secrets and pgha.toml.
    Down {
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        state: StateDirArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct StateDirArg {
    /// Where the cluster lives [default: $PGHA_STATE_DIR, else <repo>/.pgha].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

fn workspace_root() -> PathBuf {
    crate::workspace_root()
}

/// The state dir: the flag, `PGHA_STATE_DIR`, or `<repo>/.pgha` (git-ignored). When the server
/// user cannot reach the repo (a clone under /root), a stable dir under /var/tmp instead.
pub fn state_dir(arg: &StateDirArg) -> PathBuf {
    if let Some(d) = &arg.state_dir {
        return absolute(d);
    }
    if let Some(d) = std::env::var_os("PGHA_STATE_DIR").filter(|d| !d.is_empty()) {
        return absolute(Path::new(&d));
    }
    let repo = workspace_root();
    let preferred = repo.join(".pgha");
    match OsUser::for_server("postgres") {
        Ok(Some(user)) if user.check_traversable(&preferred.join("nodes")).is_err() => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            repo.hash(&mut h);
            let alt = PathBuf::from(format!("/var/tmp/pgha-{:08x}", h.finish() as u32));
            eprintln!(
                "xtask: {} is not reachable by the `postgres` user; using {} as the state dir",
                preferred.display(),
                alt.display()
            );
            alt
        }
        _ => preferred,
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

pub async fn run(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterCommand::Up {
            replicas,
            sync,
            pgbouncer,
            tls,
            sites,
            state,
        } => up(&state_dir(&state), replicas, sync, pgbouncer, tls, sites).await,
        ClusterCommand::Status { json, state } => status(&state_dir(&state), json).await,
        ClusterCommand::Psql { node, args, state } => psql(&state_dir(&state), &node, &args),
        ClusterCommand::Down { purge, state } => down(&state_dir(&state), purge).await,
    }
}

async fn up(
    dir: &Path,
    replicas: usize,
    sync: bool,
    pgbouncer: bool,
    tls: bool,
    sites: u8,
) -> anyhow::Result<ExitCode> {
    deps::ensure_postgres()?;
    deps::ensure_ha()?;
    eprintln!("xtask: building pgha-agent, pgha, pgha-exporter and pgha-backup");
    let bin_dir = agents::build_binaries()?;
    crate::services::install_archive_bin(dir, &bin_dir)?;
    let t = Instant::now();
    let mode = if sync {
        ReplicationMode::Sync
    } else {
        ReplicationMode::Async
    };
    let cluster = if dir.join(CONFIG_FILE).exists() {
        let c = LocalCluster::open(dir)?;
        let have = c.config().nodes.len() - 1;
        if have != replicas
            || c.config().replication.mode != mode
            || c.config().tls.is_some() != tls
        {
            eprintln!(
                "xtask: the existing cluster in {} has {have} replica(s) in {} mode, TLS {}; keeping it \
                 (run `cargo xtask cluster down --purge` first to rebuild with other settings)",
                dir.display(),
                c.config().replication.mode,
                if c.config().tls.is_some() { "on" } else { "off" }
            );
        }
        eprintln!("xtask: starting existing cluster in {}", dir.display());
        agents::ensure_etcd(dir)?;
        c
    } else {
        eprintln!(
            "xtask: creating etcd, a primary and {replicas} replica(s) in {}",
            dir.display()
        );
        std::fs::create_dir_all(dir)?;
        let etcd_url = agents::ensure_etcd(dir)?;
        let mut spec = ClusterSpec::new("local", dir);
        spec.replicas = replicas;
        spec.mode = mode;
        spec.tls = tls;
        if sites == 2 {
            spec.permanent_slots = vec![crate::sites::SITE_B_SLOT.to_owned()];
        }
        spec.extra_toml = format!(
            "[dcs]\netcd = [\"{etcd_url}\"]\n\n[failover]\n# the defaults; see docs/FAILOVER.md\nttl = \"8s\"\nloop_wait = \"500ms\"\n"
        );
        let exporter_port = pgha_local_cluster::free_port("127.0.0.1")?;
        crate::services::configure(&mut spec, dir, &exporter_port)?;
        let c = LocalCluster::create(&spec)
            .await
            .map_err(|e| explain(e, dir))?;
        // From here on each agent runs its node's PostgreSQL as its child.
        c.stop_all(StopMode::Fast).await?;
        c
    };
    agents::ensure_agents(dir, &cluster, &bin_dir).await?;
    eprintln!("xtask: cluster up in {:.1} s", t.elapsed().as_secs_f64());
    let exporter =
        crate::services::ensure_exporter(dir, cluster.config(), &cluster.config_path(), &bin_dir)?;
    crate::services::ensure_backups(dir, cluster.config(), &cluster.config_path(), &bin_dir)?;
    let st = cluster.status().await?;
    print!("{}", pgha_replication::table::render(cluster.config(), &st));
    println!(
        "\nEach node is run by its pgha-agent (logs in {}/agents/); leader lease in etcd.",
        dir.display()
    );
    println!(
        "Point the pgha CLI at it:\n  export PGHA_CONFIG={}",
        cluster.config_path().display()
    );
    println!(
        "Then: {}/pgha list   (verify, status, check replication, switchover --to node2, pause, ...)",
        bin_dir.display()
    );
    println!(
        "Exporter: http://{exporter}/metrics; WAL archive and base backups in {}/backups \
         (daily at 02:00; logs in {}/services/)",
        dir.display(),
        dir.display()
    );
    if pgbouncer {
        crate::pgbouncer::up(&cluster).await?;
    }
    if sites == 2 || crate::sites::site_b_dir(dir).join(CONFIG_FILE).exists() {
        let b = crate::sites::up(&cluster, &bin_dir).await?;
        let st = b.status().await?;
        println!(
            "\nSite B (standby cluster of site A, own etcd; exporter http://{}/metrics):",
            b.config().monitoring.listen
        );
        print!("{}", pgha_replication::table::render(b.config(), &st));
        println!(
            "Site B's config: {}\nMake it the primary site: {}/pgha --config {} promote-cluster",
            b.config_path().display(),
            bin_dir.display(),
            b.config_path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(e: LocalClusterError, dir: &Path) -> anyhow::Error {
    anyhow::Error::new(e).context(format!(
        "bringing up the cluster in {} failed; fix the cause, then `cargo xtask cluster down --purge` and retry",
        dir.display()
    ))
}

async fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = LocalCluster::open(dir)?;
    let st = cluster.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", pgha_replication::table::render(cluster.config(), &st));
    }
    let b_dir = crate::sites::site_b_dir(dir);
    if !json && b_dir.join(CONFIG_FILE).exists() {
        let b = LocalCluster::open(&b_dir)?;
        let st = b.status().await?;
        println!("\nSite B ({}):", b_dir.display());
        print!("{}", pgha_replication::table::render(b.config(), &st));
    }
    Ok(ExitCode::SUCCESS)
}

fn psql(dir: &Path, node: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let cluster = LocalCluster::open(dir)?;
    let config = cluster.config();
    let n = config.node(node).with_context(|| {
        format!(
            "no node `{node}`; nodes: {}",
            config
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let inst = cluster.instance(node)?;
    let params = inst.connect_params();
    let mut cmd = std::process::Command::new(inst.bins().tool("psql"));
    cmd.args([
        "-h",
        &n.host,
        "-p",
        &n.port.to_string(),
        "-U",
        &params.user,
        &params.database,
    ]);
    cmd.args(args);
    // Through the environment, not argv, so it does not show in `ps`.
    if let Some(pw) = &params.password {
        cmd.env("PGPASSWORD", pw.expose());
    }
    cmd.envs(params.libpq_tls_env());
    let st = cmd.status().context("run psql")?;
    Ok(ExitCode::from(st.code().unwrap_or(1) as u8))
}

async fn down(dir: &Path, purge: bool) -> anyhow::Result<ExitCode> {
    let b_dir = crate::sites::site_b_dir(dir);
    if b_dir.join(CONFIG_FILE).exists() {
        eprintln!("xtask: site B");
        Box::pin(down(&b_dir, purge)).await?;
    }
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        if purge && dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        eprintln!("xtask: no cluster in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    crate::pgbouncer::down(dir)?;
    crate::services::stop_all(dir);
    agents::stop_all(dir);
    // Works on incomplete clusters too: every node the config names is stopped if running.
    let loaded = pgha_config::load(ConfigSource::Flag(path))?;
    for n in loaded.config.nodes.iter().rev() {
        let inst = LocalInstance::from_config(&loaded.config, n)?;
        let mode = if purge {
            StopMode::Immediate
        } else {
            StopMode::Fast
        };
        inst.stop(mode)
            .await
            .with_context(|| format!("stop {}", n.name))?;
        eprintln!("xtask: {} stopped", n.name);
    }
    if purge {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
        eprintln!("xtask: removed {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}
