//! `cargo xtask bench pgbouncer`: pgbench through PgBouncer (transaction pooling) vs straight to
//! PostgreSQL, same cluster, same run, alternating: select-only (`-S`), the write mix
//! (`-b tpcb-like`), and select-only with a new connection per transaction (`-S -C`, where a
//! pooler earns its keep). Medians of TPS and latency, ratio = PgBouncer / direct. Then
//! failovers: the primary is killed and the replica promoted by hand while `follow` runs; time
//! until a write through PgBouncer lands on the new primary vs a write straight to it.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgha_config::ConfigSource;
use pgha_local_cluster::{free_port, ClusterSpec, LocalCluster, CONFIG_FILE};
use pgha_pooling_config::PgBouncerProcess;

use super::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions per workload and target; medians are reported (0: failovers only).
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
    /// Failovers to time (a fresh primary + replica each); 0 skips them.
    #[arg(long, default_value_t = 3)]
    failovers: usize,
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
    if a.runs > 0 {
        let root =
            std::env::temp_dir().join(format!("pgha-bench-pgbouncer-{}", std::process::id()));
        let mut spec = ClusterSpec::new("bench", &root);
        spec.replicas = 1;
        spec.parameters
            .insert("max_connections".into(), "200".into());
        let cluster = LocalCluster::create(&spec)
            .await
            .context("create cluster")?;
        let result = bench(&cluster, &a).await;
        cluster.purge().await.ok();
        result?;
    }
    if a.failovers > 0 {
        failovers(a.failovers).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(cluster: &LocalCluster, a: &Args) -> anyhow::Result<()> {
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

    // pgbench -S -C opens a connection per transaction: room for them.
    let (config, _bouncer, bouncer_port) =
        with_pgbouncer(cluster, "max_client_conn = 500\ndefault_pool_size = 20\n").await?;
    let pool = pgha_pooling_config::section(&config)?;

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
        for r in 1..=a.runs {
            let (t, l) = pgbench(&pgbench_bin, direct, password.expose(), w, a)?;
            dt.push(t);
            dl.push(l);
            let (t2, l2) = pgbench(&pgbench_bin, bouncer_port, password.expose(), w, a)?;
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
    Ok(())
}

/// Adds a `[pooling]` section to the cluster's pgha.toml, renders, starts PgBouncer.
async fn with_pgbouncer(
    cluster: &LocalCluster,
    extra: &str,
) -> anyhow::Result<(pgha_config::PghaConfig, PgBouncerProcess, u16)> {
    let state = cluster.root();
    let port = free_port("127.0.0.1")?;
    let path = state.join(CONFIG_FILE);
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&crate::pgbouncer::section_toml(
        state,
        port.port,
        &["postgres"],
        &[],
    ));
    text.push_str(extra);
    pgha_postgres::files::write_atomic(&path, text.as_bytes(), 0o644, None)?;
    let config = pgha_config::load(ConfigSource::Flag(path))?.config;
    crate::pgbouncer::render(&config).await?;
    let pool = pgha_pooling_config::section(&config)?;
    let bouncer = PgBouncerProcess::start(pool, Duration::from_secs(15))?;
    Ok((config, bouncer, port.port))
}

/// Time from the promote until a write reaches the new primary: straight to it (the floor) and
/// through PgBouncer with `follow` polling every `pooling.poll_interval`.
async fn failovers(n: usize) -> anyhow::Result<()> {
    let (mut direct, mut through, mut from_kill) = (vec![], vec![], vec![]);
    for run in 1..=n {
        let root = std::env::temp_dir().join(format!(
            "pgha-bench-pgbouncer-fo{run}-{}",
            std::process::id()
        ));
        let mut spec = ClusterSpec::new("bench", &root);
        spec.replicas = 1;
        let cluster = LocalCluster::create(&spec)
            .await
            .context("create cluster")?;
        let r = one_failover(&cluster).await;
        cluster.purge().await.ok();
        let (d, t, k) = r?;
        eprintln!(
            "bench: failover {run}: direct write {:.0} ms, through PgBouncer {:.0} ms after the \
             promote ({:.0} ms after the kill)",
            d * 1e3,
            t * 1e3,
            k * 1e3
        );
        direct.push(d);
        through.push(t);
        from_kill.push(k);
    }
    println!(
        "\nbench pgbouncer failover: kill the primary, pg_ctl promote the replica, `follow` \
         polling every 500 ms; median of {n}"
    );
    for (what, v) in [
        (
            "promote -> first write straight to the new primary (floor)",
            &mut direct,
        ),
        (
            "promote -> first write through PgBouncer's read-write entry",
            &mut through,
        ),
        (
            "kill -> first write through PgBouncer's read-write entry",
            &mut from_kill,
        ),
    ] {
        println!("  {what:<62} {:>8.0} ms", median(v) * 1e3);
    }
    Ok(())
}

/// Seconds until a write through `opts` lands on port `want`, counted from `since`.
async fn first_write(
    opts: sqlx::postgres::PgConnectOptions,
    want: u16,
    since: Instant,
) -> anyhow::Result<f64> {
    use sqlx::{ConnectOptions, Row};
    loop {
        let attempt = async {
            let mut c = opts.connect().await?;
            let rows =
                sqlx::raw_sql("INSERT INTO fo DEFAULT VALUES; SELECT inet_server_port()::text")
                    .fetch_all(&mut c)
                    .await?;
            let p: String = rows
                .last()
                .ok_or(sqlx::Error::RowNotFound)?
                .try_get_unchecked(0)?;
            Ok::<_, sqlx::Error>(p)
        };
        if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_millis(1500), attempt).await {
            if p == want.to_string() {
                return Ok(since.elapsed().as_secs_f64());
            }
        }
        if since.elapsed() > Duration::from_secs(60) {
            bail!("no write reached the new primary within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn one_failover(cluster: &LocalCluster) -> anyhow::Result<(f64, f64, f64)> {
    use pgha_pooling_config::{follow, ConsoleTarget, Follower, PollingLeaderSource};
    use pgha_postgres::{PgControl, StopMode};
    use sqlx::ConnectOptions;

    let (config, _bouncer, port) = with_pgbouncer(cluster, "").await?;
    let pool = pgha_pooling_config::section(&config)?;
    let password = config
        .postgres
        .superuser_password
        .as_ref()
        .context("superuser password")?
        .read()?;
    let node2 = config.nodes[1].port;
    let via = |p: u16| {
        sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(p)
            .username("postgres")
            .password(password.expose())
            .database("postgres")
    };
    {
        let mut c = via(config.nodes[0].port).connect().await?;
        sqlx::raw_sql("CREATE TABLE fo (at timestamptz DEFAULT now())")
            .execute(&mut c)
            .await?;
    }
    cluster.wait_streaming(Duration::from_secs(30)).await?;
    let mut follower = Follower::new(config.clone(), ConsoleTarget::from_config(&config)?);
    let mut source = PollingLeaderSource::new(config.clone(), pool.poll_interval);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let following = follow(&mut follower, &mut source, async {
        let _ = stop_rx.await;
    });
    let drill = async {
        let measured = async {
            // Let follow apply the current topology first.
            tokio::time::sleep(pool.poll_interval * 2).await;
            let killed = Instant::now();
            cluster.instance("node1")?.stop(StopMode::Immediate).await?;
            cluster.instance("node2")?.promote().await?;
            let promoted = Instant::now();
            // Both clients start at once; each is timed from the promote.
            let (direct, through) = tokio::join!(
                first_write(via(node2), node2, promoted),
                first_write(via(port), node2, promoted)
            );
            let through = through?;
            Ok::<_, anyhow::Error>((
                direct?,
                through,
                through + (promoted - killed).as_secs_f64(),
            ))
        }
        .await;
        // Stop the follower whatever happened, or the join below never ends.
        let _ = stop_tx.send(());
        measured
    };
    let (followed, measured) = tokio::join!(following, drill);
    followed?;
    measured
}
