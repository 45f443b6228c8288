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

/// The root of the clone this xtask runs for, found at run time: the parent of the
/// `CARGO_MANIFEST_DIR` that `cargo run` (the `cargo xtask` alias) sets, else the nearest
/// ancestor of the working directory with a `[workspace]` Cargo.toml. Never the compile-time
/// path: with a shared `CARGO_TARGET_DIR` one xtask binary serves several clones.
pub fn workspace_root() -> std::path::PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    root_from(
        std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from),
        &cwd,
    )
    .unwrap_or(cwd)
}

fn root_from(
    manifest_dir: Option<std::path::PathBuf>,
    cwd: &std::path::Path,
) -> Option<std::path::PathBuf> {
    let is_root = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
    };
    if let Some(root) = manifest_dir.as_deref().and_then(|m| m.parent()) {
        if is_root(root) {
            return Some(root.to_path_buf());
        }
    }
    cwd.ancestors()
        .find(|d| is_root(d))
        .map(|d| d.to_path_buf())
}

#[cfg(test)]
mod root_tests {
    #[test]
    fn the_root_follows_the_running_clone_not_the_build() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("xtask/src")).unwrap();
            std::fs::write(d.join("Cargo.toml"), "[workspace]\n").unwrap();
        }
        // cargo run from clone b sets b's manifest dir, whatever the binary's build.
        assert_eq!(
            super::root_from(Some(b.path().join("xtask")), a.path()),
            Some(b.path().to_path_buf())
        );
        // Without it: the nearest workspace above the working directory.
        assert_eq!(
            super::root_from(None, &a.path().join("xtask/src")),
            Some(a.path().to_path_buf())
        );
        assert_eq!(super::root_from(None, std::path::Path::new("/")), None);
    }
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
