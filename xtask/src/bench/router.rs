//! `cargo xtask bench router`: throughput through `pgha_router::Router` against raw sqlx pools
//! on the same servers in the same run (select-1 loop, read/write mix; 1, 16, 64 tasks), and the
//! time from a promotion by hand to the router's first successful write.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_local_cluster::{ClusterSpec, LocalCluster};
use pgha_postgres::{connect_params, PgControl, StopMode};
use pgha_router::{Member, Router, RouterOptions, StaticMembers};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Alternating raw/router repetitions per cell; the median is reported. Short alternating
    /// runs keep a busy machine's drift out of the ratio.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Promotions to time (each on a fresh primary + replica).
    #[arg(long, default_value_t = 3)]
    promotions: usize,
    /// Concurrent tasks, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    tasks: Vec<usize>,
    /// Also measure the cost of TLS: router `SELECT 1` on a plain cluster vs a `[tls]` cluster
    /// (verify-full), alternating, same tasks.
    #[arg(long)]
    tls: bool,
}

/// Connections per pool, the same for the raw pools and the router's per-node pools.
const POOL: u32 = 16;
const ROWS: i64 = 1000;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    let base = std::env::temp_dir().join(format!("pgha-bench-router-{}", std::process::id()));
    let result = run_in(&args, &base).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn run_in(args: &Args, base: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut spec = ClusterSpec::new("benchrouter", base.join("throughput"));
    spec.replicas = 1;
    let cluster = LocalCluster::create(&spec)
        .await
        .context("create cluster")?;
    let res = throughput(&cluster, args).await;
    cluster.purge().await.ok();
    let rows = res?;
    let tls_rows = if args.tls {
        tls_cost(args, base).await?
    } else {
        Vec::new()
    };

    let mut promo = Vec::new();
    let mut promo_call = Vec::new();
    for i in 1..=args.promotions {
        let mut spec = ClusterSpec::new("benchpromote", base.join(format!("promote{i}")));
        spec.replicas = 1;
        let cluster = LocalCluster::create(&spec)
            .await
            .context("create cluster")?;
        let r = promotion(&cluster).await;
        cluster.purge().await.ok();
        let (after_return, after_call) = r?;
        eprintln!(
            "promotion {i}: first write on the new primary {:.0} ms after pg_promote() returned ({:.0} ms after it was called)",
            after_return * 1e3,
            after_call * 1e3
        );
        promo.push(after_return);
        promo_call.push(after_call);
    }

    println!(
        "\nbench router: primary + 1 replica, pools of {POOL}, {:.1} s per run, median of {} run(s) (ops/s)",
        args.seconds, args.runs
    );
    println!(
        "  {:<30} {:>5} {:>10} {:>10} {:>7} {:>9} | {:>9} {:>9} {:>9}",
        "workload",
        "tasks",
        "raw ops/s",
        "router",
        "ratio",
        "overhead",
        "raw cpu",
        "router",
        "cpu diff"
    );
    for r in &rows {
        println!(
            "  {:<30} {:>5} {:>10.0} {:>10.0} {:>7.3} {:>8.1}% | {:>7.1}us {:>7.1}us {:>7.1}us",
            r.workload,
            r.tasks,
            r.raw.ops,
            r.router.ops,
            r.router.ops / r.raw.ops,
            (1.0 - r.router.ops / r.raw.ops) * 100.0,
            r.raw.cpu_us,
            r.router.cpu_us,
            r.router.cpu_us - r.raw.cpu_us,
        );
    }
    println!("  goal: overhead <= 3 %. cpu = client process CPU time per operation (user+sys), the router's own cost");
    if !tls_rows.is_empty() {
        println!(
            "\n  TLS cost: router SELECT 1 on the primary, plain TCP vs TLS (verify-full), ops/s"
        );
        println!(
            "  {:>5} {:>10} {:>10} {:>7} | {:>9} {:>9}",
            "tasks", "plain", "tls", "ratio", "plain cpu", "tls cpu"
        );
        for (tasks, plain, tls) in &tls_rows {
            println!(
                "  {tasks:>5} {:>10.0} {:>10.0} {:>7.3} | {:>7.1}us {:>7.1}us",
                plain.ops,
                tls.ops,
                tls.ops / plain.ops,
                plain.cpu_us,
                tls.cpu_us
            );
        }
    }
    if !promo.is_empty() {
        println!(
            "  promotion -> first successful write through the router: median {:.0} ms after pg_promote() returned, {:.0} ms after it was called (goal <= 1000 ms; {} run(s), default options)",
            median(&mut promo) * 1e3,
            median(&mut promo_call) * 1e3,
            promo.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Router `SELECT 1` on the writer, on a plain cluster and on a TLS cluster, alternating.
async fn tls_cost(args: &Args, base: &std::path::Path) -> anyhow::Result<Vec<(usize, Cell, Cell)>> {
    let mut clusters = Vec::new();
    for tls in [false, true] {
        let mut spec = ClusterSpec::new("benchtls", base.join(if tls { "tls" } else { "plain" }));
        spec.replicas = 0;
        spec.tls = tls;
        clusters.push(
            LocalCluster::create(&spec)
                .await
                .context("create cluster")?,
        );
    }
    let result = async {
        let mut routers = Vec::new();
        for c in &clusters {
            let r = Router::builder()
                .config(c.config(), None)
                .options(RouterOptions {
                    max_connections: POOL,
                    ..RouterOptions::default()
                })
                .build()
                .await?;
            anyhow::ensure!(r.primary_name().is_some(), "router found no primary");
            routers.push(Target::Router(r));
        }
        let dur = Duration::from_secs_f64(args.seconds);
        let mut out = Vec::new();
        for &tasks in &args.tasks {
            let (mut plain, mut tls) = (Vec::new(), Vec::new());
            for t in &routers {
                measure(t, Workload::SelectWriter, tasks, Duration::from_millis(300)).await?;
            }
            for run in 0..args.runs.max(1) {
                let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    let s = measure(&routers[i], Workload::SelectWriter, tasks, dur).await?;
                    if i == 0 {
                        plain.push(s)
                    } else {
                        tls.push(s)
                    }
                }
            }
            let (p, t) = (cell(&plain), cell(&tls));
            eprintln!(
                "tls cost {tasks:>3} tasks: plain {:.0} ops/s, tls {:.0} ops/s",
                p.ops, t.ops
            );
            out.push((tasks, p, t));
        }
        for t in routers {
            if let Target::Router(r) = t {
                r.close().await;
            }
        }
        anyhow::Ok(out)
    }
    .await;
    for c in clusters {
        c.purge().await.ok();
    }
    result
}

struct Row {
    workload: &'static str,
    tasks: usize,
    raw: Cell,
    router: Cell,
}

/// Medians of one side of a cell.
#[derive(Clone, Copy)]
struct Cell {
    ops: f64,
    cpu_us: f64,
}

/// One measurement: throughput and client CPU per operation.
#[derive(Clone, Copy)]
struct Sample {
    ops_per_s: f64,
    cpu_us_per_op: f64,
}

fn cell(samples: &[Sample]) -> Cell {
    let mut ops: Vec<f64> = samples.iter().map(|s| s.ops_per_s).collect();
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.cpu_us_per_op).collect();
    Cell {
        ops: median(&mut ops),
        cpu_us: median(&mut cpu),
    }
}

/// CPU seconds (user + system) this process used so far, from /proc/self/stat (100 Hz ticks).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// `SELECT 1` to the primary (router: the writer handle).
    SelectWriter,
    /// `SELECT 1` to the replica (router: the reader handle).
    SelectReader,
    /// 80 % point reads on the replica, 20 % single-row updates on the primary.
    Mix,
}

