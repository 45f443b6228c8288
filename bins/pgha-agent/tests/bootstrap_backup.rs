//! `bootstrap.method = "backup"` with real PostgreSQL and etcd: a cluster's base backup and
//! archived WAL become a new cluster. The agents on empty data dirs race for the `initialize`
//! key; the winner restores the backup, recovers through the archive (rows written after the
//! backup included), promotes on a new timeline whose history file reaches the archive, and
//! leads with its own settings; the others clone from it.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use pgha_backup_core::storage::LocalFs;
use pgha_backup_core::{BackupKind, BackupOptions};
use pgha_failover::dcs::{Dcs, EtcdDcs};
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(90);

async fn count(h: &TestCluster, node: &str) -> anyhow::Result<i64> {
    let mut c = h.conn(node).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut c)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_bootstrap_a_new_cluster_from_a_backup_and_the_archive() -> anyhow::Result<()> {
    let work = tempfile::Builder::new()
        .prefix("pgha-boot-backup-")
        .tempdir()?;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let archive = work.path().join("wal");
    let repo = work.path().join("repo");
    std::fs::create_dir(&archive)?;
    if let Some(u) = pgha_postgres::OsUser::for_server("postgres")? {
        u.chown(&archive)?;
    }
    let a = archive.display();
    let toml = format!(
        "[backup.repository]\npath = \"{}\"\n\n[bootstrap]\nmethod = \"backup\"\n\
         restore_command = \"cp {a}/%f %p\"\n",
        repo.display()
    );
    let builder = TestCluster::builder()
        .replicas(2)
        .parameter("archive_mode", "on")
        .parameter(
            "archive_command",
            &format!("test ! -f {a}/%f && cp %p {a}/%f"),
        )
        .extra_toml(&toml);
    let mut first_timeline = 0;
    let tl = &mut first_timeline;
    let h = HaCluster::start_empty_after(
        Path::new(env!("CARGO_BIN_EXE_pgha-agent")),
        builder,
        TEST_FAILOVER_TOML,
        async |c: &TestCluster| {
            let primary = c.node_names()[0].clone();
            let mut conn = c.conn(&primary).await?;
            sqlx::query("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
                .execute(&mut conn)
                .await?;
            let storage = std::sync::Arc::new(LocalFs::new(&repo));
            let opts = BackupOptions {
                kind: BackupKind::Full,
                node: Some(primary.clone()),
                from_standby: false,
                parallel: 1,
                level: 1,
                progress: false,
                encrypted: false,
            };
            let m = pgha_backup_core::take_backup(c.config(), storage, &opts).await?;
            *tl = m.timeline;
            // Written after the backup: only the archived WAL has these.
            sqlx::query("INSERT INTO t SELECT generate_series(101, 150)")
                .execute(&mut conn)
                .await?;
            let wal: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
                .fetch_one(&mut conn)
                .await?;
            let (wal, primary) = (&wal, &primary);
            TestCluster::eventually(T, "the WAL after the backup archived", move || async move {
                let mut conn = c.conn(primary).await?;
                let last: Option<String> =
                    sqlx::query_scalar("SELECT last_archived_wal FROM pg_stat_archiver")
                        .fetch_one(&mut conn)
                        .await?;
                Ok(last.filter(|l| l >= wal))
            })
            .await?;
            Ok(())
        },
    )
    .await?;
    let leader = h.wait_single_primary(T, None).await?;
    for n in h.cluster.node_names() {
        if n != leader {
            h.wait_streaming_replica(&n, T).await?;
        }
    }
    // Every row, the ones only the archive had included, on every node.
    for n in h.cluster.node_names() {
        let (c, n) = (&h.cluster, &n);
        TestCluster::eventually(T, "every row on every node", move || async move {
            Ok((count(c, n).await? == 150).then_some(()))
        })
        .await?;
    }
    let cfg = h.cluster.config().clone();
    let view = EtcdDcs::from_config(&cfg, "test").await?.view().await?;
    let init = view.initialize.expect("the initialize key");
    assert_eq!((init.by.as_str(), init.done), (leader.as_str(), true));
    let mut c = h.cluster.conn(&leader).await?;
    // Promoted on a new timeline, its history file archived (archiving stayed on).
    let timeline: i32 = sqlx::query_scalar("SELECT timeline_id FROM pg_control_checkpoint()")
        .fetch_one(&mut c)
        .await?;
    assert!(
        timeline as u32 > first_timeline,
        "{timeline} vs {first_timeline}"
    );
    let history = archive.join(format!("{timeline:08X}.history"));
    let history = &history;
    TestCluster::eventually(
        T,
        "the new timeline's history file archived",
        move || async move { Ok(history.exists().then_some(())) },
    )
    .await?;
    // The restore's recovery settings are gone: the node's own settings apply.
    let mode: String = sqlx::query_scalar("SHOW archive_mode")
        .fetch_one(&mut c)
        .await?;
    assert_eq!(mode, "on");
    let node = cfg.node(&leader).unwrap();
    let auto = std::fs::read_to_string(node.data_dir.join("postgresql.auto.conf"))?;
    assert!(!auto.contains("pgha-backup restore"), "{auto}");
    let log = std::fs::read_to_string(h.agent_log(&leader))?;
    assert!(log.contains("bootstrap: restored backup"), "{log}");
    Ok(())
}
