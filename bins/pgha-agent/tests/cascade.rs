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
