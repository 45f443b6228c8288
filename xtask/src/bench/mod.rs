//! `cargo xtask bench ...`: benchmarks. Each prints medians and, where there is a baseline,
//! ratios against it measured in the same run. One module per benchmark.

mod backup;
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
        BenchCommand::Router(args) => router::run(args).await,
        BenchCommand::Backup(args) => backup::run(args).await,
    }
}

/// Median of `v` (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
