//! `auth_user` + `auth_query` and `[pooling.extra]` against real PgBouncer 1.18 and a real
//! PostgreSQL: a role that is not in `pooling.users` logs in through PgBouncer with its own
//! password (looked up by `auth_user` through the SECURITY DEFINER function `auth-sql` prints),
//! a wrong password and a superuser are refused, extra keys reach PgBouncer as written, and a
//! key PgBouncer does not know stops it instead of being ignored.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, create_app, pool_config, text};

use std::time::Duration;

use pgha_config::{ConfigSource, Secret};
use pgha_pooling_config::{PgBouncerProcess, AUTH_QUERY};
use pgha_test_support::{free_port, TestCluster};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

const T: Duration = Duration::from_secs(30);

async fn login(port: u16, user: &str, password: &str) -> Result<PgConnection, sqlx::Error> {
    let o = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .password(password)
        .database("app")
        .disable_statement_logging();
    tokio::time::timeout(Duration::from_secs(5), o.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_logs_in_roles_outside_users_and_extra_keys_reach_pgbouncer(
) -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let port = free_port("127.0.0.1")?;
    create_app(&c, "node1", "app-Secret-1").await?;

    let pw_file = c.root().join("pgbouncer-auth.pw");
    std::fs::write(&pw_file, "auth-Secret-2\n")?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let section = format!(
        "auth_user = \"pgbouncer_auth\"\nauth_password = {{ file = \"{}\" }}\n\
         auth_query = \"{AUTH_QUERY}\"\n\
         [pooling.extra]\nquery_wait_timeout = 45\ntcp_keepalive = true\n",
        pw_file.display()
    );
    let cfg = pool_config(&c, port.port, &section);

    // The lookup function, installed with the SQL the tool prints, in the database clients use.
    let o = bin(&cfg, &["auth-sql"]);
    assert!(o.status.success(), "{}", text(&o));
    let sql = String::from_utf8(o.stdout)?;
    assert!(sql.contains("SECURITY DEFINER"), "{sql}");
    let mut app_db = c
        .instance("node1")?
        .connect_params()
        .options()
        .database("app")
        .connect()
        .await?;
    sqlx::raw_sql(&sql).execute(&mut app_db).await?;
    for (role, password) in [
        ("pgbouncer_auth", "auth-Secret-2"),
        ("reporter", "rep-Secret-3"),
    ] {
        let v = pgha_postgres::scram::verifier(&Secret::new(password));
        let create = if role == "reporter" {
            format!("CREATE ROLE reporter LOGIN PASSWORD '{v}'")
        } else {
            format!("ALTER ROLE {role} PASSWORD '{v}'")
        };
        sqlx::raw_sql(&create).execute(&mut app_db).await?;
    }
    // auth_user sees secrets only through the function, not pg_authid.
    let mut as_auth = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(c.config().node("node1").unwrap().port)
        .username("pgbouncer_auth")
        .password("auth-Secret-2")
        .database("app")
        .connect()
        .await?;
    let direct = sqlx::raw_sql("SELECT rolpassword FROM pg_authid")
        .execute(&mut as_auth)
        .await;
    assert!(direct.is_err(), "auth_user reads pg_authid directly");
    let super_row =
        sqlx::raw_sql("SELECT count(uname)::text FROM pgbouncer.user_lookup('postgres')")
            .fetch_one(&mut as_auth)
            .await?;
    assert_eq!(super_row.try_get_unchecked::<String, _>(0)?, "0");
    as_auth.close().await?;

    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let pool = pgha_config::load(ConfigSource::Flag(cfg.clone()))?
        .config
        .pooling
        .unwrap();
    let ini = std::fs::read_to_string(&pool.ini_path)?;
    for want in [
        "\nauth_user = pgbouncer_auth\n",
        &format!("\nauth_query = {AUTH_QUERY}\n"),
        "\nquery_wait_timeout = 45\n",
        "\ntcp_keepalive = 1\n",
    ] {
        assert!(ini.contains(want), "no {want:?} in\n{ini}");
    }
    let userlist = std::fs::read_to_string(&pool.userlist_path)?;
    // auth_user's own line holds its password (nothing else would let PgBouncer log in as it).
    assert!(
        userlist.contains("\"pgbouncer_auth\" \"auth-Secret-2\""),
        "{userlist}"
    );
    assert!(userlist.contains("\"app\" \"SCRAM-SHA-256$"), "{userlist}");
    assert!(!userlist.contains("reporter"), "{userlist}");

    let bouncer = PgBouncerProcess::start(&pool, T)?;
    // `reporter` is in no userlist: PgBouncer asked PostgreSQL as auth_user.
    let mut rep = match login(port.port, "reporter", "rep-Secret-3").await {
        Ok(c) => c,
        Err(e) => panic!("reporter through auth_query: {e}\n{}", bouncer.log_tail(30)),
    };
    let who = sqlx::raw_sql("SELECT current_user::text")
        .fetch_one(&mut rep)
        .await?;
    assert_eq!(who.try_get_unchecked::<String, _>(0)?, "reporter");
    rep.close().await?;
    let wrong = login(port.port, "reporter", "not-it").await;
    assert!(
        wrong.is_err(),
        "a wrong password logged in through auth_query"
    );
    let su = login(port.port, "postgres", "anything").await;
    assert!(su.is_err(), "a superuser logged in through auth_query");

    // The extra keys are PgBouncer's settings now, as its console shows them.
    let console = pgha_pooling_config::ConsoleTarget::from_config(
        &pgha_config::load(ConfigSource::Flag(cfg.clone()))?.config,
    )?;
    let mut o = PgConnectOptions::new()
        .host(&console.host)
        .port(console.port)
        .username(&console.user)
        .database("pgbouncer");
    if let Some(p) = &console.password {
        o = o.password(p.expose());
    }
    let mut admin = o.connect().await?;
    let rows = sqlx::raw_sql("SHOW CONFIG").fetch_all(&mut admin).await?;
    let setting = |key: &str| {
        rows.iter().find_map(|r| {
            let k: String = r.try_get_unchecked(0).ok()?;
            (k == key).then(|| r.try_get_unchecked::<String, _>(1).ok())?
        })
    };
    assert_eq!(setting("query_wait_timeout").as_deref(), Some("45"));
    assert_eq!(setting("auth_user").as_deref(), Some("pgbouncer_auth"));
    drop(admin);
    drop(bouncer);

    // A key this PgBouncer does not know: it refuses to start rather than run without it.
    let cfg = pool_config(
        &c,
        port.port,
        &format!("{section}no_such_setting_here = 1\n"),
    );
    let o = bin(&cfg, &["render"]);
    assert!(o.status.success(), "{}", text(&o));
    let started = PgBouncerProcess::start(&pool, Duration::from_secs(10));
    assert!(started.is_err(), "PgBouncer ran with an unknown setting");
    Ok(())
}
