//! Cascading replicas (`replicate_from`) with real agents, PostgreSQL and etcd: node3 streams
//! from node2, keeps doing so after node2 restarts, and is re-pointed at the leader when node2
//! is gone, returns to node2 when it is back, and replicates on after a leader failover. The
//! leader keeps no slot for node3 while node3 reads from node2.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

fn port(h: &HaCluster, node: &str) -> i32 {
    i32::from(h.cluster.config().node(node).unwrap().port)
}

/// The port node streams from, when its WAL receiver streams.
async fn streams_from(h: &HaCluster, node: &str) -> anyhow::Result<Option<i32>> {
    let mut c = h.cluster.conn(node).await?;
    Ok(sqlx::query_scalar(
        "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
    )
    .fetch_optional(&mut c)
    .await?
    .flatten())
}

/// (slot, active) on node.
async fn slots(h: &HaCluster, node: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let mut c = h.cluster.conn(node).await?;
    Ok(
        sqlx::query_as("SELECT slot_name::text, active FROM pg_replication_slots ORDER BY 1")
            .fetch_all(&mut c)
            .await?,
    )
}

async fn wait_upstream(h: &HaCluster, node: &str, upstream: &str) -> anyhow::Result<()> {
    let want = port(h, upstream);
    TestCluster::eventually(T, &format!("{node} streams from {upstream}"), || async {
        Ok((streams_from(h, node).await? == Some(want)).then_some(()))
    })
    .await
    .map_err(|e| e.context(h.tail_agent_log(node, 20)))
}

async fn wait_row(h: &HaCluster, node: &str, id: i32) -> anyhow::Result<()> {
    TestCluster::eventually(T, &format!("row {id} on {node}"), || async {
        let mut c = h.cluster.conn(node).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE id = $1")
            .bind(id)
            .fetch_one(&mut c)
            .await?;
        Ok((n == 1).then_some(()))
    })
    .await
}

