//! `cargo xtask`: bring up, inspect and tear down a local cluster of real PostgreSQL processes;
//! benchmarks; the test runner CI calls.

mod bench;
mod cluster;
mod deps;
mod pgbouncer;
mod test;

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
    /// Install what the tests need (on Debian as root), then run the whole test suite.
    Test(test::TestArgs),
    /// Install the system packages pgha's tests and local cluster need (Debian, as root).
    InstallDeps,
}

fn main() -> ExitCode {
    pgha::logging::init(1);
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
            Command::Test(args) => test::run(args),
            Command::InstallDeps => deps::ensure_all(),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {}", pgha::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
