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
use pgha_postgres::ProcessState;
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(90);

async fn count(h: &TestCluster, node: &str) -> anyhow::Result<i64> {
    let mut c = h.conn(node).await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut c)
        .await?)
}

/// A three-node cluster with `bootstrap.method = "backup"`: `t` holds 100 rows at the base
/// backup and 150 in the archived WAL (`switches` more WAL segments than the one after the
/// backup); then the data dirs are emptied and the agents started. `restore_command` gets
/// `{a}`, the archive directory. Returns the cluster, the backup's timeline and the work dir.
async fn from_backup(
    restore_command: &str,
    switches: usize,
) -> anyhow::Result<(HaCluster, u32, tempfile::TempDir)> {
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
         restore_command = \"{}\"\n",
        repo.display(),
        restore_command.replace("{a}", &a.to_string())
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
            let mut wal = String::new();
            for _ in 0..=switches {
                sqlx::query("CHECKPOINT").execute(&mut conn).await?;
                wal = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
                    .fetch_one(&mut conn)
                    .await?;
            }
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
    Ok((h, first_timeline, work))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_bootstrap_a_new_cluster_from_a_backup_and_the_archive() -> anyhow::Result<()> {
    let (h, first_timeline, work) = from_backup("cp {a}/%f %p", 0).await?;
    let archive = work.path().join("wal");
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
    // The restored server recovered and was promoted on a private port (it outlives a killed
    // agent: no client of the cluster may reach it); the leader's start used the node's.
    // (The log holds the prepared cluster's starts too, all on the node's port.)
    let pg_log = std::fs::read_to_string(node.log_file())?;
    let ports: Vec<u16> = pg_log
        .lines()
        .filter(|l| l.contains("listening on IPv4 address"))
        .filter_map(|l| l.rsplit("port ").next()?.trim().parse().ok())
        .collect();
    assert!(
        ports.iter().any(|p| *p != node.port) && ports.last() == Some(&node.port),
        "listening ports {ports:?} (node port {}):\n{pg_log}",
        node.port
    );
    Ok(())
}

/// The agent that won the bootstrap is SIGKILLed while its restored server recovers: that
/// server, started by pg_ctl, outlives it, but on a private port (no client configured for the
/// cluster reaches it, though it may promote). The agent comes back; whichever node bootstraps
/// next, the leftover server is stopped and the cluster forms with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_recovery_leaves_no_reachable_server_and_the_cluster_forms(
) -> anyhow::Result<()> {
    // Each archive fetch takes a second: recovery lasts several.
    let (mut h, _, _work) = from_backup("sleep 1 && cp {a}/%f %p", 4).await?;
    let names = h.cluster.node_names();
    let winner = {
        let (h, names) = (&h, &names);
        TestCluster::eventually(T, "a node restoring the backup", move || async move {
            Ok(names
                .iter()
                .find(|n| {
                    std::fs::read_to_string(h.agent_log(n))
                        .is_ok_and(|l| l.contains("bootstrap: restored backup"))
                })
                .cloned())
        })
        .await?
    };
    let inst = h.cluster.instance(&winner)?;
    {
        let inst = &inst;
        TestCluster::eventually(T, "the restored server started", move || async move {
            Ok(matches!(inst.process_state()?, ProcessState::Running { .. }).then_some(()))
        })
        .await?;
    }
    h.kill_agent(&winner);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        matches!(inst.process_state()?, ProcessState::Running { .. }),
        "the restored server outlives its agent (pg_ctl started it)"
    );
    let node = h.cluster.config().node(&winner).unwrap().clone();
    assert!(
        h.cluster.conn(&winner).await.is_err(),
        "the orphaned bootstrap server answers on {}'s port {}",
        winner,
        node.port
    );
    h.start_agent(&winner)?;
    let leader = h.wait_single_primary(T, None).await?;
    for n in &names {
        if *n != leader {
            h.wait_streaming_replica(n, T).await?;
        }
    }
    for n in &names {
        let (c, n) = (&h.cluster, n);
        TestCluster::eventually(T, "every row on every node", move || async move {
            Ok((count(c, n).await? == 150).then_some(()))
        })
        .await?;
    }
    Ok(())
}
