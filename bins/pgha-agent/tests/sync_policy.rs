//! Synchronous replication policy with real agents, PostgreSQL and etcd: two synchronous
//! standbys (`sync_standbys = 2`), the set shrinking as standbys go, strict mode
//! (`sync_strict`) holding commits when none is left, and a failover that keeps every
//! acknowledged commit; the mode switched at runtime; quorum commit (`ANY 1` of two standbys:
//! one lost, commits go on; then a failover keeps every row).
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

/// Three nodes with agents (node1 the primary, node2 and node3 streaming), a DCS client, and
/// the cluster settings seeded in the DCS (so `edit-config` can change them).
async fn three_with_settings() -> anyhow::Result<(HaCluster, EtcdDcs)> {
    let h = HaCluster::start(
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
    TestCluster::eventually(T, "settings seeded", || async {
        Ok(d.view().await?.config.settings.is_some().then_some(()))
    })
    .await?;
    Ok((h, d))
}

/// `pgha edit-config --set KEY=VALUE --force`.
async fn edit_config(config: &Path, set: &str) -> anyhow::Result<()> {
    let argv = [
        "pgha",
        "-c",
        config.to_str().unwrap(),
        "edit-config",
        "--set",
        set,
        "--force",
    ];
    let code = pgha::run(<pgha::cli::Cli as clap::Parser>::try_parse_from(argv)?).await;
    anyhow::ensure!(
        code == std::process::ExitCode::SUCCESS,
        "edit-config --set {set} failed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sync_standbys_shrink_strict_mode_holds_commits_and_a_failover_keeps_them(
) -> anyhow::Result<()> {
    let b = TestCluster::builder().replicas(2).sync_standbys(2);
    let mut h = HaCluster::start(
        bin(),
        b,
        &format!("{TEST_FAILOVER_TOML}sync_strict = true\n"),
    )
    .await?;
    assert_eq!(h.wait_single_primary(T, None).await?, "node1");
    for n in ["node2", "node3"] {
        h.wait_streaming_replica(n, T).await?;
    }
    let d = EtcdDcs::from_config(h.cluster.config(), "test").await?;
    let sync = || async { Ok::<_, anyhow::Error>(d.view().await?.sync.map(|s| s.standbys)) };

    // Both standbys synchronous: /sync names both, and PostgreSQL waits for both.
    TestCluster::eventually(T, "/sync names node2 and node3", || async {
        Ok((sync().await? == Some(vec!["node2".into(), "node3".into()])).then_some(()))
    })
    .await?;
    let mut c = h.cluster.conn("node1").await?;
    let ssn: String = sqlx::query_scalar("SHOW synchronous_standby_names")
        .fetch_one(&mut c)
        .await?;
    assert!(ssn.starts_with("FIRST 2 "), "{ssn}");
    sqlx::query("CREATE TABLE acks (id bigint PRIMARY KEY)")
        .execute(&mut c)
        .await?;
    insert(&h, "node1", 1..=50).await?;

    // One standby lost: the set shrinks to the other (removed from /sync first), writes go on.
    h.kill_node("node3")?;
    TestCluster::eventually(T, "/sync names node2 alone", || async {
        Ok((sync().await? == Some(vec!["node2".into()])).then_some(()))
    })
    .await?;
    insert(&h, "node1", 51..=60).await?;

    // None left: strict mode holds the next commit, and /sync keeps naming node2.
    h.kill_node("node2")?;
    let params = h.cluster.instance("node1")?.connect_params().clone();
    let held = tokio::spawn(async move {
        let mut c = params.connect().await?;
        sqlx::query("INSERT INTO acks VALUES (61)")
            .execute(&mut c)
            .await?;
        anyhow::Ok(())
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !held.is_finished(),
        "strict mode acknowledged a commit with no standby"
    );
    assert_eq!(sync().await?, Some(vec!["node2".to_string()]));

    // node2 comes back and streams: the held commit is acknowledged.
    h.start_agent("node2")?;
    tokio::time::timeout(T, held).await.map_err(|_| {
        anyhow::anyhow!("the held commit was not acknowledged after node2 returned")
    })???;

    // The primary dies: the synchronous standby is promoted with every acknowledged row.
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node2");
    let mut c = h.cluster.conn("node2").await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM acks ORDER BY id")
        .fetch_all(&mut c)
        .await?;
    assert_eq!(
        ids,
        (1..=61).collect::<Vec<i64>>(),
        "acknowledged rows lost"
    );
    Ok(())
}

/// `synchronous_mode` switched at runtime with `pgha edit-config`: on, the leader names a
/// standby in /sync and PostgreSQL waits for it; off, PostgreSQL stops waiting and /sync goes;
/// on again, then the primary dies: the synchronous standby is promoted with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_switches_at_runtime_and_a_failover_keeps_the_rows() -> anyhow::Result<()>
{
    let (mut h, d) = three_with_settings().await?;
    let sync = || async { Ok::<_, anyhow::Error>(d.view().await?.sync) };
    let ssn = || async {
        let mut c = h.cluster.conn("node1").await?;
        let v: String = sqlx::query_scalar("SHOW synchronous_standby_names")
            .fetch_one(&mut c)
            .await?;
        anyhow::Ok(v)
    };
    let config = h.cluster.config_path();
    let set_mode = |on: bool| {
        edit_config(
            &config,
            if on {
                "synchronous_mode=true"
            } else {
                "synchronous_mode=false"
            },
        )
    };
    assert_eq!(sync().await?, None, "async mode: no /sync");
    let mut c = h.cluster.conn("node1").await?;
    sqlx::query("CREATE TABLE acks (id bigint PRIMARY KEY)")
        .execute(&mut c)
        .await?;

    let sync_on = || async {
        TestCluster::eventually(T, "/sync names a standby PostgreSQL waits for", || async {
            let Some(s) = sync().await? else {
                return Ok(None);
            };
            let names = ssn().await?;
            Ok((s.leader == "node1"
                && s.standbys.len() == 1
                && names == format!("FIRST 1 (\"{}\")", s.standbys[0]))
            .then(|| s.standbys[0].clone()))
        })
        .await
    };
    set_mode(true).await?;
    sync_on().await?;
    insert(&h, "node1", 1..=20).await?;

    set_mode(false).await?;
    TestCluster::eventually(T, "async again: no /sync, no names", || async {
        Ok((sync().await?.is_none() && ssn().await?.is_empty()).then_some(()))
    })
    .await?;
    insert(&h, "node1", 21..=30).await?;

    set_mode(true).await?;
    let standby = sync_on().await?;
    insert(&h, "node1", 31..=40).await?;
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, standby, "only the synchronous standby may be promoted");
    let mut c = h.cluster.conn(&new).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM acks ORDER BY id")
        .fetch_all(&mut c)
        .await?;
    assert_eq!(
        ids,
        (1..=40).collect::<Vec<i64>>(),
        "acknowledged rows lost"
    );
    Ok(())
}

/// Quorum commit switched on at runtime: PostgreSQL waits for any one of two standbys; one
/// standby lost, commits go on; then the primary dies and the node promoted holds every
/// acknowledged commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_commit_survives_a_lost_standby_and_a_failover_keeps_every_row() -> anyhow::Result<()>
{
    let (mut h, d) = three_with_settings().await?;
    let primary = h.cluster.instance("node1")?.connect_params().clone();
    let state = || async {
        let s = d.view().await?.sync;
        let mut c = primary.connect().await?;
        let names: String = sqlx::query_scalar("SHOW synchronous_standby_names")
            .fetch_one(&mut c)
            .await?;
        anyhow::Ok((s.map(|s| (s.standbys, s.quorum)), names))
    };
    edit_config(&h.cluster.config_path(), "synchronous_mode=quorum").await?;

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
