//! The handles as sqlx [`Acquire`]s against a real PostgreSQL cluster: generic code written
//! for `&PgPool` (`impl Acquire<'_, Database = Postgres>`, as sqlx's migrator takes) runs on
//! the writer on the primary and on a reader on a replica; `primary_pool()` is the primary's
//! pool; a transaction begun through `Acquire` commits on the primary; router errors go through
//! `?` into `sqlx::Error` with the router's error inside; `prometheus()` is valid Prometheus
//! text (promtool) with the counters and node state.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgha_postgres::{PgControl, StopMode};
use pgha_router::{Router, RouterError, RouterOptions};
use pgha_test_support::TestCluster;
use sqlx::{Acquire, Postgres};

/// Written once for any pool-like thing, as library code is.
async fn in_recovery<'c, A>(a: A) -> sqlx::Result<(bool, i32)>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut conn = a.acquire().await?;
    sqlx::query_as("SELECT pg_is_in_recovery(), inet_server_port()")
        .fetch_one(&mut *conn)
        .await
}

async fn insert_in_tx<'c, A>(a: A, v: i32) -> sqlx::Result<()>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = a.begin().await?;
    sqlx::query("INSERT INTO acq VALUES ($1)")
        .bind(v)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_are_sqlx_acquire_and_errors_are_sqlx_errors() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let opts = RouterOptions {
        health_interval: Duration::from_millis(100),
        failover_wait: Duration::from_secs(10),
        max_connections: 4,
        ..RouterOptions::default()
    };
    let router = Router::builder()
        .config(c.config(), None)
        .options(opts)
        .build()
        .await?;
    let primary_port = i32::from(c.config().node("node1").unwrap().port);
    let replica_port = i32::from(c.config().node("node2").unwrap().port);

    assert_eq!(in_recovery(router.writer()).await?, (false, primary_port));
    assert_eq!(in_recovery(router.reader()).await?, (true, replica_port));
    let pool = router.primary_pool()?;
    assert_eq!(in_recovery(&pool).await?, (false, primary_port));

    sqlx::query("CREATE TABLE acq (v int)")
        .execute(router.writer())
        .await?;
    insert_in_tx(router.writer(), 7).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM acq WHERE v = 7")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 1);
    // A transaction begun on a reader is on the replica: a write there is the database's own
    // error (25006), unchanged (once the replica has the table).
    TestCluster::eventually(Duration::from_secs(10), "node2 has acq", || async {
        let (has, port): (bool, i32) =
            sqlx::query_as("SELECT to_regclass('acq') IS NOT NULL, inet_server_port()")
                .fetch_one(router.reader())
                .await?;
        Ok((has && port == replica_port).then_some(()))
    })
    .await?;
    let e = insert_in_tx(router.reader(), 8).await.unwrap_err();
    assert_eq!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("25006"),
        "{e:?}"
    );

    // The counters and node state as Prometheus text: promtool accepts it, values are right.
    let text = router.prometheus();
    promtool_check_metrics(&text);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let get = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let s: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(s.len(), 1, "{name}{labels:?} in\n{text}");
        match s[0].value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        }
    };
    // writer: in_recovery, CREATE TABLE, insert_in_tx (primary_pool() is not the router).
    assert_eq!(get("pgha_router_writes_total", &[]), 3.0);
    assert!(get("pgha_router_reads_total", &[("served_by", "replica")]) >= 2.0);
    assert_eq!(get("pgha_router_node_is_writer", &[("node", "node1")]), 1.0);
    assert_eq!(get("pgha_router_node_is_writer", &[("node", "node2")]), 0.0);
    assert_eq!(get("pgha_router_node_up", &[("node", "node2")]), 1.0);
    assert_eq!(
        get(
            "pgha_router_node_state",
            &[("node", "node2"), ("state", "up")]
        ),
        1.0
    );
    assert!(
        get(
            "pgha_router_pool_connections",
            &[("node", "node1"), ("state", "idle")]
        ) >= 1.0
    );
    assert!(get("pgha_router_node_lag_bytes", &[("node", "node2")]) >= 0.0);
    // Every series the Grafana dashboards (docs/grafana) take from the router is rendered.
    let ours = pgha_test_support::dashboards::series_of("router");
    assert!(ours.len() >= 10, "{ours:?}");
    for (file, name) in &ours {
        assert!(
            scrape.samples.iter().any(|s| &s.metric == name),
            "{file} queries {name}, which the router does not render"
        );
    }

    // No primary (it is stopped): `?` turns the router's error into a retryable sqlx error.
    c.instance("node1")?.stop(StopMode::Immediate).await?;
    let short = Router::builder()
        .config(c.config(), None)
        .options(RouterOptions {
            failover_wait: Duration::from_millis(300),
            check_timeout: Duration::from_millis(500),
            ..RouterOptions::default()
        })
        .build()
        .await?;
    let e = in_recovery(short.writer()).await.unwrap_err();
    assert!(pgha_router::is_failover_error(&e), "{e:?}");
    let sqlx::Error::Io(io) = e else {
        panic!("not an Io error: {e:?}")
    };
    let inner = io.into_inner().unwrap().downcast::<RouterError>().unwrap();
    assert!(matches!(*inner, RouterError::NoPrimary { .. }), "{inner}");
    assert!(matches!(
        short.primary_pool(),
        Err(RouterError::NoPrimary { .. })
    ));
    // node1 shows as down.
    let text = short.prometheus();
    promtool_check_metrics(&text);
    assert!(
        text.contains("pgha_router_node_up{node=\"node1\"} 0"),
        "{text}"
    );
    short.close().await;
    router.close().await;
    Ok(())
}

/// `promtool check metrics` (Debian's prometheus package, installed by `cargo xtask
/// install-deps`) on the text: format and naming lint.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool missing: run `cargo xtask install-deps`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
