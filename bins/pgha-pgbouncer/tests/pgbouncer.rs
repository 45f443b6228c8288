//! `pgha-pgbouncer` against real PgBouncer 1.18 and real PostgreSQL clusters: the rendered config
//! is accepted, the read-write entry writes on the primary, the read-only entry reads on a
//! replica, a wrong password is refused, PAUSE holds queries until RESUME, `follow` moves the
//! read-write entry to a promoted replica, and bad input gets a clear error.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, create_app, pool_config, text};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha_config::{ConfigSource, Secret};
use pgha_pooling_config::PgBouncerProcess;
use pgha_postgres::{PgControl, StopMode};
use pgha_test_support::{free_port, TestCluster};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Row};

const T: Duration = Duration::from_secs(30);
const APP_PASSWORD: &str = "app-Secret-42";

fn pooling(path: &Path) -> pgha_config::PoolingSection {
    pgha_config::load(ConfigSource::Flag(path.to_owned()))
        .unwrap()
        .config
        .pooling
        .unwrap()
}

/// A client through PgBouncer. Queries go as simple-protocol `raw_sql`: in transaction pooling
/// a prepared statement may land on another server connection.
async fn client(port: u16, db: &str, password: &str) -> Result<PgConnection, sqlx::Error> {
    let o = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username("app")
        .password(password)
        .database(db)
        .disable_statement_logging();
    tokio::time::timeout(Duration::from_secs(3), o.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// First column of the first row, as text.
async fn one(conn: &mut PgConnection, sql: &str) -> Result<String, sqlx::Error> {
    let rows = sqlx::raw_sql(sql).fetch_all(conn).await?;
    let row = rows.last().ok_or(sqlx::Error::RowNotFound)?;
    row.try_get_unchecked::<String, _>(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_writes_to_primary_reads_to_replica_and_checks_passwords() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let port = free_port("127.0.0.1")?;

    // Bad input first: no [pooling] section, then a role that does not exist.
    let o = bin(&c.config_path(), &["render"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("has no [pooling] section"),
        "{}",
        text(&o)
    );
    let bad = pool_config(
        &c,
        port.port,
        "pool_mode = \"sometimes\"\nadmin_users = [\"ops\"]",
    );
    let o = bin(&bad, &["render"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pool_mode"), "{}", text(&o));
    let bad = pool_config(&c, port.port, "admin_users = [\"ops\"]");
    let o = bin(&bad, &["render"]);
    assert!(
        text(&o).contains("pooling.admin_users: must include postgres.superuser `postgres`"),
        "{}",
        text(&o)
    );
    let cfg = pool_config(&c, port.port, "");
    let o = bin(&cfg, &["render"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            "role `app` (pooling.users/admin_users/stats_users/auth_user) does not exist"
        ),
        "{}",
        text(&o)
    );

    create_app(&c, "node1", APP_PASSWORD).await?;
    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let pool = pooling(&cfg);
    let ini = std::fs::read_to_string(&pool.ini_path)?;
    let node1 = c.config().node("node1").unwrap().port;
    let node2 = c.config().node("node2").unwrap().port;
    assert!(
        ini.contains(&format!("app = host=127.0.0.1 port={node1} dbname=app")),
        "{ini}"
    );
    assert!(
        ini.contains(&format!("app_ro = host=127.0.0.1 port={node2} dbname=app")),
        "{ini}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pool.userlist_path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "userlist mode");
    }
    let userlist = std::fs::read_to_string(&pool.userlist_path)?;
    assert!(
        userlist.contains("\"app\" \"SCRAM-SHA-256$4096:"),
        "{userlist}"
    );
    assert!(!userlist.contains(APP_PASSWORD));

    // The console commands say plainly when PgBouncer is not there.
    let o = bin(&cfg, &["pause"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!(
            "PgBouncer admin console at 127.0.0.1:{}: connect failed",
            port.port
        )),
        "{}",
        text(&o)
    );

    // PgBouncer accepts the rendered config.
    let t = Instant::now();
    let bouncer = PgBouncerProcess::start(&pool, T)?;
    eprintln!("pgbouncer up in {:?}", t.elapsed());

    // The admin console lists both entries as rendered.
    let console = pgha_pooling_config::ConsoleTarget::from_config(
        &pgha_config::load(ConfigSource::Flag(cfg.clone()))?.config,
    )?;
    let mut admin = pgha_pooling_config::AdminConsole::connect(&console).await?;
    let dbs = admin.databases().await?;
    admin.close().await;
    assert!(
        dbs.contains(&("app".into(), Some("127.0.0.1".into()), Some(node1.into()))),
        "{dbs:?}"
    );
    assert!(
        dbs.contains(&(
            "app_ro".into(),
            Some("127.0.0.1".into()),
            Some(node2.into())
        )),
        "{dbs:?}"
    );

    // Read-write entry: writes land on the primary.
    let mut rw = client(port.port, "app", APP_PASSWORD).await?;
    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")
        .execute(&mut rw)
        .await?;
    assert_eq!(
        one(&mut rw, "SELECT pg_is_in_recovery()::text").await?,
        "false"
    );
    assert_eq!(
        one(&mut rw, "SELECT inet_server_port()::text").await?,
        node1.to_string()
    );

    // Read-only entry: reads on a replica, which has the row.
    let got = TestCluster::eventually(T, "row on the read-only entry", || async {
        let mut ro = client(port.port, "app_ro", APP_PASSWORD).await?;
        let rec = one(&mut ro, "SELECT pg_is_in_recovery()::text").await?;
        let v = one(
            &mut ro,
            "SELECT coalesce((SELECT v FROM t WHERE id = 1), '')",
        )
        .await
        .unwrap_or_default();
        Ok((v == "one").then_some(rec))
    })
    .await?;
    assert_eq!(got, "true", "read-only entry must reach a replica");
    let mut ro = client(port.port, "app_ro", APP_PASSWORD).await?;
    let err = sqlx::raw_sql("INSERT INTO t VALUES (2, 'two')")
        .execute(&mut ro)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("read-only transaction"), "{err}");

    // Wrong password and unknown user are refused by PgBouncer.
    let err = client(port.port, "app", "wrong-password")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("authentication failed"), "{err}");

    // PAUSE holds new queries; RESUME releases them.
    let o = bin(&cfg, &["pause"]);
    assert!(o.status.success(), "{}", text(&o));
    let waiting = async {
        let mut c = client(port.port, "app", APP_PASSWORD).await?;
        let t = Instant::now();
        one(&mut c, "SELECT 42::text").await?;
        Ok::<_, sqlx::Error>(t.elapsed())
    };
    tokio::pin!(waiting);
    tokio::select! {
        r = &mut waiting => panic!("query ran while PgBouncer was paused: {r:?}"),
        () = tokio::time::sleep(Duration::from_millis(700)) => {}
    }
    let o = bin(&cfg, &["resume"]);
    assert!(o.status.success(), "{}", text(&o));
    let held = waiting.await?;
    assert!(held >= Duration::from_millis(500), "held only {held:?}");
    eprintln!("query held {held:?} by PAUSE");
    drop(bouncer);
    Ok(())
}

fn spawn_follow(config: &Path, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgha-pgbouncer"))
        .args(["-v", "follow"])
        .env("PGHA_CONFIG", config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap()
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_moves_the_read_write_entry_to_the_promoted_replica() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let port = free_port("127.0.0.1")?;
    create_app(&c, "node1", APP_PASSWORD).await?;
    let cfg = pool_config(
        &c,
        port.port,
        "poll_interval = \"500ms\"\nuserlist_refresh = \"1s\"",
    );
    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let pool = pooling(&cfg);
    let bouncer = PgBouncerProcess::start(&pool, T)?;
    let follow_log = c.root().join("follow.log");
    let _follow = KillOnDrop(spawn_follow(&cfg, &follow_log));
    TestCluster::eventually(T, "follow's first reload", || async {
        let log = std::fs::read_to_string(&follow_log)?;
        Ok(log.contains("PgBouncer reloaded").then_some(()))
    })
    .await?;

    let mut rw = client(port.port, "app", APP_PASSWORD).await?;
    sqlx::raw_sql("CREATE TABLE w (at timestamptz DEFAULT now())")
        .execute(&mut rw)
        .await?;
    let node2 = c.config().node("node2").unwrap().port;
    TestCluster::eventually(T, "table w on node2 (via app_ro)", || async {
        let mut r = client(port.port, "app_ro", APP_PASSWORD).await?;
        let n = one(
            &mut r,
            "SELECT count(*)::text FROM pg_class WHERE relname = 'w'",
        )
        .await?;
        Ok((n == "1").then_some(()))
    })
    .await?;
    drop(rw);

    // Failover by hand: the primary dies, the replica is promoted.
    let killed = Instant::now();
    c.instance("node1")?.stop(StopMode::Immediate).await?;
    c.instance("node2")?.promote().await?;
    let promoted = Instant::now();

    // A client keeps trying to write through the read-write entry.
    let port_n = port.port;
    let reached = TestCluster::eventually(T, "write through app reaching node2", || async move {
        let attempt = async {
            let mut c = client(port_n, "app", APP_PASSWORD).await?;
            one(
                &mut c,
                "INSERT INTO w DEFAULT VALUES; SELECT inet_server_port()::text",
            )
            .await
        };
        match tokio::time::timeout(Duration::from_millis(1500), attempt).await {
            Ok(Ok(port)) => Ok((port == node2.to_string()).then_some(Instant::now())),
            _ => Ok(None),
        }
    })
    .await;
    let log = std::fs::read_to_string(&follow_log).unwrap_or_default();
    let reached = reached.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nfollow log:\n{log}\npgbouncer:\n{}",
            bouncer.log_tail(30)
        )
    })?;
    let from_kill = reached - killed;
    let from_promote = reached - promoted;
    eprintln!(
        "failover: read-write entry reached the new primary {:.0} ms after the promote ({:.0} ms after the kill)",
        from_promote.as_secs_f64() * 1000.0,
        from_kill.as_secs_f64() * 1000.0
    );
    assert!(
        from_promote < Duration::from_secs(5),
        "took {from_promote:?}\n{log}"
    );
    let ini = std::fs::read_to_string(&pool.ini_path)?;
    assert!(
        ini.contains(&format!("app = host=127.0.0.1 port={node2} dbname=app")),
        "{ini}"
    );
    assert!(log.contains("PgBouncer reloaded"), "{log}");

    // A changed password reaches userlist.txt within userlist_refresh.
    let mut p = c.conn("node2").await?;
    let v = pgha_postgres::scram::verifier(&Secret::new("app-New-43"));
    sqlx::query(&format!("ALTER ROLE app PASSWORD '{v}'"))
        .execute(&mut p)
        .await?;
    let t = Instant::now();
    TestCluster::eventually(T, "login with the new password", || async move {
        Ok(client(port_n, "app", "app-New-43").await.ok().map(|_| ()))
    })
    .await?;
    eprintln!(
        "new password accepted through PgBouncer after {:?}",
        t.elapsed()
    );
    assert!(client(port_n, "app", APP_PASSWORD).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_under_pause_makes_clients_wait_not_fail() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let port = free_port("127.0.0.1")?;
    create_app(&c, "node1", APP_PASSWORD).await?;
    let cfg = pool_config(&c, port.port, "");
    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let config = pgha_config::load(ConfigSource::Flag(cfg.clone()))?.config;
    let pool = config.pooling.clone().unwrap();
    let _bouncer = PgBouncerProcess::start(&pool, T)?;
    let node2 = c.config().node("node2").unwrap().port;
    let mut rw = client(port.port, "app", APP_PASSWORD).await?;
    sqlx::raw_sql("CREATE TABLE w (at timestamptz DEFAULT now())")
        .execute(&mut rw)
        .await?;
    // Let node2 replay the table before the switch.
    TestCluster::eventually(T, "table w on node2", || async {
        let mut r = client(port.port, "app_ro", APP_PASSWORD).await?;
        let n = one(
            &mut r,
            "SELECT count(*)::text FROM pg_class WHERE relname = 'w'",
        )
        .await?;
        Ok((n == "1").then_some(()))
    })
    .await?;

    let console = pgha_pooling_config::ConsoleTarget::from_config(&config)?;
    let (n1, n2) = (c.instance("node1")?, c.instance("node2")?);
    let switch = pgha_pooling_config::paused(&console, || async {
        n1.stop(StopMode::Fast).await?;
        n2.promote().await?;
        pgha_pooling_config::apply(&config, &console).await
    });
    // A client writes while the switch runs: it waits for RESUME, then lands on node2.
    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let port = one(
            &mut rw,
            "INSERT INTO w DEFAULT VALUES; SELECT inet_server_port()::text",
        )
        .await;
        (port, t.elapsed())
    };
    let (switched, (written, waited)) = tokio::join!(switch, writer);
    let topology = switched?;
    assert_eq!(topology.primary.node, "node2");
    assert_eq!(
        written?,
        node2.to_string(),
        "the write must land on the new primary"
    );
    eprintln!("switchover under PAUSE: the client's write waited {waited:?}, no error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_entry_round_robins_over_replicas_sharing_a_port() -> anyhow::Result<()> {
    let c = TestCluster::start(2).await?;
    let port = free_port("127.0.0.1")?;
    create_app(&c, "node1", APP_PASSWORD).await?;
    // PgBouncer 1.18 takes one port per entry: move node3 to 127.0.0.2 on node2's port, as two
    // replicas on two hosts would be. postgresql.auto.conf is read after pgha-node.conf.
    let node2 = c.config().node("node2").unwrap().port;
    let node3_old = c.config().node("node3").unwrap().port;
    let n3 = c.instance("node3")?;
    n3.stop(StopMode::Fast).await?;
    let auto = n3.data_dir().join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&format!("port = {node2}\nlisten_addresses = '127.0.0.2'\n"));
    n3.write_data_file("postgresql.auto.conf", &conf)?;
    n3.start().await?;
    let cfg = pool_config(&c, port.port, "");
    let moved = std::fs::read_to_string(&cfg)?.replace(
        &format!("host = \"127.0.0.1\"\nport = {node3_old}\n"),
        &format!("host = \"127.0.0.2\"\nport = {node2}\n"),
    );
    std::fs::write(&cfg, moved)?;

    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let pool = pooling(&cfg);
    let ini = std::fs::read_to_string(&pool.ini_path)?;
    assert!(
        ini.contains(&format!(
            "app_ro = host=127.0.0.1,127.0.0.2 port={node2} dbname=app"
        )),
        "{ini}"
    );
    let _bouncer = PgBouncerProcess::start(&pool, T)?;

    // Each client holds a transaction open, so each needs its own server connection; PgBouncer
    // rotates new server connections over the host list.
    let mut seen = std::collections::BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut ro = client(port.port, "app_ro", APP_PASSWORD).await?;
        let addr = one(
            &mut ro,
            "BEGIN; SELECT host(inet_server_addr()) || ' ' || pg_is_in_recovery()::text",
        )
        .await?;
        seen.insert(addr);
        held.push(ro);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["127.0.0.1 true".to_string(), "127.0.0.2 true".to_string()],
        "both replicas must serve the read-only entry"
    );
    held.clear();

    // PgBouncer does not skip a host that is down: the follower drops it from the list.
    let follow_log = c.root().join("follow.log");
    let _follow = KillOnDrop(spawn_follow(&cfg, &follow_log));
    TestCluster::eventually(T, "follow's first reload", || async {
        let log = std::fs::read_to_string(&follow_log)?;
        Ok(log.contains("PgBouncer reloaded").then_some(()))
    })
    .await?;
    n3.stop(StopMode::Immediate).await?;
    let t = Instant::now();
    TestCluster::eventually(
        T,
        "node3 dropped from app_ro and PgBouncer reloaded",
        || async {
            let ini = std::fs::read_to_string(&pool.ini_path)?;
            let log = std::fs::read_to_string(&follow_log)?;
            Ok(
                (ini.contains(&format!("app_ro = host=127.0.0.1 port={node2} dbname=app"))
                    && log.matches("PgBouncer reloaded").count() >= 2)
                    .then_some(()),
            )
        },
    )
    .await?;
    eprintln!(
        "stopped replica dropped from the read-only entry after {:?}",
        t.elapsed()
    );
    for _ in 0..4 {
        let mut ro = client(port.port, "app_ro", APP_PASSWORD).await?;
        let addr = one(&mut ro, "BEGIN; SELECT host(inet_server_addr())").await?;
        assert_eq!(addr, "127.0.0.1");
        held.push(ro);
    }
    Ok(())
}
