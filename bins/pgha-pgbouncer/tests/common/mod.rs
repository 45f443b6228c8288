//! Helpers shared by the PgBouncer test files.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgha_config::Secret;
use pgha_test_support::TestCluster;

/// The cluster's pgha.toml plus a `[pooling]` section on `port`, as `<root>/pgha-pool.toml`.
pub fn pool_config(c: &TestCluster, port: u16, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(c.config_path()).unwrap();
    let dir = c.root().join("pgbouncer");
    let section = format!(
        "\n[pooling]\nlisten_port = {port}\ndatabases = [\"app\"]\nusers = [\"app\"]\n\
         ini_path = \"{d}/pgbouncer.ini\"\nuserlist_path = \"{d}/userlist.txt\"\n{extra}\n",
        d = dir.display()
    );
    let path = c.root().join("pgha-pool.toml");
    std::fs::write(&path, base + &section).unwrap();
    path
}

/// Role `app` with `password` (set as a SCRAM verifier) owning database `app`.
pub async fn create_app(c: &TestCluster, primary: &str, password: &str) -> anyhow::Result<()> {
    let mut p = c.conn(primary).await?;
    let v = pgha_postgres::scram::verifier(&Secret::new(password));
    sqlx::query(&format!("CREATE ROLE app LOGIN PASSWORD '{v}'"))
        .execute(&mut p)
        .await?;
    sqlx::query("CREATE DATABASE app OWNER app")
        .execute(&mut p)
        .await?;
    Ok(())
}

/// `pgha-pgbouncer ARGS` with `PGHA_CONFIG=config`.
pub fn bin(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha-pgbouncer"))
        .args(args)
        .env("PGHA_CONFIG", config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
