//! `cargo xtask`: bring up, inspect and tear down a local cluster of real PostgreSQL processes;
//! benchmarks; the test runner CI calls.

mod agents;
mod bench;
mod cluster;
mod deps;
mod drill;
mod drill_dr;
mod drill_frozen;
mod faults;
mod pgbouncer;
mod services;
mod simulate;
mod sites;
mod test;
mod wan;

/// `cargo` for a nested build. `cargo run` gives xtask the variables of its own package
/// (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...); passed on, they trip build scripts that rerun when
/// such variables change, and the nested build recompiles half the dependency tree.
pub fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_CRATE_")
            || k.starts_with("CARGO_PRIMARY_")
            || k == "CARGO_MANIFEST_DIR"
            || k == "CARGO_MANIFEST_PATH"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "pgha developer tasks: local cluster, benchmarks, tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local cluster of real PostgreSQL (primary + streaming replicas) on free loopback ports.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Benchmarks that print medians and ratios measured in the same run.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Failure drills (the seed's test-failover.sh): RTO, lost writes, split brain.
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// The fault-injection suite: real processes on simulated hosts (network namespaces),
    /// partitions, freezes, restarts, etcd faults; a table per scenario (docs/RELIABILITY.md).
    Faults(faults::FaultsArgs),
    /// The agents' deterministic simulation over many seeds (faults, virtual time, invariants).
    Simulate(simulate::SimulateArgs),
    /// Install what the tests need (on Debian as root), then run the whole test suite.
    Test(test::TestArgs),
    /// Install the system packages pgha's tests and local cluster need (Debian, as root).
    InstallDeps,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Cluster { command } => cluster::run(command).await,
            Command::Bench { command } => bench::run(command).await,
            Command::Drill { command } => drill::run(command).await,
            Command::Test(args) => test::run(args),
            Command::Simulate(args) => simulate::run(&args),
            Command::Faults(args) => faults::run(args),
            Command::InstallDeps => deps::ensure_all(),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {}", pgha_config::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
