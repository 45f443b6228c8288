//! The agent against real PostgreSQL and real etcd: failover, rejoin, sync safety, DCS outage,
//! agent death, pause, switchover.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgha_failover::dcs::{Dcs, EtcdDcs, RequestKind};
use pgha_failover::ops;
use pgha_test_support::{HaCluster, TestCluster, TEST_FAILOVER_TOML};

const T: Duration = Duration::from_secs(40);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgha-agent"))
}

async fn ha(replicas: usize, sync: bool, extra: &str) -> anyhow::Result<HaCluster> {
    let mut b = TestCluster::builder().replicas(replicas);
    if sync {
        b = b.sync();
    }
    let h = HaCluster::start(bin(), b, &format!("{TEST_FAILOVER_TOML}{extra}")).await?;
    let p = h.wait_single_primary(T, None).await?;
    assert_eq!(p, "node1");
    for n in h.cluster.node_names().iter().filter(|n| *n != "node1") {
        h.wait_streaming_replica(n, T).await?;
    }
    Ok(h)
}

async fn dcs(h: &HaCluster) -> anyhow::Result<EtcdDcs> {
    Ok(EtcdDcs::from_config(h.cluster.config(), "test").await?)
}

async fn exec(h: &HaCluster, node: &str, sql: &str) -> anyhow::Result<()> {
    let mut c = h.cluster.conn(node).await?;
    sqlx::query(sql).execute(&mut c).await?;
    Ok(())
}

async fn count(h: &HaCluster, node: &str, sql: &str) -> anyhow::Result<i64> {
    let mut c = h.cluster.conn(node).await?;
    Ok(sqlx::query_scalar(sql).fetch_one(&mut c).await?)
}

/// Stops a replica's WAL receiver without its agent noticing (postgresql.auto.conf overrides
/// the agent's pgha-node.conf).
async fn cut_receiver(h: &HaCluster, node: &str) -> anyhow::Result<()> {
    exec(h, node, "ALTER SYSTEM SET primary_conninfo = ''").await?;
    exec(h, node, "SELECT pg_reload_conf()").await
}

