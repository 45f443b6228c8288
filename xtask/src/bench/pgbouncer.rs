//! `cargo xtask bench pgbouncer`: pgbench through PgBouncer (transaction pooling) vs straight to
//! PostgreSQL, same cluster, same run, alternating: select-only (`-S`), the write mix
//! (`-b tpcb-like`), and select-only with a new connection per transaction (`-S -C`, where a
//! pooler earns its keep). Medians of TPS and latency, ratio = PgBouncer / direct.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use pgha_config::ConfigSource;
use pgha_local_cluster::{free_port, ClusterSpec, LocalCluster, CONFIG_FILE};
use pgha_pooling_config::PgBouncerProcess;

use super::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions per workload and target; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// pgbench clients (-c).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// pgbench scale (-s) for `pgbench -i`.
    #[arg(long, default_value_t = 10)]
    scale: u32,
}

struct Workload {
    name: &'static str,
    args: &'static [&'static str],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "select-only (-S)",
        args: &["-S"],
    },
    Workload {
        name: "write mix (-b tpcb-like)",
        args: &["-b", "tpcb-like"],
    },
    Workload {
        name: "select-only, connect per txn (-S -C)",
        args: &["-S", "-C"],
    },
];

/// (tps, average latency ms) of one pgbench run.
fn pgbench(
    tool: &Path,
    port: u16,
    password: &str,
    w: &Workload,
    a: &Args,
) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-n", "-j", "2", "-c", &a.clients.to_string()])
        .args(["-T", &a.seconds.to_string()])
        .args(w.args)
        .arg("postgres")
        .env("PGPASSWORD", password)
        .output()
        .context("run pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {} on port {port} failed ({}): {}{}",
            w.name,
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tps = num("tps = ").context("no tps line in pgbench output")?;
    let lat = num("latency average = ").unwrap_or(f64::NAN);
    Ok((tps, lat))
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    let root = std::env::temp_dir().join(format!("pgha-bench-pgbouncer-{}", std::process::id()));
    let mut spec = ClusterSpec::new("bench", &root);
    spec.replicas = 1;
    spec.parameters
        .insert("max_connections".into(), "200".into());
    let cluster = LocalCluster::create(&spec)
        .await
        .context("create cluster")?;
    let result = bench(&cluster, &a).await;
    cluster.purge().await.ok();
    result
}

async fn bench(cluster: &LocalCluster, a: &Args) -> anyhow::Result<ExitCode> {
    let state = cluster.root();
    let primary = cluster.instance(&cluster.first_node().name)?;
    let pgbench_bin = primary.bins().tool("pgbench");
    let password = primary
        .connect_params()
        .password
        .clone()
        .context("the local cluster has a superuser password")?;
    let direct = cluster.first_node().port;
    eprintln!("bench: pgbench -i -s {} on the primary", a.scale);
    let init = Command::new(&pgbench_bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &direct.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-q", "-s", &a.scale.to_string(), "postgres"])
        .env("PGPASSWORD", password.expose())
        .output()
        .context("run pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }

    let port = free_port("127.0.0.1")?;
    let path = state.join(CONFIG_FILE);
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&crate::pgbouncer::section_toml(
        state,
        port.port,
        &["postgres"],
        &[],
    ));
    // pgbench -S -C opens a connection per transaction: room for them.
    text.push_str("max_client_conn = 500\ndefault_pool_size = 20\n");
    pgha_postgres::files::write_atomic(&path, text.as_bytes(), 0o644, None)?;
    let config = pgha_config::load(ConfigSource::Flag(path))?.config;
    crate::pgbouncer::render(&config).await?;
    let pool = pgha_pooling_config::section(&config)?;
    let _bouncer = PgBouncerProcess::start(pool, Duration::from_secs(15))?;

    println!(
        "\nbench pgbouncer: pgbench -c {} -j 2 -T {} (scale {}), PostgreSQL 15 + PgBouncer 1.18 \
         (pool_mode {}, default_pool_size {}), median of {} run(s), same cluster, alternating",
        a.clients, a.seconds, a.scale, pool.pool_mode, pool.default_pool_size, a.runs
    );
    println!(
        "  {:<38} {:>11} {:>14} {:>7}   {:>11} {:>14}",
        "workload", "direct tps", "pgbouncer tps", "ratio", "direct ms", "pgbouncer ms"
    );
    for w in WORKLOADS {
        let (mut dt, mut dl, mut bt, mut bl) = (vec![], vec![], vec![], vec![]);
        for r in 1..=a.runs.max(1) {
            let (t, l) = pgbench(&pgbench_bin, direct, password.expose(), w, a)?;
            dt.push(t);
            dl.push(l);
            let (t2, l2) = pgbench(&pgbench_bin, port.port, password.expose(), w, a)?;
            bt.push(t2);
            bl.push(l2);
            eprintln!(
                "bench: {} run {r}: direct {t:.0} tps, pgbouncer {t2:.0} tps",
                w.name
            );
        }
        let (d, b) = (median(&mut dt), median(&mut bt));
        println!(
            "  {:<38} {:>11.0} {:>14.0} {:>7.2}   {:>11.2} {:>14.2}",
            w.name,
            d,
            b,
            b / d,
            median(&mut dl),
            median(&mut bl)
        );
    }
    Ok(ExitCode::SUCCESS)
}
