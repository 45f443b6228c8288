//! Permanent physical slots (`replication.permanent_slots`) with real agents, PostgreSQL and
//! etcd: the leader publishes where its slot holds WAL, the replicas make the slot and move
//! it with the leader's; after the leader is killed the new primary holds the slot at no later
//! position than the old one did, with that WAL still on disk (a fresh slot would start
//! after the promotion, and the slot's consumer would have lost its place). The slot is
//! added on the running cluster, through Patroni's `PATCH /config` (`slots` is dynamic).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pgha_postgres::Lsn;
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// `restart_lsn` of physical slot `keep` on node, when it has it.
async fn keep_at(h: &HaCluster, node: &str) -> anyhow::Result<Option<Lsn>> {
    let mut c = h.cluster.conn(node).await?;
    let v: Option<Option<String>> = sqlx::query_scalar(
        "SELECT restart_lsn::text FROM pg_replication_slots \
         WHERE slot_name = 'keep' AND slot_type = 'physical'",
    )
    .fetch_optional(&mut c)
    .await?;
    Ok(v.flatten().map(|s| s.parse()).transpose()?)
}

/// Writes WAL on the primary and checkpoints everywhere: segments no slot holds may go.
async fn churn(h: &HaCluster, primary: &str, nodes: &[&str]) -> anyhow::Result<()> {
    let mut c = h.cluster.conn(primary).await?;
    for _ in 0..3 {
        sqlx::query("INSERT INTO t SELECT generate_series(1, 2000)")
            .execute(&mut c)
            .await?;
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&mut c)
            .await?;
    }
    for n in nodes {
        let mut c = h.cluster.conn(n).await?;
        sqlx::query("CHECKPOINT").execute(&mut c).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_slot_is_held_on_replicas_and_keeps_its_place_across_a_failover(
) -> anyhow::Result<()> {
    // No WAL kept beyond what slots and checkpoints need: only the slot keeps it.
    let b = TestCluster::builder().replicas(2).wal_keep_size_mb(0);
    let mut h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    // Patroni's body, sent to a replica's agent: it reaches the leader through the DCS.
    let api2 = h
        .cluster
        .config()
        .node("node2")
        .unwrap()
        .agent_address
        .unwrap();
    let r = reqwest::Client::new()
        .patch(format!("http://{api2}/config"))
        .body(r#"{"slots": {"keep": {"type": "physical"}}}"#)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    TestCluster::eventually(T, "slot keep on node1", || async {
        Ok(keep_at(&h, "node1").await?.map(|_| ()))
    })
    .await
    .map_err(|e| e.context(h.tail_agent_log("node1", 20)))?;
    {
        let mut c = h.cluster.conn("node1").await?;
        sqlx::query("CREATE TABLE t (id int)")
            .execute(&mut c)
            .await?;
    }
    churn(&h, "node1", &["node1"]).await?;
    // Its consumer (a standby site, pg_receivewal) got this far: the slot holds WAL from here.
    let held = {
        let mut c = h.cluster.conn("node1").await?;
        let s: String = sqlx::query_scalar(
            "SELECT end_lsn::text FROM pg_replication_slot_advance('keep', pg_current_wal_lsn())",
        )
        .fetch_one(&mut c)
        .await?;
        s.parse::<Lsn>()?
    };
    for node in ["node2", "node3"] {
        TestCluster::eventually(T, &format!("{node}'s slot keep at {held}"), || async {
            Ok(keep_at(&h, node)
                .await?
                .filter(|at| *at == held)
                .map(|_| ()))
        })
        .await
        .map_err(|e| e.context(h.tail_agent_log(node, 30)))?;
    }
    // Past the slot's position, WAL is written and every node checkpoints: a slot made now
    // would hold nothing from before here.
    churn(&h, "node1", &["node1", "node2", "node3"]).await?;
    let end = {
        let mut c = h.cluster.conn("node1").await?;
        let s: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut c)
            .await?;
        s.parse::<Lsn>()?
    };
    for node in ["node2", "node3"] {
        TestCluster::eventually(T, &format!("{node} replayed {end}"), || async {
            let mut c = h.cluster.conn(node).await?;
            let s: String = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
                .fetch_one(&mut c)
                .await?;
            Ok((s.parse::<Lsn>()? >= end).then_some(()))
        })
        .await?;
        let mut c = h.cluster.conn(node).await?;
        sqlx::query("CHECKPOINT").execute(&mut c).await?;
    }

    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    let at = keep_at(&h, &new)
        .await?
        .expect("the promoted node has the slot");
    assert!(
        at <= held,
        "{new} holds WAL only from {at}, the consumer needs it from {held}"
    );
    // And the WAL from there is on disk (on the old timeline's segment of that number).
    let mut c = h.cluster.conn(&new).await?;
    let on_disk: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_ls_waldir() \
         WHERE right(name, 16) = right(pg_walfile_name($1::text::pg_lsn), 16))",
    )
    .bind(held.to_string())
    .fetch_one(&mut c)
    .await?;
    assert!(on_disk, "the segment of {held} is gone from {new}");
    assert!(h.cluster.panics_in_logs().is_empty());
    Ok(())
}
