//! The pgha-exporter binary against a real cluster: metric names and labels (compared with
//! Debian's prometheus-postgres-exporter when installed), honest lag while a replica's WAL
//! receiver is stopped, down and hanging targets within the timeout, custom queries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha_postgres::{PgControl, StopMode};
use pgha_test_support::{free_port, TestCluster};
use prometheus_parse::{Sample, Scrape, Value};

/// The exporter process, killed on drop.
struct ExporterProc {
    child: Child,
    addr: String,
}

impl Drop for ExporterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_exporter(config: &Path) -> ExporterProc {
    let port = free_port("127.0.0.1").unwrap();
    let addr = format!("127.0.0.1:{}", port.port);
    drop(port);
    let child = Command::new(env!("CARGO_BIN_EXE_pgha-exporter"))
        .args(["--config"])
        .arg(config)
        .args(["--listen", &addr])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "exporter did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ExporterProc { child, addr }
}

/// GET `path`; the body (status must be 200).
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{path}: {head}\n{body}");
    body.to_owned()
}

fn scrape(addr: &str, path: &str) -> Scrape {
    let body = get(addr, path);
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn value(s: &Sample) -> f64 {
    match s.value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// The single sample of `name` whose labels include `labels`.
fn one(sc: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = sc
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    value(found[0])
}

/// name -> label names, for every family.
fn signature(sc: &Scrape) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &sc.samples {
        let labels: BTreeSet<String> = s.labels.keys().cloned().collect();
        out.entry(s.metric.clone()).or_default().extend(labels);
    }
    out
}

const REQUIRED: &[&str] = &[
    "pg_up",
    "pg_static",
    "pg_postmaster_start_time_seconds",
    "pg_exporter_last_scrape_duration_seconds",
    "pg_exporter_last_scrape_error",
    "pg_exporter_scrapes_total",
    "pg_database_size_bytes",
    "pg_database_connection_limit",
    "pg_locks_count",
    "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections",
    "pg_settings_shared_buffers_bytes",
    "pg_settings_effective_cache_size_bytes",
    "pg_settings_maintenance_work_mem_bytes",
    "pg_settings_work_mem_bytes",
    "pg_settings_max_wal_size_bytes",
    "pg_settings_max_locks_per_transaction",
    "pg_settings_random_page_cost",
    "pg_settings_seq_page_cost",
    "pg_settings_max_worker_processes",
    "pg_settings_max_parallel_workers",
    "pg_stat_activity_count",
    "pg_stat_activity_max_tx_duration",
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_blks_read",
    "pg_stat_database_blks_hit",
    "pg_stat_database_tup_returned",
    "pg_stat_database_tup_fetched",
    "pg_stat_database_tup_inserted",
    "pg_stat_database_tup_updated",
    "pg_stat_database_tup_deleted",
    "pg_stat_database_conflicts",
    "pg_stat_database_deadlocks",
    "pg_stat_database_temp_bytes",
    "pg_stat_bgwriter_checkpoints_timed_total",
    "pg_stat_bgwriter_buffers_alloc_total",
    "pg_replication_lag_seconds",
    "pg_replication_is_replica",
    "pg_replication_last_replay_seconds",
    "pg_replication_slots_active",
    "pg_replication_slots_pg_wal_lsn_diff",
    "pg_stat_replication_pg_wal_lsn_diff",
    "pg_stat_archiver_archived_count",
    "pg_stat_archiver_failed_count",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "pg_replication_lag_bytes",
    "pg_stat_replication_count",
    "pgha_node_role",
    "pgha_node_up",
    "pgha_wal_receiver_streaming",
    "pgha_replication_lag_seconds",
    "pgha_replication_lag_bytes",
    "pg_custom_answer",
];

const QUERIES: &str = "\
pg_custom:
  query: \"SELECT 'x' AS kind, 42 AS answer, 7 AS skipped\"
  master: true
  cache_seconds: 5
  metrics:
    - kind:
        usage: \"LABEL\"
        description: \"a label\"
    - answer:
        usage: \"GAUGE\"
        description: \"the answer\"
    - skipped:
        usage: \"DISCARD\"
        description: \"not exported\"
pg_stat_user_tables:
  query: \"SELECT 'x'::text AS relname, 1 AS n_dead_tup\"
  metrics:
    - relname:
        usage: \"LABEL\"
        description: \"table\"
    - n_dead_tup:
        usage: \"GAUGE\"
        description: \"the old example queries.yaml's copy of a built-in family\"
pg_old_only:
  query: \"SELECT 1 AS n\"
  runonserver: \"<10.0.0\"
  metrics:
    - n:
        usage: \"GAUGE\"
        description: \"only before 10\"
pg_new_only:
  query: \"SELECT 1 AS n\"
  runonserver: \">=10.0.0 <15.0.0 || 15.x\"
  metrics:
    - n:
        usage: \"GAUGE\"
        description: \"10 and later\"
";

/// Expressions of awesome-prometheus-alerts' postgres_exporter rules (the ones on series a
/// postgres_exporter exports by default).
const POPULAR_ALERTS: &[&str] = &[
    "pg_up == 0",
    "time() - pg_postmaster_start_time_seconds < 60",
    "pg_exporter_last_scrape_error > 0",
    "(pg_stat_user_tables_last_autovacuum > 0) and (time() - pg_stat_user_tables_last_autovacuum) > 60 * 60 * 24 * 10",
    "(pg_stat_user_tables_last_autoanalyze > 0) and (time() - pg_stat_user_tables_last_autoanalyze) > 24 * 60 * 60 * 10",
    "sum by (datname) (pg_stat_activity_count{datname!~\"template.*|postgres\"}) > pg_settings_max_connections * 0.8",
    "increase(pg_stat_database_deadlocks{datname!~\"template.*|postgres\"}[1m]) > 5",
    "rate(pg_stat_database_xact_rollback{datname!~\"template.*\"}[3m]) / rate(pg_stat_database_xact_commit{datname!~\"template.*\"}[3m]) > 0.02",
    "rate(pg_txid_current[1m]) < 5",
    "pg_replication_slots_active == 0",
    "((pg_stat_user_tables_n_dead_tup > 10000) / (pg_stat_user_tables_n_live_tup + pg_stat_user_tables_n_dead_tup)) >= 0.1",
    "pg_database_wraparound_age_datfrozenxid_seconds > 1500000000",
    "pg_long_running_transactions_oldest_timestamp_seconds > 300",
    "pg_replication_lag_seconds > 30",
    "(pg_stat_database_blks_hit / (pg_stat_database_blks_read + pg_stat_database_blks_hit)) < 0.98",
];

/// The `pg_*` series names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("pg_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The cluster's pgha.toml plus a `[monitoring]` section and a hanging fake node `node9`.
fn exporter_config(c: &TestCluster, dir: &Path, blackhole: u16) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(c.config_path()).unwrap();
    // Secrets are relative to the original file.
    let base = c.config_path().parent().unwrap().to_owned();
    text = text.replace(
        "{ file = \"secrets/",
        &format!("{{ file = \"{}/secrets/", base.display()),
    );
    std::fs::write(dir.join("queries.yml"), QUERIES).unwrap();
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"node9\"\nhost = \"127.0.0.1\"\nport = {blackhole}\ndata_dir = \"{}/node9\"\n\n\
         [monitoring]\ntarget_timeout = \"1s\"\nqueries_file = \"queries.yml\"\n",
        dir.display()
    ));
    let path = dir.join("pgha.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_metrics_lag_and_down_targets() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let dir = tempfile::tempdir()?;
    // A "slow" node: accepts TCP connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let cfg = exporter_config(&c, dir.path(), blackhole.local_addr()?.port());
    let exp = start_exporter(&cfg);

    // Names, labels and plausible values.
    let t = Instant::now();
    let m = scrape(&exp.addr, "/metrics");
    let took = t.elapsed();
    let sig = signature(&m);
    for name in REQUIRED {
        assert!(sig.contains_key(*name), "missing {name}");
    }
    assert!(
        took < Duration::from_millis(1900),
        "a hanging node stalled /metrics: {took:?}"
    );
    assert_eq!(one(&m, "pg_up", &[]), 1.0);
    assert_eq!(one(&m, "pg_settings_max_connections", &[]), 30.0);
    assert_eq!(
        one(&m, "pg_settings_shared_buffers_bytes", &[]),
        16.0 * 1048576.0
    );
    assert_eq!(one(&m, "pg_replication_is_replica", &[]), 0.0);
    assert_eq!(one(&m, "pg_stat_replication_count", &[]), 1.0);
    assert_eq!(one(&m, "pg_custom_answer", &[("kind", "x")]), 42.0);
    assert!(!sig.contains_key("pg_custom_skipped"));
    // runonserver is a version range over the server (PostgreSQL 15 here).
    assert_eq!(one(&m, "pg_new_only_n", &[]), 1.0);
    assert!(!sig.contains_key("pg_old_only_n"));
    assert!(
        one(
            &m,
            "pg_stat_database_xact_commit",
            &[("datname", "postgres")]
        ) > 0.0
    );
    assert!(one(&m, "pg_database_size_bytes", &[("datname", "postgres")]) > 1e6);
    assert!(one(&m, "process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(
        sig["pg_locks_count"],
        ["datname", "mode", "server"].map(String::from).into()
    );
    assert_eq!(
        sig["pg_stat_activity_count"],
        ["datname", "server", "state"].map(String::from).into()
    );
    assert_eq!(
        one(
            &m,
            "pgha_node_role",
            &[("node", "node1"), ("role", "primary")]
        ),
        1.0
    );
    assert_eq!(
        one(
            &m,
            "pgha_node_role",
            &[("node", "node2"), ("role", "replica")]
        ),
        1.0
    );
    assert_eq!(
        one(&m, "pgha_wal_receiver_streaming", &[("node", "node2")]),
        1.0
    );
    assert_eq!(one(&m, "pgha_node_up", &[("node", "node9")]), 0.0);
    let pv = m.samples.iter().find(|s| s.metric == "pg_static").unwrap();
    assert!(
        pv.labels.get("short_version").unwrap().starts_with("15."),
        "{pv:?}"
    );

    // Same names and label names as postgres_exporter for every family it exports.
    postgres_exporter_diff(&c, &sig).await?;

    // The collectors postgres_exporter added after 0.11: values that move with the database.
    let mut p = c.conn("node1").await?;
    sqlx::raw_sql(
        "CREATE TABLE bloat (v int); INSERT INTO bloat SELECT generate_series(1, 100); \
         DELETE FROM bloat WHERE v <= 40; SELECT pg_stat_force_next_flush()",
    )
    .execute(&mut p)
    .await?;
    let mut long = c.conn("node1").await?;
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM bloat")
        .execute(&mut long)
        .await?;
    let bloat = [("relname", "bloat"), ("schemaname", "public")];
    let m2 = TestCluster::eventually(Duration::from_secs(10), "bloat stats", || async {
        let m = scrape(&exp.addr, "/metrics");
        let dead = m.samples.iter().any(|s| {
            s.metric == "pg_stat_user_tables_n_dead_tup"
                && s.labels.get("relname") == Some("bloat")
                && value(s) == 40.0
        });
        let oldest = m
            .samples
            .iter()
            .find(|s| s.metric == "pg_long_running_transactions_oldest_timestamp_seconds")
            .map(value);
        Ok((dead && oldest.is_some_and(|v| v >= 1.0)).then_some(m))
    })
    .await?;
    assert_eq!(one(&m2, "pg_stat_user_tables_n_live_tup", &bloat), 60.0);
    // The queries.yml copy of pg_stat_user_tables does not double the built-in family.
    assert!(
        !m2.samples
            .iter()
            .any(|s| s.metric == "pg_stat_user_tables_n_dead_tup"
                && s.labels.get("relname") == Some("x")),
        "a queries.yml duplicate of a built-in family was exported"
    );
    assert_eq!(one(&m2, "pg_exporter_last_scrape_error", &[]), 1.0);
    assert_eq!(one(&m2, "pg_stat_user_tables_n_tup_del", &bloat), 40.0);
    assert!(one(&m2, "pg_stat_user_tables_table_size_bytes", &bloat) > 0.0);
    assert_eq!(one(&m2, "pg_stat_user_tables_last_autovacuum", &bloat), 0.0);
    assert!(one(&m2, "pg_statio_user_tables_heap_blocks_hit", &bloat) > 0.0);
    assert_eq!(
        signature(&m2)["pg_stat_user_tables_seq_scan"],
        ["datname", "relname", "schemaname"]
            .map(String::from)
            .into()
    );
    assert!(
        one(
            &m2,
            "pg_database_wraparound_age_datfrozenxid_seconds",
            &[("datname", "postgres")]
        ) > 0.0
    );
    assert_eq!(
        one(
            &m2,
            "pg_long_running_transactions_count",
            &[("threshold", "60")]
        ),
        0.0
    );
    assert!(one(&m2, "pg_wal_segments", &[]) >= 1.0);
    assert!(one(&m2, "pg_wal_lsn_location_bytes", &[]) > 0.0);
    // pg_txid_current moves with write transactions and scraping does not spend one.
    let x1 = one(&m2, "pg_txid_current", &[]);
    let x2 = one(&scrape(&exp.addr, "/metrics"), "pg_txid_current", &[]);
    assert_eq!(x1, x2, "a scrape spent a transaction id");
    sqlx::query("INSERT INTO bloat VALUES (0)")
        .execute(&mut p)
        .await?;
    let x3 = one(&scrape(&exp.addr, "/metrics"), "pg_txid_current", &[]);
    assert!(x3 > x2, "{x2} -> {x3}");
    drop(long);
    // The popular PostgreSQL alert rules (awesome-prometheus-alerts) find every series.
    let sig2 = signature(&m2);
    let used: usize = POPULAR_ALERTS.iter().map(|e| metric_names(e).len()).sum();
    assert!(used >= 20, "the expressions name {used} series");
    // Every series the Grafana dashboards (docs/grafana) take from the exporter is exported.
    let ours = pgha_test_support::dashboards::series_of("exporter");
    assert!(ours.len() >= 20, "{ours:?}");
    for (file, name) in &ours {
        assert!(
            sig2.contains_key(name),
            "{file} queries {name}, which is not exported"
        );
    }
    for expr in POPULAR_ALERTS {
        for name in metric_names(expr) {
            assert!(
                sig2.contains_key(&name),
                "`{name}` of `{expr}` is not exported"
            );
        }
    }

    // The hanging node: pg_up 0 within the timeout.
    let t = Instant::now();
    let p9 = scrape(&exp.addr, "/probe?target=node9");
    assert_eq!(one(&p9, "pg_up", &[]), 0.0);
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );

    // Honest lag: break node2's primary_conninfo so its WAL receiver stops, keep writing.
    let mut p = c.conn("node1").await?;
    sqlx::query("CREATE TABLE lag_probe (v int)")
        .execute(&mut p)
        .await?;
    // `master: true` is postgres_exporter's "DSN's database only", not "primary only": the
    // query runs on the replica too.
    let probe2 = scrape(&exp.addr, "/probe?target=node2");
    assert_eq!(one(&probe2, "pg_replication_is_replica", &[]), 1.0);
    assert_eq!(one(&probe2, "pg_custom_answer", &[("kind", "x")]), 42.0);
    // A checkpoint after the last commit node2 will receive: its shutdown restartpoint then
    // leaves no commit record to replay at its next start (pg_last_xact_replay_timestamp()
    // stays NULL there, the case below).
    sqlx::query("CHECKPOINT").execute(&mut p).await?;
    let mut r = c.conn("node2").await?;
    TestCluster::eventually(Duration::from_secs(10), "node2 replays", || async {
        let m = scrape(&exp.addr, "/probe?target=node2");
        Ok((one(&m, "pg_replication_lag_bytes", &[]) == 0.0).then_some(()))
    })
    .await?;
    sqlx::query("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'")
        .execute(&mut r)
        .await?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut r)
        .await?;
    TestCluster::eventually(Duration::from_secs(20), "node2 not streaming", || async {
        let m = scrape(&exp.addr, "/metrics");
        Ok((one(&m, "pgha_wal_receiver_streaming", &[("node", "node2")]) == 0.0).then_some(()))
    })
    .await?;
    sqlx::query("INSERT INTO lag_probe SELECT generate_series(1, 1000)")
        .execute(&mut p)
        .await?;
    let first = scrape(&exp.addr, "/probe?target=node2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = scrape(&exp.addr, "/probe?target=node2");
    let (l1, l2) = (
        one(&first, "pg_replication_lag_seconds", &[]),
        one(&second, "pg_replication_lag_seconds", &[]),
    );
    assert!(
        l1 > 0.0 && l2 >= l1 + 1.0,
        "lag must grow while not streaming: {l1} -> {l2}"
    );
    assert!(one(&second, "pg_replication_lag_bytes", &[]) > 0.0);
    assert_eq!(one(&second, "pg_replication_is_replica", &[]), 1.0);

    // A stopped node: pg_up 0 within the timeout while the local node still reports.
    c.instance("node2")?.stop(StopMode::Fast).await?;
    let t = Instant::now();
    let p2 = scrape(&exp.addr, "/probe?target=node2");
    assert_eq!(one(&p2, "pg_up", &[]), 0.0);
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    let m = scrape(&exp.addr, "/metrics");
    assert_eq!(one(&m, "pg_up", &[]), 1.0);
    assert_eq!(one(&m, "pgha_node_up", &[("node", "node2")]), 0.0);

    // Restarted without a reachable upstream, node2 has replayed nothing since it started:
    // the lag is still a number that grows (the replay age was NULL: last_replay read 0 and a
    // freshly started exporter's lag was NaN, so an alert on it never fired).
    sqlx::query("INSERT INTO lag_probe SELECT generate_series(1, 10)")
        .execute(&mut p)
        .await?;
    c.instance("node2")?.start().await?;
    let first = TestCluster::eventually(Duration::from_secs(10), "node2 scraped", || async {
        let m = scrape(&exp.addr, "/probe?target=node2");
        Ok((one(&m, "pg_up", &[]) == 1.0).then_some(m))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = scrape(&exp.addr, "/probe?target=node2");
    assert_eq!(one(&second, "pg_replication_is_replica", &[]), 1.0);
    let mut r = c.conn("node2").await?;
    let replayed: Option<String> =
        sqlx::query_scalar("SELECT pg_last_xact_replay_timestamp()::text")
            .fetch_one(&mut r)
            .await?;
    assert_eq!(
        replayed, None,
        "the case under test: nothing replayed since the start"
    );
    let (l1, l2) = (
        one(&first, "pg_replication_lag_seconds", &[]),
        one(&second, "pg_replication_lag_seconds", &[]),
    );
    assert!(
        l1 >= 0.0 && l2 >= l1 + 1.0,
        "lag after a restart without upstream must be a growing number: {l1} -> {l2}"
    );
    // The replica's own answer, not the exporter's memory of when node2 was caught up (a
    // restarted exporter has none): the age of the last replay counts from the start.
    let (a1, a2) = (
        one(&first, "pg_replication_last_replay_seconds", &[]),
        one(&second, "pg_replication_last_replay_seconds", &[]),
    );
    assert!(
        a1 > 0.0 && a2 >= a1 + 1.0,
        "last replay age after a restart must grow from the start: {a1} -> {a2}"
    );
    drop(blackhole);
    Ok(())
}

/// Runs Debian's prometheus-postgres-exporter against node1 (when installed) and checks that
/// every family it exports exists in ours with the same label names.
async fn postgres_exporter_diff(
    c: &TestCluster,
    ours: &BTreeMap<String, BTreeSet<String>>,
) -> anyhow::Result<()> {
    let bin = Path::new("/usr/bin/prometheus-postgres-exporter");
    if !bin.exists() {
        eprintln!("prometheus-postgres-exporter not installed: name diff skipped");
        return Ok(());
    }
    let node = c.config().node("node1").unwrap().clone();
    let password = c
        .config()
        .postgres
        .superuser_password
        .clone()
        .unwrap()
        .read()?;
    let port = free_port("127.0.0.1")?;
    let addr = format!("127.0.0.1:{}", port.port);
    drop(port);
    let child = Command::new(bin)
        .arg(format!("--web.listen-address={addr}"))
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "postgresql://postgres:{}@{}/postgres?sslmode=disable",
                password.expose(),
                node.address()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let guard = ExporterProc { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&guard.addr).is_err() {
        assert!(Instant::now() < deadline, "postgres_exporter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let theirs = signature(&scrape(&guard.addr, "/metrics"));
    let mut missing = Vec::new();
    for (name, labels) in &theirs {
        if name.starts_with("go_")
            || name.starts_with("promhttp_")
            || name == "postgres_exporter_build_info"
        {
            continue;
        }
        match ours.get(name) {
            None => missing.push(format!("{name} (absent)")),
            Some(l) if l != labels => {
                missing.push(format!("{name}: theirs {labels:?}, ours {l:?}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "differences from postgres_exporter:\n{}",
        missing.join("\n")
    );
    Ok(())
}

#[test]
fn malformed_queries_file_names_file_query_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("bad.yml");
    std::fs::write(&queries, QUERIES.replace("\"GAUGE\"", "\"GAUGY\"")).unwrap();
    let cfg = dir.path().join("pgha.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cluster]\nname = \"t\"\n[monitoring]\nqueries_file = \"{}\"\n\
             [[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\ndata_dir = \"/nonexistent\"\n",
            queries.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgha-exporter"))
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}:9: query `pg_custom`: column `answer`",
            queries.display()
        )),
        "{err}"
    );
    assert!(err.contains("GAUGY"), "{err}");
}

/// With `otlp_endpoint` set, metrics and the `scrape` span reach an OTLP/HTTP collector
/// (here a fake one recording request bodies). No PostgreSQL needed: `pg_up 0` is a metric too.
#[test]
fn otlp_export_pushes_metrics_and_spans() {
    let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = collector.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in collector.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Read head + Content-Length body.
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                return;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgha.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cluster]\nname = \"t\"\n[monitoring]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n\
             target_timeout = \"500ms\"\n\
             [[nodes]]\nname = \"node1\"\nhost = \"127.0.0.1\"\nport = 1\ndata_dir = \"/nonexistent\"\n"
        ),
    )
    .unwrap();
    let listen = free_port("127.0.0.1").unwrap();
    let addr = format!("127.0.0.1:{}", listen.port);
    drop(listen);
    let child = Command::new(env!("CARGO_BIN_EXE_pgha-exporter"))
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &addr, "--otlp-interval-ms", "300"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ExporterProc { child, addr };
    let (mut metrics, mut traces) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(metrics && traces) && Instant::now() < deadline {
        let Ok(req) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if req.starts_with("POST /v1/metrics ") {
            assert!(req.contains("\"resourceMetrics\""), "{req}");
            metrics |= req.contains("\"name\":\"pg_up\"");
        }
        if req.starts_with("POST /v1/traces ") {
            assert!(req.contains("\"resourceSpans\""), "{req}");
            traces |= req.contains("\"name\":\"scrape\"");
        }
    }
    assert!(metrics, "no pg_up pushed to /v1/metrics");
    assert!(traces, "no scrape span pushed to /v1/traces");
}