async fn throughput(cluster: &LocalCluster, args: &Args) -> anyhow::Result<Vec<Row>> {
    let config = cluster.config();
    let p = connect_params(config, &config.nodes[0])?;
    let r = connect_params(config, &config.nodes[1])?;
    let pool = |o: sqlx::postgres::PgConnectOptions| {
        PgPoolOptions::new()
            .max_connections(POOL)
            .connect_lazy_with(o)
    };
    let raw_primary = pool(p.options());
    let raw_replica = pool(r.options());
    // The router over the same two servers, with the same connect options.
    let members = vec![
        Member::new(&config.nodes[0].name, p.options()),
        Member::new(&config.nodes[1].name, r.options()),
    ];
    let router = Router::builder()
        .discovery(Arc::new(StaticMembers::new("bench", members)))
        .options(RouterOptions {
            max_connections: POOL,
            ..RouterOptions::default()
        })
        .build()
        .await?;
    anyhow::ensure!(router.primary_name().is_some(), "router found no primary");
    sqlx::query("CREATE TABLE kv (id bigint PRIMARY KEY, v bigint NOT NULL)")
        .execute(&raw_primary)
        .await?;
    sqlx::query("INSERT INTO kv SELECT g, 0 FROM generate_series(1, $1) g")
        .bind(ROWS)
        .execute(&raw_primary)
        .await?;
    // Wait until the replica has the rows and the router lets it serve reads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kv")
            .fetch_one(&raw_replica)
            .await
            .unwrap_or(0);
        let replica_up = router
            .nodes()
            .iter()
            .any(|n| n.state == pgha_router::NodeState::Up && !n.is_writer);
        if n == ROWS && replica_up {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "replica did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dur = Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::new();
    for (workload, name) in [
        (Workload::SelectWriter, "select 1, primary (writer)"),
        (Workload::SelectReader, "select 1, replica (reader)"),
        (Workload::Mix, "80% reads / 20% writes"),
    ] {
        for &tasks in &args.tasks {
            let mut raw = Vec::new();
            let mut rtr = Vec::new();
            // Warm both paths once (connections, statement caches).
            let warm = Duration::from_millis(300);
            let raw_t = Target::Raw(raw_primary.clone(), raw_replica.clone());
            let rtr_t = Target::Router(router.clone());
            measure(&raw_t, workload, tasks, warm).await?;
            measure(&rtr_t, workload, tasks, warm).await?;
            for run in 0..args.runs.max(1) {
                // Alternate who goes first so a drifting machine load favours neither.
                if run % 2 == 0 {
                    raw.push(measure(&raw_t, workload, tasks, dur).await?);
                    rtr.push(measure(&rtr_t, workload, tasks, dur).await?);
                } else {
                    rtr.push(measure(&rtr_t, workload, tasks, dur).await?);
                    raw.push(measure(&raw_t, workload, tasks, dur).await?);
                }
            }
            let row = Row {
                workload: name,
                tasks,
                raw: cell(&raw),
                router: cell(&rtr),
            };
            eprintln!(
                "{name:<30} {tasks:>3} tasks: raw {:.0} ops/s {:.1} us cpu/op, router {:.0} ops/s {:.1} us cpu/op",
                row.raw.ops, row.raw.cpu_us, row.router.ops, row.router.cpu_us
            );
            rows.push(row);
        }
    }
    router.close().await;
    Ok(rows)
}

#[derive(Clone)]
enum Target {
    Raw(PgPool, PgPool),
    Router(Router),
}

/// Operations per second of `tasks` tasks running `workload` for `dur`.
async fn measure(
    target: &Target,
    workload: Workload,
    tasks: usize,
    dur: Duration,
) -> anyhow::Result<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (target, stop, ops) = (target.clone(), stop.clone(), ops.clone());
        handles.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let id = (seed % ROWS as u64) as i64 + 1;
                let write = workload == Workload::Mix && seed.is_multiple_of(5);
                one_op(&target, workload, write, id).await?;
                n += 1;
            }
            ops.fetch_add(n, Relaxed);
            anyhow::Ok(())
        }));
    }
    let t = Instant::now();
    let cpu = process_cpu_seconds();
    tokio::time::sleep(dur).await;
    stop.store(true, Relaxed);
    for h in handles {
        h.await??;
    }
    let n = ops.load(Relaxed).max(1) as f64;
    Ok(Sample {
        ops_per_s: n / t.elapsed().as_secs_f64(),
        cpu_us_per_op: (process_cpu_seconds() - cpu) * 1e6 / n,
    })
}

