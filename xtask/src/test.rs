//! `cargo xtask test`: the one test command (README, CI). Installs what the tests need, then runs
//! every test of the workspace with cargo-nextest (cargo test when nextest is absent).

use std::process::ExitCode;

use anyhow::Context;

use crate::deps;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Extra arguments for the test runner (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    deps::ensure_postgres()?;
    deps::ensure_ha()?;
    deps::ensure_netns()?;
    deps::ensure_moto()?;
    let nextest = crate::cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut cmd = crate::cargo();
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test");
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(&args.args);
    let st = cmd.status().context("run the test runner")?;
    Ok(ExitCode::from(st.code().unwrap_or(1) as u8))
}
