//! The router against a real PostgreSQL cluster: reads land on replicas, lagging and stopped
//! replicas are skipped, a promotion by hand moves writes, token reads are never stale, and
//! malformed URLs are refused with a message that names the problem.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgha_postgres::{PgControl, StopMode};
use pgha_router::{Fallback, NodeState, ReadYourWrites, Router, RouterError, RouterOptions};
use pgha_test_support::TestCluster;

const T: Duration = Duration::from_secs(30);

fn fast_options() -> RouterOptions {
    RouterOptions {
        health_interval: Duration::from_millis(100),
        check_timeout: Duration::from_secs(2),
        failover_wait: Duration::from_secs(20),
        max_connections: 4,
        ..RouterOptions::default()
    }
}

async fn router_for(c: &TestCluster, opts: RouterOptions) -> anyhow::Result<Router> {
    Ok(Router::builder()
        .config(c.config(), None)
        .options(opts)
        .build()
        .await?)
}

fn port_of(c: &TestCluster, node: &str) -> i32 {
    i32::from(c.config().node(node).unwrap().port)
}

/// (pg_is_in_recovery(), inet_server_port()) of the node serving a read.
async fn serving(r: &Router) -> anyhow::Result<(bool, i32)> {
    Ok(
        sqlx::query_as("SELECT pg_is_in_recovery(), inet_server_port()")
            .fetch_one(r.reader())
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_land_on_replicas_and_token_reads_are_never_stale() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let router = router_for(&c, fast_options()).await?;
    assert_eq!(router.primary_name().as_deref(), Some("node1"));
    // `Debug` never shows the password (every node's connect options hold it).
    let pw = c
        .config()
        .postgres
        .superuser_password
        .as_ref()
        .unwrap()
        .read()?;
    let shown = format!("{router:?} {:?} {:?}", router.writer(), router.reader());
    assert!(shown.contains("node2"), "{shown}");
    assert!(
        !shown.contains(pw.expose()),
        "the password is in Debug output: {shown}"
    );

    let mut ports = HashSet::new();
    for _ in 0..20 {
        let (in_recovery, port) = serving(&router).await?;
        assert!(in_recovery, "a read was served by the primary");
        ports.insert(port);
    }
    let want: HashSet<i32> = [port_of(&c, "node2"), port_of(&c, "node3")].into();
    assert_eq!(ports, want, "round robin reaches both replicas");

    let (in_recovery, port): (bool, i32) =
        sqlx::query_as("SELECT pg_is_in_recovery(), inet_server_port()")
            .fetch_one(router.writer())
            .await?;
    assert!(!in_recovery);
    assert_eq!(port, port_of(&c, "node1"));

    sqlx::query("CREATE TABLE ryw (id int PRIMARY KEY, v int NOT NULL)")
        .execute(router.writer())
        .await?;
    sqlx::query("INSERT INTO ryw VALUES (1, 0)")
        .execute(router.writer())
        .await?;
    let t = Instant::now();
    for i in 1..=1000 {
        sqlx::query("UPDATE ryw SET v = $1 WHERE id = 1")
            .bind(i)
            .execute(router.writer())
            .await?;
        let token = router.write_token().await?;
        let v: i32 = sqlx::query_scalar("SELECT v FROM ryw WHERE id = 1")
            .fetch_one(&router.reader_after(token))
            .await?;
        assert_eq!(v, i, "round {i}: stale read with token {token}");
    }
    let m = router.metrics().snapshot();
    eprintln!("1000 write+token-read rounds in {:?}: {m:?}", t.elapsed());
    assert!(
        m.token_reads_replica + m.token_reads_waited > 0,
        "no token read was served by a replica: {m:?}"
    );
    router.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replica_is_excluded_then_returns_and_a_stopped_replica_fails_no_read(
) -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let opts = RouterOptions {
        max_lag_bytes: Some(256 << 10),
        max_lag: None,
        ..fast_options()
    };
    let router = router_for(&c, opts).await?;
    let (p2, p3) = (port_of(&c, "node2"), port_of(&c, "node3"));

    let mut n2 = c.conn("node2").await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut n2)
        .await?;
    // 1 MB of WAL past the pause: node2 falls behind the 256 kB bound.
    sqlx::query(
        "CREATE TABLE filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 10000) g",
    )
    .execute(router.writer())
    .await?;
    TestCluster::eventually(T, "node2 marked lagging, node3 up", || async {
        let st = router.nodes();
        let state = |name: &str| st.iter().find(|n| n.name == name).unwrap().state;
        Ok((state("node2") == NodeState::Lagging && state("node3") == NodeState::Up).then_some(()))
    })
    .await?;
    for _ in 0..30 {
        let (rec, port) = serving(&router).await?;
        assert!(rec);
        assert_eq!(port, p3, "a read went to the paused replica");
    }

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut n2)
        .await?;
    TestCluster::eventually(T, "node2 serving reads again", || async {
        let st = router.nodes();
        let n = st.iter().find(|n| n.name == "node2").unwrap();
        Ok((n.state == NodeState::Up).then_some(()))
    })
    .await?;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        seen.insert(serving(&router).await?.1);
    }
    assert!(seen.contains(&p2), "node2 got no reads after resuming");

    // Stop node3 and read at once, before a probe notices: no read fails, all land on node2.
    c.instance("node3")?.stop(StopMode::Fast).await?;
    for i in 0..50 {
        let (rec, port) = serving(&router)
            .await
            .map_err(|e| anyhow::anyhow!("read {i} after stopping node3 failed: {e:#}"))?;
        assert!(rec);
        assert_eq!(port, p2);
    }
    TestCluster::eventually(T, "node3 marked down", || async {
        let st = router.nodes();
        let n = st.iter().find(|n| n.name == "node3").unwrap();
        Ok((n.state == NodeState::Down).then_some(()))
    })
    .await?;

    // With both replicas out, reads fall back to the primary, or fail when configured so.
    c.instance("node2")?.stop(StopMode::Fast).await?;
    let (rec, _) = serving(&router).await?;
    assert!(
        !rec,
        "with no replica left the read should fall back to the primary"
    );
    let strict = Router::builder()
        .config(c.config(), None)
        .options(RouterOptions {
            fallback: Fallback::Error,
            ..fast_options()
        })
        .build()
        .await?;
    let err = serving(&strict).await.unwrap_err().to_string();
    assert!(err.contains("no healthy replica"), "{err}");
    strict.close().await;
    router.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_by_hand_moves_writes_to_the_new_primary() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let router = router_for(
        &c,
        RouterOptions {
            read_your_writes: ReadYourWrites {
                wait: Duration::from_millis(200),
                then: Fallback::Primary,
            },
            ..fast_options()
        },
    )
    .await?;
    sqlx::query("CREATE TABLE moves (id int PRIMARY KEY)")
        .execute(router.writer())
        .await?;

    // SQLSTATE 25006 from the writer (here: the primary made read-only) is noticed at once; the
    // call fails unless marked idempotent, which is retried until the node takes writes again.
    sqlx::query("CREATE TABLE ro (id int PRIMARY KEY)")
        .execute(router.writer())
        .await?;
    let mut n1 = c.conn("node1").await?;
    for q in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(q).execute(&mut n1).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = router.metrics().snapshot();
    let err = sqlx::query("INSERT INTO ro VALUES (1)")
        .execute(router.writer())
        .await
        .unwrap_err();
    let code = err
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("25006"), "{err}");
    let after = router.metrics().snapshot();
    assert!(after.failover_errors > before.failover_errors, "{after:?}");
    assert!(after.rediscoveries > before.rediscoveries, "{after:?}");
    let r = router.clone();
    let retried = tokio::spawn(async move {
        r.idempotent(|| {
            sqlx::query("INSERT INTO ro VALUES (2) ON CONFLICT DO NOTHING").execute(r.writer())
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for q in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(q).execute(&mut n1).await?;
    }
    retried.await??;
    assert!(router.metrics().snapshot().retries > 0);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ro")
        .fetch_one(router.writer())
        .await?;
    assert_eq!(n, 1, "only the idempotent insert ran");
    drop(n1);
    sqlx::query("INSERT INTO moves VALUES (1)")
        .execute(router.writer())
        .await?;
    let token = router.write_token().await?;
    // Wait until node2 has the row, so the promotion loses nothing.
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM moves")
        .fetch_one(&router.reader_after(token))
        .await?;
    TestCluster::eventually(T, "node2 replayed the insert", || async {
        let mut n2 = c.conn("node2").await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM moves")
            .fetch_one(&mut n2)
            .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;

    c.instance("node1")?.stop(StopMode::Fast).await?;
    let mut n2 = c.conn("node2").await?;
    let promoted: bool = sqlx::query_scalar("SELECT pg_promote()")
        .fetch_one(&mut n2)
        .await?;
    assert!(promoted);
    let t = Instant::now();
    // Retried only because it is marked idempotent: the first attempt may hit the dead node.
    let port: i32 = router
        .idempotent(|| {
            sqlx::query_scalar(
                "INSERT INTO moves VALUES (2) ON CONFLICT (id) DO UPDATE SET id = 2 RETURNING inet_server_port()",
            )
            .fetch_one(router.writer())
        })
        .await?;
    eprintln!("first write after promotion: {:?}", t.elapsed());
    assert_eq!(port, port_of(&c, "node2"));
    assert_eq!(router.primary_name().as_deref(), Some("node2"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM moves")
        .fetch_one(router.writer())
        .await?;
    assert_eq!(n, 2);
    assert!(router.metrics().snapshot().primary_changes >= 1);
    // No replica left: reads fall back to the new primary.
    let (rec, port) = serving(&router).await?;
    assert!(!rec);
    assert_eq!(port, port_of(&c, "node2"));
    router.close().await;
    Ok(())
}

#[tokio::test]
async fn malformed_urls_are_refused_with_the_problem_named() {
    for (url, want) in [
        (
            "postgres://app:hunter2@db1:5432,db2:notaport/app",
            "port `notaport`",
        ),
        ("postgres://app:hunter2@/app", "no host"),
        ("http://app:hunter2@db1/app", "scheme"),
        (
            "postgres://app:hunter2@db1,db2/app?target_session_attrs=master",
            "target_session_attrs `master`",
        ),
    ] {
        let err = Router::connect(url).await.unwrap_err();
        assert!(matches!(err, RouterError::InvalidUrl { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(want), "{url}: {msg}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");
    }
    let err = Router::builder()
        .urls(
            "postgres://app:pw@db1/app",
            Some("postgres://app:hunter2@db2:0/app"),
        )
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("port `0`") && !err.contains("hunter2"),
        "{err}"
    );
}
