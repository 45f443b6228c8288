//! `cargo xtask bench cluster-up`: time to bring up a primary and 2 replicas, and for the
//! replicas to replay a burst of single-row inserts; medians over repeated runs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_local_cluster::{ClusterSpec, LocalCluster};
use pgha_postgres::Lsn;

use super::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Inserts per run.
    #[arg(long, default_value_t = 10_000)]
    inserts: usize,
}

pub async fn run(Args { runs, inserts }: Args) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    let base = std::env::temp_dir().join(format!("pgha-bench-{}", std::process::id()));
    let mut up = Vec::new();
    let mut write = Vec::new();
    let mut replay = Vec::new();
    for run in 1..=runs.max(1) {
        let root = base.join(format!("run{run}"));
        let spec = ClusterSpec::new("bench", &root);
        let t = Instant::now();
        let cluster = LocalCluster::create(&spec)
            .await
            .context("create cluster")?;
        let up_s = t.elapsed().as_secs_f64();
        let result = replay_inserts(&cluster, inserts).await;
        cluster.purge().await.ok();
        let (w, r) = result?;
        eprintln!("run {run}: up {up_s:.2} s, {inserts} inserts {w:.2} s, replicas replayed {r:.3} s after the last commit");
        up.push(up_s);
        write.push(w);
        replay.push(r);
    }
    let _ = std::fs::remove_dir_all(&base);
    println!(
        "\nbench cluster-up: primary + 2 replicas, median of {} run(s)",
        up.len()
    );
    println!(
        "  {:<44} {:>8.2} s   (target <= 10 s)",
        "cluster up (initdb, 2 x basebackup, streaming)",
        median(&mut up)
    );
    println!(
        "  {:<44} {:>8.2} s",
        format!("{inserts} single-row inserts (autocommit)"),
        median(&mut write)
    );
    println!(
        "  {:<44} {:>8.3} s",
        "replay on both replicas after last commit",
        median(&mut replay)
    );
    Ok(ExitCode::SUCCESS)
}

/// Inserts `n` rows one statement each, then waits until both replicas replayed the last one.
async fn replay_inserts(cluster: &LocalCluster, n: usize) -> anyhow::Result<(f64, f64)> {
    let primary = cluster.instance(&cluster.first_node().name)?;
    let mut conn = primary.connect_params().connect().await?;
    sqlx::query("CREATE TABLE bench (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        .execute(&mut conn)
        .await?;
    let t = Instant::now();
    for i in 0..n as i64 {
        sqlx::query("INSERT INTO bench (id) VALUES ($1)")
            .bind(i)
            .execute(&mut conn)
            .await?;
    }
    let write_s = t.elapsed().as_secs_f64();
    let target: Lsn = sqlx::query_scalar("SELECT pg_current_wal_lsn()")
        .fetch_one(&mut conn)
        .await?;
    let t = Instant::now();
    let mut replicas = Vec::new();
    for node in &cluster.config().nodes[1..] {
        replicas.push(
            cluster
                .instance(&node.name)?
                .connect_params()
                .connect()
                .await?,
        );
    }
    for r in &mut replicas {
        loop {
            let at: Option<Lsn> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()")
                .fetch_one(&mut *r)
                .await?;
            if at.is_some_and(|a| a >= target) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("replica did not replay to {target} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok((write_s, t.elapsed().as_secs_f64()))
}
