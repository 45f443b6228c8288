//! Permanent logical slots (`replication.logical_slots`) with real agents, PostgreSQL and
//! etcd: the leader creates the slot, the replicas copy it (state file, restart) and advance
//! their copies; after the leader is killed the new primary has the slot before its first
//! write, and a consumer that goes on reading from it loses no change (it may see some twice).
//! The old primary rejoins with its own, older copy replaced or advanced.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// `confirmed_flush_lsn` of `cdc` on node, when it has the slot.
async fn cdc_confirmed(h: &HaCluster, node: &str) -> anyhow::Result<Option<pgha_postgres::Lsn>> {
    let mut c = h.cluster.conn(node).await?;
    let v: Option<Option<String>> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
         WHERE slot_name = 'cdc' AND slot_type = 'logical'",
    )
    .fetch_optional(&mut c)
    .await?;
    Ok(v.flatten().map(|s| s.parse()).transpose()?)
}

/// Consumes up to `n` changes (all when None) from `cdc` on node: the ids inserted.
async fn consume(h: &HaCluster, node: &str, n: Option<i32>) -> anyhow::Result<Vec<i32>> {
    let mut c = h.cluster.conn(node).await?;
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT data FROM pg_logical_slot_get_changes('cdc', NULL, $1)")
            .bind(n)
            .fetch_all(&mut c)
            .await?;
    Ok(rows
        .iter()
        .filter_map(|d| d.strip_prefix("table public.t: INSERT: id[integer]:"))
        .map(|id| id.parse().unwrap())
        .collect())
}

async fn insert(
    h: &HaCluster,
    node: &str,
    ids: std::ops::RangeInclusive<i32>,
) -> anyhow::Result<()> {
    let mut c = h.cluster.conn(node).await?;
    for id in ids {
        // One transaction each: the consumer confirms whole transactions.
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(id)
            .execute(&mut c)
            .await?;
    }
    Ok(())
}

async fn lsn_of(h: &HaCluster, node: &str, sql: &str) -> anyhow::Result<pgha_postgres::Lsn> {
    let mut c = h.cluster.conn(node).await?;
    let s: String = sqlx::query_scalar(sql).fetch_one(&mut c).await?;
    Ok(s.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_slot_survives_a_failover_and_its_consumer_loses_nothing() -> anyhow::Result<()> {
    let b = TestCluster::builder().replicas(2).replication_toml(
        "logical_slots = [{ name = \"cdc\", database = \"postgres\", plugin = \"test_decoding\" }]\n",
    );
    let mut h = HaCluster::start(bin(), b, TEST_FAILOVER_TOML).await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    {
        let mut c = h.cluster.conn("node1").await?;
        let level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut c)
            .await?;
        assert_eq!(level, "logical");
        sqlx::query("CREATE TABLE t (id int PRIMARY KEY)")
            .execute(&mut c)
            .await?;
    }
    TestCluster::eventually(T, "slot cdc on node1", || async {
        Ok(cdc_confirmed(&h, "node1").await?.map(|_| ()))
    })
    .await
    .map_err(|e| e.context(h.tail_agent_log("node1", 20)))?;

    let mut seen = BTreeSet::new();
    insert(&h, "node1", 1..=50).await?;
    seen.extend(consume(&h, "node1", None).await?);
    assert_eq!(seen, (1..=50).collect(), "the consumer reads every insert");
    // Each replica copies the slot from node1 and advances it to what the consumer confirmed.
    let confirmed = cdc_confirmed(&h, "node1").await?.unwrap();
    for node in ["node2", "node3"] {
        TestCluster::eventually(
            T,
            &format!("{node}'s copy of cdc at {confirmed}"),
            || async {
                Ok(cdc_confirmed(&h, node)
                    .await?
                    .filter(|c| *c >= confirmed)
                    .map(|_| ()))
            },
        )
        .await
        .map_err(|e| e.context(h.tail_agent_log(node, 30)))?;
        h.wait_streaming_replica(node, T).await?;
    }
    assert!(
        std::fs::read_to_string(h.agent_log("node2"))?.contains("logical slots copied"),
        "{}",
        h.tail_agent_log("node2", 30)
    );
    // Read from PostgreSQL's own state files (what keeps wal_level logical should the slot
    // leave the config): the logical slot, not the nodes' physical ones.
    for n in &h.cluster.config().nodes {
        assert_eq!(
            pgha_replication::logical::logical_slots_on_disk(&n.data_dir),
            vec!["cdc".to_string()],
            "{}",
            n.name
        );
    }

    // Some consumed (10 of 50 transactions), the rest not; every row replicated.
    insert(&h, "node1", 51..=100).await?;
    seen.extend(consume(&h, "node1", Some(30)).await?);
    insert(&h, "node1", 101..=120).await?;
    assert!(seen.len() < 120);
    let end = lsn_of(&h, "node1", "SELECT pg_current_wal_lsn()::text").await?;
    for node in ["node2", "node3"] {
        TestCluster::eventually(T, &format!("{node} replayed {end}"), || async {
            let at = lsn_of(&h, node, "SELECT pg_last_wal_replay_lsn()::text").await?;
            Ok((at >= end).then_some(()))
        })
        .await?;
    }
    let old_confirmed = cdc_confirmed(&h, "node1").await?.unwrap();

    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    // The slot was there when the new primary began to take writes (a copy on disk since
    // before the promotion), at no later position than what the consumer confirmed.
    let at_promotion = cdc_confirmed(&h, &new)
        .await?
        .expect("the promoted node has the slot");
    assert!(
        at_promotion <= old_confirmed,
        "{at_promotion} > {old_confirmed}"
    );
    insert(&h, &new, 121..=130).await?;
    let after: Vec<i32> = consume(&h, &new, None).await?;
    let again = after.iter().filter(|id| seen.contains(id)).count();
    seen.extend(after);
    assert_eq!(
        seen,
        (1..=130).collect(),
        "the consumer lost changes across the failover"
    );
    eprintln!("changes seen twice after the failover: {again}");

    // The old primary rejoins as a replica; its own slot (confirmed on the old timeline) is
    // replaced by the new leader's or advanced to it, never left ahead of it.
    h.start_agent("node1")?;
    h.wait_streaming_replica("node1", T).await?;
    insert(&h, &new, 131..=140).await?;
    assert_eq!(
        consume(&h, &new, None).await?,
        (131..=140).collect::<Vec<_>>()
    );
    let leader_at = cdc_confirmed(&h, &new).await?.unwrap();
    TestCluster::eventually(T, "node1's copy of cdc at the new leader's", || async {
        Ok(cdc_confirmed(&h, "node1")
            .await?
            .filter(|c| *c == leader_at)
            .map(|_| ()))
    })
    .await
    .map_err(|e| e.context(h.tail_agent_log("node1", 30)))?;
    assert!(h.cluster.panics_in_logs().is_empty());
    Ok(())
}
