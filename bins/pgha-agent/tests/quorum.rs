//! Quorum commit (`synchronous_mode = quorum`) with real agents, PostgreSQL and etcd: switched
//! on at runtime, PostgreSQL waits for any one of two standbys; one standby lost, commits go
//! on; then the primary dies and the node promoted holds every acknowledged commit.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use pgha_failover::dcs::{Dcs, EtcdDcs};
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

/// Inserts `ids` on `node`, each its own acknowledged commit (10 s each at most).
async fn insert(
    h: &HaCluster,
    node: &str,
    ids: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<()> {
    let mut c = h.cluster.conn(node).await?;
    for id in ids {
        tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query("INSERT INTO acks VALUES ($1)")
                .bind(id)
                .execute(&mut c),
        )
        .await
        .map_err(|_| anyhow::anyhow!("commit of {id} on {node} not acknowledged within 10 s"))??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_survives_a_lost_standby_and_a_failover_keeps_every_row() -> anyhow::Result<()>
{
    let mut h = HaCluster::start(
        bin(),
        TestCluster::builder().replicas(2),
        TEST_FAILOVER_TOML,
    )
    .await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    for n in ["node2", "node3"] {
        h.wait_streaming_replica(n, T).await?;
    }
    let d = EtcdDcs::from_config(h.cluster.config(), "test").await?;
    let primary = h.cluster.instance("node1")?.connect_params().clone();
    let state = || async {
        let s = d.view().await?.sync;
        let mut c = primary.connect().await?;
        let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
            .fetch_one(&mut c)
            .await?;
        anyhow::Ok((s.map(|s| (s.standbys, s.quorum)), names))
    };
    TestCluster::eventually(T, "settings seeded", || async {
        Ok(d.view().await?.config.settings.is_some().then_some(()))
    })
    .await?;
    let config = h.cluster.config_path();
    let argv = [
        "pgha",
        "-c",
        config.to_str().unwrap(),
        "edit-config",
        "--set",
        "synchronous_mode=quorum",
        "--force",
    ];
    let code = pgha::run(<pgha::cli::Cli as clap::Parser>::try_parse_from(argv)?).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "edit-config failed");

    // Any one of node2, node3 confirms each commit; `sync` says a failover must see two.
    let both = (
        Some((vec!["node2".to_string(), "node3".to_string()], Some(2))),
        r#"ANY 1 ("node2", "node3")"#.to_string(),
    );
    TestCluster::eventually(T, "quorum over node2 and node3", || async {
        let s = state().await?;
        Ok((s == both).then_some(()))
    })
    .await?;
    // Patroni's health paths: both standbys answer /quorum, neither /sync.
    let http = reqwest::Client::new();
    for n in ["node2", "node3"] {
        let api = h.cluster.config().node(n).unwrap().agent_address.unwrap();
        let get = |p: &'static str| {
            let r = http.get(format!("http://{api}{p}")).send();
            async move { anyhow::Ok(r.await?.status().as_u16()) }
        };
        // The agent's snapshot follows the DCS at its next tick.
        TestCluster::eventually(T, "/quorum answers 200", || async {
            Ok((get("/quorum").await? == 200).then_some(()))
        })
        .await?;
        assert_eq!(get("/sync").await?, 503, "{n} /sync");
    }
    let mut c = h.cluster.conn("node1").await?;
    sqlx::query("CREATE TABLE acks (id bigint PRIMARY KEY)")
        .execute(&mut c)
        .await?;
    insert(&h, "node1", 1..=30).await?;

    // node3 lost: node2 alone confirms commits, at once; the set shrinks to node2.
    h.kill_node("node3")?;
    insert(&h, "node1", 31..=50).await?;
    TestCluster::eventually(T, "quorum over node2 alone", || async {
        let s = state().await?;
        Ok((s
            == (
                Some((vec!["node2".to_string()], Some(1))),
                r#"ANY 1 ("node2")"#.to_string(),
            ))
            .then_some(()))
    })
    .await?;
    insert(&h, "node1", 51..=60).await?;

    // The primary dies: node2 is promoted with every acknowledged row.
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node2");
    let mut c = h.cluster.conn("node2").await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM acks ORDER BY id")
        .fetch_all(&mut c)
        .await?;
    assert_eq!(
        ids,
        (1..=60).collect::<Vec<i64>>(),
        "acknowledged rows lost"
    );
    Ok(())
}