async fn restore_receiver(h: &HaCluster, node: &str) -> anyhow::Result<()> {
    exec(h, node, "ALTER SYSTEM RESET primary_conninfo").await?;
    exec(h, node, "SELECT pg_reload_conf()").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_the_most_advanced_replica_and_the_old_primary_rejoins_with_rewind(
) -> anyhow::Result<()> {
    let mut h = ha(2, false, "").await?;
    exec(
        &h,
        "node1",
        "CREATE TABLE t (id int PRIMARY KEY, site text)",
    )
    .await?;
    h.wait_streaming_replica("node3", T).await?;
    // node3 stops receiving; rows 1..100 reach node2 only.
    cut_receiver(&h, "node3").await?;
    exec(
        &h,
        "node1",
        "INSERT INTO t SELECT g, 'both' FROM generate_series(1, 100) g",
    )
    .await?;
    TestCluster::eventually(T, "node2 has the 100 rows", || async {
        Ok((count(&h, "node2", "SELECT count(*) FROM t").await? == 100).then_some(()))
    })
    .await?;
    // node2 stops too; rows 101..110 exist only on node1 and make its timeline diverge.
    cut_receiver(&h, "node2").await?;
    exec(
        &h,
        "node1",
        "INSERT INTO t SELECT g, 'old-primary-only' FROM generate_series(101, 110) g",
    )
    .await?;
    // (No pg_switch_wal here: it would jump the primary's position by up to a segment and put
    // both replicas beyond maximum_lag_on_failover, so correctly nobody would be promoted.)
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node2", "the replica with the most WAL must win");
    assert_eq!(count(&h, "node2", "SELECT count(*) FROM t").await?, 100);
    restore_receiver(&h, "node2").await?;
    restore_receiver(&h, "node3").await?;
    h.wait_streaming_replica("node3", T).await?;

    // The old primary comes back: it must rejoin as a replica of node2, rewound.
    h.start_agent("node1")?;
    h.wait_streaming_replica("node1", T).await?;
    assert_eq!(h.writable_nodes().await, vec!["node2".to_string()]);
    exec(&h, "node2", "INSERT INTO t VALUES (1000, 'after')").await?;
    TestCluster::eventually(T, "node1 replays the new primary's rows", || async {
        Ok(
            (count(&h, "node1", "SELECT count(*) FROM t WHERE id = 1000").await? == 1)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        count(
            &h,
            "node1",
            "SELECT count(*) FROM t WHERE site = 'old-primary-only'"
        )
        .await?,
        0,
        "diverged rows must be gone after pg_rewind"
    );
    let log = std::fs::read_to_string(h.agent_log("node1"))?;
    assert!(log.contains("pg_rewind"), "node1 did not rewind:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_failover_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut h = ha(2, true, "").await?;
    exec(&h, "node1", "CREATE TABLE acks (id bigint PRIMARY KEY)").await?;
    // Wait until the leader recorded a synchronous standby.
    let d = dcs(&h).await?;
    let sync = TestCluster::eventually(T, "a synchronous standby in /sync", || async {
        Ok(d.view().await?.sync.filter(|s| !s.standbys.is_empty()))
    })
    .await?;
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let params: Vec<_> = h
            .cluster
            .node_names()
            .iter()
            .map(|n| h.cluster.instance(n).unwrap().connect_params().clone())
            .collect();
        tokio::spawn(async move {
            let mut id = 0i64;
            let mut conn: Option<sqlx::PgConnection> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if conn.is_none() {
                    for p in &params {
                        let mut p = p.clone();
                        p.connect_timeout = Duration::from_millis(300);
                        if let Ok(mut c) = p.connect().await {
                            if let Ok(false) =
                                sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                                    .fetch_one(&mut c)
                                    .await
                            {
                                conn = Some(c);
                                break;
                            }
                        }
                    }
                }
                if let Some(c) = conn.as_mut() {
                    id += 1;
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        sqlx::query("INSERT INTO acks VALUES ($1)")
                            .bind(id)
                            .execute(&mut *c),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => acked.lock().unwrap().push(id),
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert!(
        sync.standbys.contains(&new),
        "{new} was promoted but /sync named {:?}",
        sync.standbys
    );
    // Writes resume on the new primary.
    let before = acked.lock().unwrap().len();
    TestCluster::eventually(T, "writes acknowledged by the new primary", || async {
        Ok((acked.lock().unwrap().len() > before + 20).then_some(()))
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await?;
    let ids = acked.lock().unwrap().clone();
    let mut c = h.cluster.conn(&new).await?;
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM acks")
        .fetch_all(&mut c)
        .await?;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {missing:?}",
        missing.len()
    );
    assert!(
        ids.len() > 100,
        "the writer acknowledged only {} writes",
        ids.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_means_no_promotion_and_failsafe_keeps_the_primary_only_while_it_sees_every_replica(
) -> anyhow::Result<()> {
    let mut h = ha(2, false, "").await?;
    // The failsafe topology (Patroni's `GET /failsafe`): every node node1's round asks, as
    // node1 published it in `status`; only these may be elected while failsafe is on.
    let cfg = h.cluster.config().clone();
    let api = |n: &str| cfg.node(n).and_then(|c| c.agent_address).unwrap();
    let want: serde_json::Value = ["node1", "node2", "node3"]
        .iter()
        .map(|n| (n.to_string(), format!("http://{}/patroni", api(n)).into()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // On every node, node1 included: failsafe holds only once node1 itself read its topology
    // back from the DCS (`failsafe_published`); killing etcd between node1's write and its
    // next read of the view fences it, rightly (seen when only node3 was waited for).
    for n in ["node1", "node2", "node3"] {
        TestCluster::eventually(
            Duration::from_secs(10),
            &format!("GET /failsafe on {n}"),
            || async {
                let r = reqwest::get(format!("http://{}/failsafe", api(n))).await?;
                Ok(
                    (r.status() == 200 && r.json::<serde_json::Value>().await? == want)
                        .then_some(()),
                )
            },
        )
        .await?;
    }
    h.etcd.kill();
    // Longer than the TTL: without failsafe the primary would have fenced itself by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        h.writable_nodes().await,
        vec!["node1".to_string()],
        "failsafe: primary keeps serving, nobody promotes"
    );
    exec(&h, "node1", "CREATE TABLE still_writable (x int)").await?;
    // One replica goes away: the primary can no longer confirm failsafe with everyone and stops.
    h.kill_node("node3")?;
    TestCluster::eventually(Duration::from_secs(10), "primary fenced", || async {
        Ok(h.writable_nodes().await.is_empty().then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        h.writable_nodes().await.is_empty(),
        "no promotion without the DCS"
    );
    let log = std::fs::read_to_string(h.agent_log("node1"))?;
    assert!(log.contains("failsafe not confirmed"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_alone_never_leaves_two_writable_primaries() -> anyhow::Result<()> {
    let mut h = ha(2, false, "").await?;
    let old_pid = std::fs::read_to_string(
        h.cluster
            .instance("node1")?
            .data_dir()
            .join("postmaster.pid"),
    )?
    .lines()
    .next()
    .unwrap()
    .trim()
    .parse::<i32>()?;
    h.kill_agent("node1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut new = None;
    while Instant::now() < deadline {
        let w = h.writable_nodes().await;
        assert!(w.len() <= 1, "two writable primaries: {w:?}");
        if w.len() == 1 && w[0] != "node1" {
            new = Some(w[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(new.is_some(), "no new primary after the agent died");
    assert!(
        !Path::new(&format!("/proc/{old_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "the old postmaster survived its agent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_prevents_failover_and_resume_allows_it() -> anyhow::Result<()> {
    let mut h = ha(1, false, "").await?;
    let d = dcs(&h).await?;
    ops::set_paused(&d, true).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.kill_node("node1")?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(h.writable_nodes().await.is_empty(), "promoted while paused");
    ops::set_paused(&d, false).await?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_refuses_unknown_or_lagging_targets_and_hands_over_to_a_good_one(
) -> anyhow::Result<()> {
    let h = ha(2, false, "").await?;
    let d = dcs(&h).await?;
    let cfg = h.cluster.config();
    let err = ops::request(&d, cfg, RequestKind::Switchover, "nope", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`nope` is not a node of this cluster (nodes: node1, node2, node3)"),
        "{err}"
    );
    let err = ops::request(&d, cfg, RequestKind::Switchover, "node1", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already the leader"), "{err}");
    // node3 falls behind by ~3 MB (more than maximum_lag_on_failover, 1 MB).
    cut_receiver(&h, "node3").await?;
    exec(
        &h,
        "node1",
        "CREATE TABLE fill AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)",
    )
    .await?;
    let err = TestCluster::eventually(T, "lag visible in the DCS", || async {
        match ops::request(&d, cfg, RequestKind::Switchover, "node3", None).await {
            Err(e) if e.to_string().contains("bytes behind") => Ok(Some(e.to_string())),
            Err(e) => Err(e.into()),
            Ok(_) => {
                d.clear_switchover().await?;
                Ok(None)
            }
        }
    })
    .await?;
    assert!(
        err.contains("node3 is") && err.contains("maximum_lag_on_failover"),
        "{err}"
    );
    restore_receiver(&h, "node3").await?;

    // node2 streams, but the positions in the DCS are up to one agent loop old: right after the
    // fill, node2 may still be published as behind. Accept only that refusal while waiting.
    let t = Instant::now();
    TestCluster::eventually(T, "switchover to node2 accepted", || async {
        match ops::request(&d, cfg, RequestKind::Switchover, "node2", None).await {
            Ok(_) => Ok(Some(())),
            Err(e)
                if e.to_string().contains("node2 is") && e.to_string().contains("bytes behind") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node2");
    eprintln!("switchover done in {:?}", t.elapsed());
    h.wait_streaming_replica("node1", T).await?;
    Ok(())
}

#[test]
fn unsafe_timings_are_rejected_naming_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgha.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nname = \"x\"\n[dcs]\netcd = [\"http://127.0.0.1:1\"]\n[failover]\nttl = \"3s\"\nloop_wait = \"2s\"\n[[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\ndata_dir = \"/tmp/x/a\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "--node", "a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("failover.loop_wait: 2s is longer than a quarter of failover.ttl (3s)"),
        "{err}"
    );
}

/// `failover_priority` (a tag, reloaded live on SIGHUP) decides between two equally advanced
/// replicas: node3 (priority 2) wins over node2, which the name order alone would pick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_priority_decides_between_equally_advanced_replicas() -> anyhow::Result<()> {
    let mut h = ha(2, false, "").await?;
    h.edit_node_and_reload("node3", "failover_priority = 2\n")?;
    let d = dcs(&h).await?;
    TestCluster::eventually(T, "node3 publishes failover_priority 2", || async {
        let v = d.view().await?;
        Ok((v.members.get("node3").and_then(|m| m.failover_priority) == Some(2)).then_some(()))
    })
    .await?;
    exec(&h, "node1", "CREATE TABLE prio (x int)").await?;
    exec(&h, "node1", "INSERT INTO prio VALUES (1)").await?;
    let lsn = |node: &'static str, sql: &'static str| {
        let h = &h;
        async move {
            let mut c = h.cluster.conn(node).await?;
            let l: String = sqlx::query_scalar(sql).fetch_one(&mut c).await?;
            anyhow::Ok(l)
        }
    };
    TestCluster::eventually(T, "both replicas hold all of the primary's WAL", || async {
        let p = lsn("node1", "SELECT pg_current_wal_flush_lsn()::text").await?;
        let received = "SELECT pg_last_wal_receive_lsn()::text";
        let (a, b) = (lsn("node2", received).await?, lsn("node3", received).await?);
        Ok((a == p && b == p).then_some(()))
    })
    .await?;
    h.kill_node("node1")?;
    let new = h.wait_single_primary(T, Some("node1")).await?;
    assert_eq!(new, "node3", "the higher failover_priority must win a tie");
    assert_eq!(count(&h, "node3", "SELECT count(*) FROM prio").await?, 1);
    Ok(())
}
