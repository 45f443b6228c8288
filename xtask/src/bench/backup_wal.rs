//! The third phase of `cargo xtask bench backup`: WAL archiving under load. `pgbench -c 8`
//! runs for a while with archive_command set to one tool at a time (ours: `wal-push` with
//! `archive_push_parallel`; pgBackRest: `archive-push` with archive-async=y, process-max=2);
//! the segments waiting (`archive_status/*.ready`) are sampled every 250 ms; then the time
//! until the backlog is drained.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_local_cluster::LocalCluster;

use super::backup::sh;

/// One tool's figures.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalFigures {
    pub segments: u64,
    pub max_behind: usize,
    pub end_behind: usize,
    pub drain_s: f64,
    pub tps: f64,
}

fn ready(status: &Path) -> usize {
    std::fs::read_dir(status)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count()
        })
        .unwrap_or(0)
}

/// Runs pgbench for `seconds` with `archive_command`, sampling the backlog.
pub async fn run(
    cluster: &LocalCluster,
    pgbin: &Path,
    archive_command: &str,
    seconds: u64,
) -> anyhow::Result<WalFigures> {
    let node = cluster.first_node().clone();
    let params = cluster.instance(&node.name)?.connect_params().clone();
    let mut conn = params.connect().await?;
    sqlx::query(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive_command.replace('\'', "''")
    ))
    .execute(&mut conn)
    .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut conn)
        .await?;
    let status = node.data_dir.join("pg_wal/archive_status");
    // Start from an empty backlog.
    let t = Instant::now();
    while ready(&status) > 0 && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lsn0: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    let max = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (max, stop, status) = (max.clone(), stop.clone(), status.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(ready(&status), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let password = params
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .unwrap_or_default();
    let out = sh(
        Command::new(pgbin.join("pgbench"))
            .args(["-c", "8", "-j", "2", "-T", &seconds.to_string(), "-n"])
            .args(["-h", &params.host, "-p", &params.port.to_string()])
            .args(["-U", &params.user, "postgres"])
            .env("PGPASSWORD", &password),
        "pgbench -c 8",
    )?;
    let end_behind = ready(&status);
    stop.store(true, Ordering::Relaxed);
    sampler.await.context("sampler")?;
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let lsn1: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    let bytes: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint")
        .bind(&lsn1)
        .bind(&lsn0)
        .fetch_one(&mut conn)
        .await?;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut conn)
        .await?;
    let t = Instant::now();
    while ready(&status) > 0 {
        if t.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the archive did not catch up within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(WalFigures {
        segments: bytes.max(0) as u64 / (16 << 20),
        max_behind: max.load(Ordering::Relaxed),
        end_behind,
        drain_s: t.elapsed().as_secs_f64(),
        tps,
    })
}
