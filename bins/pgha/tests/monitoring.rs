//! `pgha check connections`, `pgha check archiving` and `pgha render alerts` against a real
//! primary whose archive_command fails.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pgha_test_support::TestCluster;

fn pgha(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .env("PGHA_CONFIG", config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn code_and_line(o: &Output) -> (i32, String) {
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_and_rendered_alerts() -> anyhow::Result<()> {
    let c = TestCluster::builder()
        .replicas(0)
        .parameter("archive_mode", "on")
        .parameter("archive_command", "/bin/false")
        .start()
        .await?;
    let cfg = c.config_path();

    let (code, out) = code_and_line(&pgha(&cfg, &["check", "connections"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("CONNECTIONS OK - node1 "), "{out}");
    let (code, out) = code_and_line(&pgha(
        &cfg,
        &["check", "connections", "--warn-ratio", "0.001"],
    ));
    assert_eq!(code, 1, "{out}");
    let (code, out) = code_and_line(&pgha(
        &cfg,
        &[
            "check",
            "connections",
            "--warn-ratio",
            "0.001",
            "--crit-ratio",
            "0.002",
        ],
    ));
    assert_eq!(code, 2, "{out}");

    // Archiving: a WAL switch makes the failing archive_command run.
    let mut p = c.conn("node1").await?;
    sqlx::query("CREATE TABLE t AS SELECT 1 AS v")
        .execute(&mut p)
        .await?;
    sqlx::query("SELECT pg_switch_wal()")
        .execute(&mut p)
        .await?;
    TestCluster::eventually(Duration::from_secs(20), "archiving CRITICAL", || async {
        let (code, out) = code_and_line(&pgha(&cfg, &["check", "archiving"]));
        Ok((code == 2 && out.starts_with("ARCHIVING CRITICAL - archiving failing")).then_some(()))
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("alerts.yml");
    let o = pgha(
        &cfg,
        &["render", "alerts", "--out", rules.to_str().unwrap()],
    );
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(&rules)?;
    assert!(text.contains("alert: PostgresqlDown"), "{text}");
    assert!(
        text.contains("pg_replication_lag_bytes > 67108864"),
        "{text}"
    );
    Ok(())
}
