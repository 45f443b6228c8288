//! `pgha verify` against a real cluster, a real exporter (in-process) and a real backup
//! repository: a healthy cluster passes; the exporter down, a stale or missing backup, a gap in
//! the WAL archive, replay paused and a stopped replica each fail their own check with exit
//! code 2.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use pgha_postgres::{PgControl, StopMode};
use pgha_test_support::{free_port, TestCluster};

fn verify(config: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgha"))
        .arg("verify")
        .args(["--marker-timeout", "2s"])
        .args(extra)
        .env("PGHA_CONFIG", config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of check `name` in the table.
fn row<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` row in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_healthy_cluster_and_fails_the_right_check_for_each_fault(
) -> anyhow::Result<()> {
    let exporter_port = free_port("127.0.0.1")?;
    let repo = tempfile::tempdir()?;
    // WAL archiving on, into a plain directory the server user can write: the backup check
    // reads pg_stat_archiver.
    let archive = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(archive.path(), std::fs::Permissions::from_mode(0o777))?;
    }
    let c = TestCluster::builder()
        .replicas(2)
        .parameter("archive_mode", "on")
        .parameter(
            "archive_command",
            &format!("cp %p {}/%f", archive.path().display()),
        )
        .extra_toml(&format!(
            "[monitoring]\nlisten = \"127.0.0.1:{}\"\n\n[backup]\nschedule = [\"0 2 * * *\"]\n\
             [backup.repository]\npath = \"{}\"\n",
            exporter_port.port,
            repo.path().display()
        ))
        .start()
        .await?;
    let cfg = c.config_path();

    // No exporter yet and an empty repository: both fail, the rest passes, DCS is skipped.
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(row(&out, "exporter").contains("FAIL"), "{out}");
    assert!(row(&out, "backup").contains("no complete backup"), "{out}");
    assert!(row(&out, "dcs leader").contains("skip"), "{out}");
    assert!(row(&out, "pgbouncer").contains("skip"), "{out}");
    assert!(row(&out, "marker row").contains("pass"), "{out}");
    assert!(row(&out, "single primary").contains("node1"), "{out}");

    // The exporter (in-process, real HTTP) and a real base backup: everything passes.
    let exporter = Arc::new(pgha_monitoring::Exporter::new(
        c.config(),
        None,
        Vec::new(),
    )?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", exporter_port.port)).await?;
    drop(exporter_port);
    let served = tokio::spawn(pgha_exporter::serve(
        listener,
        exporter,
        Arc::new(pgha_monitoring::web_config::WebConfig::none()),
    ));
    let section = c.config().backup.clone().unwrap();
    let storage = pgha_backup_core::storage::open(&section)?;
    let m = pgha_backup_core::take_backup(
        c.config(),
        storage.clone(),
        &pgha_backup_core::BackupOptions {
            kind: Default::default(),
            node: None,
            from_standby: false,
            parallel: 2,
            level: 1,
            progress: false,
            encrypted: false,
        },
    )
    .await?;
    // The server archived with cp: put that WAL into the repository as wal-push would.
    for e in std::fs::read_dir(archive.path())? {
        pgha_backup_core::wal::push(storage.as_ref(), &e?.path()).await?;
    }
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(row(&out, "exporter").contains("pass"), "{out}");
    assert!(
        row(&out, "archive").contains("can replay to the end"),
        "{out}"
    );

    // The backup's first segment gone from the repository: the archive check fails naming it.
    let key = pgha_backup_core::wal::wal_key(&m.start_wal)?;
    let kept = storage.get(&key).await?;
    storage.delete(&key).await?;
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        row(&out, "archive").contains(&format!("segment {} is missing", m.start_wal)),
        "{out}"
    );
    storage.put(&key, kept).await?;
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        row(&out, "backup").contains("WAL archived through"),
        "{out}"
    );
    assert!(out.contains("VERIFY OK"), "{out}");

    // A stale backup: the newest is older than allowed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let o = verify(&cfg, &["--max-backup-age", "1s"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(row(&out, "backup").contains("is stale"), "{out}");

    // JSON output carries the same checks.
    let o = verify(&cfg, &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "marker row"));

    // Replay paused on node2: the marker never shows there.
    let mut r2 = c.conn("node2").await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut r2)
        .await?;
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(row(&out, "marker row").contains("node2"), "{out}");
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut r2)
        .await?;

    // A stopped replica: its node row fails (and the marker skips it).
    c.instance("node3")?.stop(StopMode::Fast).await?;
    let o = verify(&cfg, &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(row(&out, "node node3").contains("FAIL"), "{out}");
    assert!(row(&out, "node node2").contains("pass"), "{out}");

    // The exporter down fails its check.
    served.abort();
    let _ = served.await;
    let o = verify(&cfg, &[]);
    assert!(row(&text(&o), "exporter").contains("FAIL"), "{}", text(&o));
    Ok(())
}