async fn one_op(target: &Target, workload: Workload, write: bool, id: i64) -> anyhow::Result<()> {
    match (target, workload) {
        (Target::Raw(p, _), Workload::SelectWriter) => {
            sqlx::query("SELECT 1").execute(p).await?;
        }
        (Target::Router(r), Workload::SelectWriter) => {
            sqlx::query("SELECT 1").execute(r.writer()).await?;
        }
        (Target::Raw(_, rp), Workload::SelectReader) => {
            sqlx::query("SELECT 1").execute(rp).await?;
        }
        (Target::Router(r), Workload::SelectReader) => {
            sqlx::query("SELECT 1").execute(r.reader()).await?;
        }
        (t, Workload::Mix) => {
            let (upd, sel) = (
                sqlx::query("UPDATE kv SET v = v + 1 WHERE id = $1").bind(id),
                sqlx::query_scalar::<_, i64>("SELECT v FROM kv WHERE id = $1").bind(id),
            );
            match (t, write) {
                (Target::Raw(p, _), true) => {
                    upd.execute(p).await?;
                }
                (Target::Raw(_, rp), false) => {
                    sel.fetch_one(rp).await?;
                }
                (Target::Router(r), true) => {
                    upd.execute(r.writer()).await?;
                }
                (Target::Router(r), false) => {
                    sel.fetch_one(r.reader()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Stops the primary (immediate), promotes the replica with `SELECT pg_promote()` and returns
/// seconds from pg_promote() returning, and from calling it, to the first write through the
/// router that succeeds on the new primary. Writes run in a loop throughout, as idempotent
/// calls, with the router's default options.
async fn promotion(cluster: &LocalCluster) -> anyhow::Result<(f64, f64)> {
    let config = cluster.config();
    let router = Router::builder().config(config, None).build().await?;
    sqlx::query("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .execute(router.writer())
        .await?;
    let new_port = i32::from(config.nodes[1].port);
    let first_ok: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (router, first_ok, stop) = (router.clone(), first_ok.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let r = router
                    .idempotent(|| {
                        sqlx::query_scalar::<_, i32>(
                            "INSERT INTO ticks DEFAULT VALUES RETURNING inet_server_port()",
                        )
                        .fetch_one(router.writer())
                    })
                    .await;
                if let Ok(port) = r {
                    if port == new_port {
                        if let Ok(mut f) = first_ok.lock() {
                            f.get_or_insert_with(Instant::now);
                        }
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut replica = cluster.instance(&config.nodes[1].name)?.connect().await?;
    cluster
        .instance(&config.nodes[0].name)?
        .stop(StopMode::Immediate)
        .await?;
    let called = Instant::now();
    let promoted: bool = sqlx::query_scalar("SELECT pg_promote()")
        .fetch_one(&mut replica)
        .await?;
    let returned = Instant::now();
    anyhow::ensure!(promoted, "pg_promote() returned false");
    let deadline = Instant::now() + Duration::from_secs(30);
    let at = loop {
        if let Some(t) = first_ok.lock().ok().and_then(|f| *f) {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no write reached the new primary in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.store(true, Relaxed);
    writer.abort();
    router.close().await;
    let secs = |from: Instant| at.saturating_duration_since(from).as_secs_f64();
    Ok((secs(returned), secs(called)))
}
