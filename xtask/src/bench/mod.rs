//! `cargo xtask bench ...`: benchmarks. Each prints medians and, where there is a baseline,
//! ratios against it measured in the same run. One module per benchmark.

mod backup;
mod backup_incr;
mod backup_wal;
mod cluster_up;
mod exporter;
mod pgbouncer;
mod router;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time to bring up a primary + 2 replicas, and for the replicas to replay 10,000 inserts.
    ClusterUp(cluster_up::Args),
    /// pgbench -S, a write mix and -S -C through PgBouncer vs direct to PostgreSQL, with ratios.
    Pgbouncer(pgbouncer::Args),
    /// pgha-exporter vs prometheus-postgres-exporter on one instance: latency, RSS, CPU, series.
    Exporter(exporter::Args),
    /// Router vs raw sqlx pools (select 1, read/write mix at 1/16/64 tasks) and promotion-to-first-write.
    Router(router::Args),
    /// pgbench scale 50: pgha-backup vs pgBackRest vs pg_dump | gzip (backup, restore until ready, sizes).
    Backup(backup::Args),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::ClusterUp(args) => cluster_up::run(args).await,
        BenchCommand::Pgbouncer(args) => pgbouncer::run(args).await,
        BenchCommand::Exporter(args) => exporter::run(args).await,
        // The router runs inside xtask: measure it as a service would ship it, optimized.
        BenchCommand::Router(_) if cfg!(debug_assertions) => rerun_optimized(),
        BenchCommand::Router(args) => router::run(args).await,
        BenchCommand::Backup(args) => backup::run(args).await,
    }
}

/// Median of `v` (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs this same xtask command again from a release build (for benchmarks whose measured code
/// is linked into xtask itself), and returns its exit status.
fn rerun_optimized() -> anyhow::Result<ExitCode> {
    eprintln!("xtask: this benchmark measures code linked into xtask; building xtask --release");
    let st = crate::cargo()
        .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run cargo for the release build: {e}"))?;
    Ok(match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
