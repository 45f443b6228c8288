//! The `pgha` binary against a real cluster: status, render, check exit codes, config errors.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pgha_postgres::{PgControl, StopMode};
use pgha_test_support::TestCluster;

fn pgha(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(args)
        .env("PGHA_CONFIG", config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["check", "replication"];
    args.extend_from_slice(extra);
    let o = pgha(config, &args);
    (o.status.code().unwrap(), stdout(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_replication_returns_each_nagios_code() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let cfg = c.config_path();

    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("REPLICATION OK - primary node1, 2/2 replicas streaming"),
        "{out}"
    );

    // Lag: replay paused on node2 while the primary writes ~3 MB.
    let mut r = c.conn("node2").await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut r)
        .await?;
    let mut p = c.conn("node1").await?;
    sqlx::query("CREATE TABLE fill AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)")
        .execute(&mut p)
        .await?;
    TestCluster::eventually(Duration::from_secs(20), "node2 lag above 1MB", || async {
        let (code, _) = check(
            &cfg,
            &["--max-lag-bytes", "1MB", "--max-lag-seconds", "3600"],
        );
        Ok((code == 2).then_some(()))
    })
    .await?;
    let (code, out) = check(
        &cfg,
        &["--max-lag-bytes", "1MB", "--max-lag-seconds", "3600"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("REPLICATION CRITICAL") && out.contains("node2 lag"),
        "{out}"
    );
    let (code, out) = check(
        &cfg,
        &[
            "--warn-lag-bytes",
            "1MB",
            "--max-lag-bytes",
            "1GB",
            "--max-lag-seconds",
            "3600",
        ],
    );
    assert_eq!(code, 1, "{out}");
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut r)
        .await?;
    TestCluster::eventually(Duration::from_secs(20), "OK again after resume", || async {
        Ok((check(&cfg, &[]).0 == 0).then_some(()))
    })
    .await?;

    // One replica down: degraded, WARNING.
    c.instance("node3")?.stop(StopMode::Fast).await?;
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("node3 unreachable") && out.contains("1/2 replicas streaming"),
        "{out}"
    );

    // No replica streaming: CRITICAL.
    c.instance("node2")?.stop(StopMode::Fast).await?;
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, 2, "{out}");

    // Primary down too: CRITICAL, no primary.
    c.instance("node1")?.stop(StopMode::Fast).await?;
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no writable primary"), "{out}");

    // The check cannot run at all: UNKNOWN.
    let (code, out) = check(Path::new("/nonexistent/pgha.toml"), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("REPLICATION UNKNOWN")
            && out.contains("/nonexistent/pgha.toml (from PGHA_CONFIG)"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_render_reflect_the_live_cluster() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let cfg = c.config_path();
    let o = pgha(&cfg, &["status", "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["primary"], "node1");
    assert_eq!(v["nodes"][1]["streaming"], true);
    assert_eq!(v["nodes"][1]["role"], "replica");

    let o = pgha(&cfg, &["status"]);
    let table = stdout(&o);
    assert!(
        table.contains("primary node1") && table.contains("streaming"),
        "{table}"
    );

    let out = tempfile::tempdir()?;
    let o = pgha(&cfg, &["render", "--out", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let node_conf = std::fs::read_to_string(out.path().join("node2/pgha-node.conf"))?;
    let p_port = c.config().node("node1").unwrap().port;
    assert!(node_conf.contains(&format!("port={p_port}")), "{node_conf}");
    // What render shows is what runs.
    let live = std::fs::read_to_string(
        c.config()
            .node("node2")
            .unwrap()
            .data_dir
            .join("pgha-node.conf"),
    )?;
    assert_eq!(node_conf, live);
    let hba = std::fs::read_to_string(out.path().join("node1/pg_hba.conf"))?;
    assert!(!hba.contains("trust"));
    Ok(())
}

#[test]
fn bad_config_names_the_file_and_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgha.toml");
    std::fs::write(
        &path,
        r#"
[cluster]
name = "demo"
[replication]
password = { env = "PW" }
mode = "sync"
sync_standbys = 5
[[nodes]]
name = "node1"
host = "10.0.0.1"
port = 5432
data_dir = "/var/lib/pg/a"
[[nodes]]
name = "node2"
host = "10.0.0.1"
port = 5432
data_dir = "/var/lib/pg/a"
"#,
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["--config", path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{} (from --config)", path.display())),
        "{err}"
    );
    assert!(
        err.contains("nodes[1].port: 5432 is used by nodes[0]"),
        "{err}"
    );
    assert!(err.contains("nodes[1].data_dir"), "{err}");
    assert!(
        err.contains("replication.sync_standbys: 5 is out of range"),
        "{err}"
    );

    std::fs::write(&path, "[cluster]\nname = \"x\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\nprot = 1\ndata_dir = \"/d\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pgha"))
        .args(["--config", path.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 6") && err.contains("unknown field `prot`"),
        "{err}"
    );
}

/// `pgha edit-config` refuses before touching the DCS when there is nothing to change, a
/// malformed pair, or nobody at a terminal to confirm (the DCS round trip is tested with real
/// agents in bins/pgha-agent/tests/dynamic_config.rs).
#[test]
fn edit_config_refuses_bad_arguments_and_unconfirmed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgha.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"x\"\n[replication]\npassword = { env = \"PGHA_T_UNUSED\" }\n\
         [dcs]\netcd = [\"http://127.0.0.1:1\"]\n\
         [[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\ndata_dir = \"/d\"\n",
    )
    .unwrap();
    for (args, want) in [
        (vec!["edit-config"], "nothing to change"),
        (
            vec!["edit-config", "--pg", "work_mem"],
            "--pg work_mem: expected KEY=VALUE",
        ),
        (
            vec!["edit-config", "--set", "a..b=1"],
            "`a..b` is not a key",
        ),
        (
            vec!["edit-config", "--pg", "work_mem=8MB"],
            "pass --force to write without asking",
        ),
        // The agents own synchronous_standby_names: no switch under them.
        (
            vec!["set-mode", "async", "--force"],
            "[dcs] is set, so the agents manage the replication mode",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_pgha"))
            .args(["--config", path.to_str().unwrap()])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
