//! Replication against real PostgreSQL: data reaches every replica, lag returns to 0, sync
//! commits wait for a standby, slots retain WAL, the mode switches live.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgha_postgres::{Lsn, PgControl, StopMode};
use pgha_replication::{set_mode, ClusterStatus, Role};
use pgha_test_support::TestCluster;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_primary_is_read_on_every_replica_and_lag_returns_to_zero() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let mut p = c.conn("node1").await?;
    sqlx::query("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .execute(&mut p)
        .await?;
    sqlx::query("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        .execute(&mut p)
        .await?;
    let want: String = sqlx::query_scalar("SELECT md5(string_agg(v, ',' ORDER BY id)) FROM t")
        .fetch_one(&mut p)
        .await?;
    for node in ["node2", "node3"] {
        let got = TestCluster::eventually(T, &format!("rows on {node}"), || async {
            let mut r = c.conn(node).await?;
            let got: Option<String> =
                sqlx::query_scalar("SELECT md5(string_agg(v, ',' ORDER BY id)) FROM t")
                    .fetch_one(&mut r)
                    .await
                    .ok()
                    .flatten();
            Ok(got.filter(|g| g == &want))
        })
        .await?;
        assert_eq!(got, want);
    }
    let st = TestCluster::eventually(T, "lag back to 0", || async {
        let st = ClusterStatus::collect(c.config()).await?;
        let zero = st.replicas().count() == 2
            && st
                .replicas()
                .all(|n| n.lag_bytes == Some(0) && n.lag_seconds == Some(0.0));
        Ok(zero.then_some(st))
    })
    .await?;
    assert_eq!(st.primary.as_deref(), Some("node1"));
    let primary = st.node("node1").unwrap();
    assert_eq!(primary.role, Some(Role::Primary));
    assert_eq!(primary.timeline, Some(1));
    assert_eq!(primary.standbys.len(), 2);
    assert!(
        primary.slots.iter().all(|s| s.active),
        "{:?}",
        primary.slots
    );
    for r in st.replicas() {
        assert_eq!(r.streaming, Some(true));
        assert_eq!(r.sync_state.as_deref(), Some("async"));
        assert_eq!(
            r.receiver.as_ref().unwrap().slot_name.as_deref(),
            Some(r.name.as_str())
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_commit_waits_for_the_standby_and_completes_when_it_returns() -> anyhow::Result<()> {
    let c = TestCluster::builder().replicas(1).sync().start().await?;
    let mut p = c.conn("node1").await?;
    sqlx::query("CREATE TABLE s (id int)")
        .execute(&mut p)
        .await?;
    let st = ClusterStatus::collect(c.config()).await?;
    assert_eq!(
        st.node("node2").unwrap().sync_state.as_deref(),
        Some("quorum")
    );

    let standby = c.instance("node2")?;
    standby.stop(StopMode::Fast).await?;
    let insert = tokio::spawn(async move {
        sqlx::query("INSERT INTO s VALUES (1)")
            .execute(&mut p)
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !insert.is_finished(),
        "commit returned although no synchronous standby was connected"
    );

    standby.start().await?;
    let done = tokio::time::timeout(T, insert).await;
    assert!(
        matches!(done, Ok(Ok(Ok(())))),
        "commit did not complete after the standby returned: {done:?}"
    );
    let mut r = c.conn("node2").await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM s")
        .fetch_one(&mut r)
        .await?;
    assert_eq!(n, 1, "the acknowledged row must be on the standby");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_retains_wal_while_its_replica_is_down() -> anyhow::Result<()> {
    // wal_keep_size 0: only the slot can keep the WAL the stopped replica needs.
    let c = TestCluster::builder()
        .replicas(1)
        .wal_keep_size_mb(0)
        .parameter("max_wal_size", "32MB")
        .start()
        .await?;
    let replica = c.instance("node2")?;
    replica.stop(StopMode::Fast).await?;
    let mut p = c.conn("node1").await?;
    let restart_before: Lsn = sqlx::query_scalar(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'node2'",
    )
    .fetch_one(&mut p)
    .await?;
    sqlx::query("CREATE TABLE big (v text)")
        .execute(&mut p)
        .await?;
    for _ in 0..4 {
        sqlx::query(
            "INSERT INTO big SELECT repeat(md5(g::text), 20) FROM generate_series(1, 20000) g",
        )
        .execute(&mut p)
        .await?;
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&mut p)
            .await?;
        sqlx::query("CHECKPOINT").execute(&mut p).await?;
    }
    let slots = pgha_replication::list_slots(&mut p, "node1").await?;
    let slot = slots.iter().find(|s| s.slot_name == "node2").unwrap();
    assert!(!slot.active);
    assert_eq!(
        slot.restart_lsn,
        Some(restart_before),
        "an inactive slot must not advance"
    );
    let retained = slot.wal_retained_bytes.unwrap();
    assert!(
        retained > 48 << 20,
        "slot should retain the ~50+ MB written, got {retained}"
    );
    // The segment holding restart_lsn still exists, so the replica can resume from it.
    let seg: String = sqlx::query_scalar("SELECT pg_walfile_name($1)")
        .bind(restart_before)
        .fetch_one(&mut p)
        .await?;
    let on_disk: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_ls_waldir() WHERE name = $1")
        .bind(&seg)
        .fetch_one(&mut p)
        .await?;
    assert_eq!(
        on_disk, 1,
        "segment {seg} was removed although the slot needs it"
    );

    replica.start().await?;
    c.wait_streaming(T).await?;
    let target: Lsn = sqlx::query_scalar("SELECT pg_current_wal_lsn()")
        .fetch_one(&mut p)
        .await?;
    TestCluster::eventually(T, "replica caught up", || async {
        let mut r = c.conn("node2").await?;
        let at: Option<Lsn> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()")
            .fetch_one(&mut r)
            .await?;
        Ok(at.filter(|a| *a >= target))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_switches_between_async_and_sync_on_a_running_cluster() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let mut p = c.conn("node1").await?;
    set_mode(
        &mut p,
        "node1",
        c.config(),
        pgha_config::ReplicationMode::Sync,
        false,
    )
    .await?;
    let st = TestCluster::eventually(T, "standbys reported as quorum", || async {
        let st = ClusterStatus::collect(c.config()).await?;
        let all = st
            .replicas()
            .all(|r| r.sync_state.as_deref() == Some("quorum"));
        Ok(all.then_some(st))
    })
    .await?;
    assert_eq!(st.replicas().count(), 2);
    // Survives a restart: ALTER SYSTEM persisted it.
    let primary = c.instance("node1")?;
    primary.stop(StopMode::Fast).await?;
    primary.start().await?;
    let mut p = c.conn("node1").await?;
    let v: String = sqlx::query_scalar("SHOW synchronous_standby_names")
        .fetch_one(&mut p)
        .await?;
    assert_eq!(v, r#"ANY 1 ("node1", "node2", "node3")"#);
    set_mode(
        &mut p,
        "node1",
        c.config(),
        pgha_config::ReplicationMode::Async,
        false,
    )
    .await?;
    c.wait_streaming(T).await?;
    let st = ClusterStatus::collect(c.config()).await?;
    assert!(
        st.replicas()
            .all(|r| r.sync_state.as_deref() == Some("async")),
        "{st:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_sync_without_standbys_is_refused() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    c.instance("node2")?.stop(StopMode::Fast).await?;
    let mut p = c.conn("node1").await?;
    let err = set_mode(
        &mut p,
        "node1",
        c.config(),
        pgha_config::ReplicationMode::Sync,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no standby is connected"), "{err}");
    // With [dcs] the agents own the mode: refused before anything is changed.
    let mut managed = c.config().clone();
    managed.dcs = pgha_config::load_from_str(
        "[cluster]\nname = \"x\"\n[replication]\npassword = { env = \"PGHA_T_UNUSED\" }\n\
         [dcs]\netcd = [\"http://127.0.0.1:1\"]\n\
         [[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\ndata_dir = \"/d\"\n",
        "dcs.toml",
    )?
    .dcs;
    let err = set_mode(
        &mut p,
        "node1",
        &managed,
        pgha_config::ReplicationMode::Async,
        true,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, pgha_replication::ReplicationError::AgentsManageMode),
        "{err}"
    );
    Ok(())
}