async fn insert(h: &HaCluster, id: i32) -> anyhow::Result<()> {
    let mut c = h.cluster.conn("node1").await?;
    sqlx::query("INSERT INTO t VALUES ($1)")
        .bind(id)
        .execute(&mut c)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_replica_streams_from_its_upstream_survives_its_restart_and_falls_back_to_the_leader(
) -> anyhow::Result<()> {
    let b = TestCluster::builder()
        .replicas(2)
        .replicate_from("node3", "node2");
    let mut h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    {
        let mut c = h.cluster.conn("node1").await?;
        sqlx::query("CREATE TABLE t (id int PRIMARY KEY)")
            .execute(&mut c)
            .await?;
    }

    // node3 cascades from node2: one stream leaves node1 for both.
    wait_upstream(&h, "node3", "node2").await?;
    insert(&h, 1).await?;
    wait_row(&h, "node3", 1).await?;
    TestCluster::eventually(
        T,
        "node3's slot active on node2, gone from node1",
        || async {
            let on2 = slots(&h, "node2").await?;
            let on1 = slots(&h, "node1").await?;
            Ok(
                (on2.contains(&("node3".into(), true)) && !on1.iter().any(|(s, _)| s == "node3"))
                    .then_some(()),
            )
        },
    )
    .await
    .map_err(|e| e.context(h.tail_agent_log("node1", 20)))?;
    {
        let mut c = h.cluster.conn("node1").await?;
        let apps: Vec<String> =
            sqlx::query_scalar("SELECT application_name FROM pg_stat_replication ORDER BY 1")
                .fetch_all(&mut c)
                .await?;
        assert_eq!(
            apps,
            vec!["node2".to_string()],
            "node1 streams to node2 only"
        );
    }

    // node2 restarts (its agent and PostgreSQL): node3 streams from it again afterwards.
    h.kill_agent("node2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.start_agent("node2")?;
    h.wait_streaming_replica("node2", T).await?;
    wait_upstream(&h, "node3", "node2").await?;
    insert(&h, 2).await?;
    wait_row(&h, "node3", 2).await?;

    // node2 is gone for good: node3 is re-pointed at the leader and keeps receiving.
    h.kill_node("node2")?;
    wait_upstream(&h, "node3", "node1").await?;
    insert(&h, 3).await?;
    wait_row(&h, "node3", 3).await?;
    let on1 = slots(&h, "node1").await?;
    assert!(
        on1.contains(&("node3".into(), true)),
        "node3 streams through its slot on node1: {on1:?}"
    );

    // node2 comes back: node3 returns to it once it streams again.
    h.start_agent("node2")?;
    h.wait_streaming_replica("node2", T).await?;
    wait_upstream(&h, "node3", "node2").await?;

    // The leader fails while node3 cascades: whoever is elected, the survivors replicate.
    h.kill_node("node1")?;
    let p = h.wait_single_primary(T, Some("node1")).await?;
    let other = if p == "node2" { "node3" } else { "node2" };
    h.wait_streaming_replica(other, T).await?;
    {
        let mut c = h.cluster.conn(&p).await?;
        sqlx::query("INSERT INTO t VALUES (4)")
            .execute(&mut c)
            .await?;
    }
    wait_row(&h, other, 4).await?;
    assert!(h.cluster.panics_in_logs().is_empty());
    Ok(())
}

async fn exec(h: &HaCluster, node: &str, sql: &str) -> anyhow::Result<()> {
    let mut c = h.cluster.conn(node).await?;
    sqlx::raw_sql(sql).execute(&mut c).await?;
    Ok(())
}

/// `nostream` (Patroni's tag), switched on at runtime (SIGHUP): node3 stops streaming and
/// replays from the WAL archive (`replication.restore_command`); the leader drops its slot
/// and streams to node2 only; `pgha list` and `GET /patroni` show node3 in archive recovery.
/// After the leader dies, node2 is promoted and node3 follows its timeline from the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nostream_replica_replays_from_the_archive_through_a_failover() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::Builder::new()
        .prefix("pgha-nostream-")
        .tempdir()?;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let archive = work.path().join("wal");
    std::fs::create_dir(&archive)?;
    if let Some(u) = pgha_postgres::OsUser::for_server("postgres")? {
        u.chown(&archive)?;
    }
    let a = archive.display();
    let b = TestCluster::builder()
        .replicas(2)
        .parameter("archive_mode", "on")
        .parameter(
            "archive_command",
            &format!("test ! -f {a}/%f && cp %p {a}/%f"),
        )
        .replication_toml(&format!("restore_command = \"cp {a}/%f %p\"\n"));
    let h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    h.wait_streaming_replica("node3", T).await?;
    exec(&h, "node1", "CREATE TABLE t (id int)").await?;

    let path = h.cluster.config_path();
    h.edit_node_and_reload("node3", "nostream = true\n")?;
    TestCluster::eventually(T, "node3 off streaming, its slot dropped", || async {
        let off = streams_from(&h, "node3").await?.is_none();
        let s = slots(&h, "node1").await?;
        Ok((off && s == vec![("node2".to_string(), true)]).then_some(()))
    })
    .await
    .map_err(|e| e.context(h.tail_agent_log("node3", 20)))?;

    insert(&h, 1).await?;
    exec(&h, "node1", "SELECT pg_switch_wal()").await?;
    wait_row(&h, "node3", 1).await?;
    let mut c = h.cluster.conn("node1").await?;
    let senders: Vec<String> =
        sqlx::query_scalar("SELECT application_name::text FROM pg_stat_replication")
            .fetch_all(&mut c)
            .await?;
    assert_eq!(senders, vec!["node2".to_string()]);
    drop(c);
    let cfg = h.cluster.config().clone();
    let api3 = cfg.node("node3").and_then(|n| n.agent_address).unwrap();
    TestCluster::eventually(T, "node3 in archive recovery in GET /patroni", || async {
        let doc: serde_json::Value = reqwest::get(format!("http://{api3}/patroni"))
            .await?
            .json()
            .await?;
        Ok(
            (doc["replication_state"] == "in archive recovery" && doc["tags"]["nostream"] == true)
                .then_some(()),
        )
    })
    .await?;
    // Status, `pgha check` and the exporter's series know it never streams (from the
    // edited pgha.toml, as a `pgha check` run now reads it).
    let edited = pgha_config::load(pgha_config::ConfigSource::Flag(path.clone()))?.config;
    let st = pgha_replication::status::ClusterStatus::collect(&edited).await?;
    assert!(st.node("node3").unwrap().archive_only);
    let check = pgha::check::evaluate_replication(
        &st,
        2,
        pgha::check::LagThresholds {
            crit_bytes: u64::MAX,
            warn_bytes: u64::MAX,
            crit_seconds: f64::MAX,
            warn_seconds: f64::MAX,
        },
    );
    assert!(!check.summary.contains("not streaming"), "{check:?}");
    let dcs = pgha_failover::dcs::EtcdDcs::from_config(&cfg, "test").await?;
    let view = pgha_failover::dcs::Dcs::view(&dcs).await?;
    let rows = pgha_failover::ops::list_rows(&cfg, &view);
    let node3 = rows.iter().find(|r| r[0] == "node3").unwrap();
    assert!(node3.iter().any(|c| c == "in archive recovery"), "{rows:?}");

    let mut h = h;
    h.kill_node("node1")?;
    assert_eq!(h.wait_single_primary(T, Some("node1")).await?, "node2");
    // Two statements: in one implicit transaction the commit would follow the switch.
    exec(&h, "node2", "INSERT INTO t VALUES (2)").await?;
    exec(&h, "node2", "SELECT pg_switch_wal()").await?;
    wait_row(&h, "node3", 2).await.map_err(|e| {
        let log =
            std::fs::read_to_string(cfg.node("node3").unwrap().log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        e.context(format!(
            "{}\nnode3's server log:\n{}",
            h.tail_agent_log("node3", 10),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    })?;
    assert!(streams_from(&h, "node3").await?.is_none());
    assert!(h.cluster.panics_in_logs().is_empty());
    Ok(())
}
