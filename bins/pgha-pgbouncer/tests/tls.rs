//! PgBouncer rendered for a `[tls]` cluster (real PgBouncer, real PostgreSQL): clients must
//! use TLS and verify PgBouncer's certificate, and PgBouncer reaches PostgreSQL over TLS with
//! verify-full.
#![allow(clippy::unwrap_used)]

mod common;

use common::{create_app, pool_config};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgha_config::ConfigSource;
use pgha_pooling_config::PgBouncerProcess;
use pgha_test_support::{free_port, TestCluster};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Row};

const PASSWORD: &str = "app-Tls-Secret-7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_requires_tls_from_clients_and_verifies_postgres() -> anyhow::Result<()> {
    let c = TestCluster::builder().replicas(1).tls().start().await?;
    let port = free_port("127.0.0.1")?;
    let dir = c.root().join("pgbouncer");
    let cfg = pool_config(&c, port.port, "");
    let config = pgha_config::load(ConfigSource::Flag(cfg.clone()))?.config;
    // PgBouncer's own certificate, beside the cluster's (kept).
    pgha_tls::init(&config, &pgha_tls::InitOptions::default())?;

    create_app(&c, "node1", PASSWORD).await?;

    let out = Command::new(env!("CARGO_BIN_EXE_pgha-pgbouncer"))
        .arg("render")
        .env("PGHA_CONFIG", &cfg)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = config.pooling.clone().unwrap();
    let ini = std::fs::read_to_string(&pool.ini_path)?;
    for want in [
        "client_tls_sslmode = require",
        "server_tls_sslmode = verify-full",
    ] {
        assert!(ini.contains(want), "{want} missing:\n{ini}");
    }
    let _bouncer = PgBouncerProcess::start(&pool, Duration::from_secs(30))?;

    let base = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port.port)
        .username("app")
        .password(PASSWORD)
        .database("app");
    let ca = config.tls.as_ref().unwrap().ca_file();
    let mut tls_client = base
        .clone()
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(&ca)
        .connect()
        .await?;
    // The server connection PgBouncer made for us is TLS too.
    let row = sqlx::raw_sql("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut tls_client)
        .await?;
    assert_eq!(row.try_get_unchecked::<String, _>(0)?, "true");

    let plain = base.clone().ssl_mode(PgSslMode::Disable).connect().await;
    let e = plain
        .expect_err("PgBouncer accepted a client without TLS")
        .to_string();
    assert!(
        e.contains("SSL required"),
        "refused for another reason: {e}"
    );
    assert_no_secret_in(&dir, PASSWORD);
    Ok(())
}

/// Nothing PgBouncer-side holds the clear-text password (the userlist has SCRAM verifiers).
fn assert_no_secret_in(dir: &Path, secret: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            let t = std::fs::read(e.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&t).contains(secret),
                "{} holds the password",
                e.path().display()
            );
        }
    }
}
