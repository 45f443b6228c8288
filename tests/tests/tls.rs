//! TLS on real PostgreSQL: `[tls]` turns on ssl with hostssl-only pg_hba, replication streams
//! over TLS (pg_stat_ssl on the primary), a plain TCP connection is refused, a client trusting
//! another CA fails verify-full, and `pgha tls init` keys are 0600.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use pgha_test_support::TestCluster;
use sqlx::postgres::PgSslMode;
use sqlx::ConnectOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_replicates_over_tls_and_refuses_plain_or_untrusted_clients(
) -> anyhow::Result<()> {
    let c = TestCluster::builder().replicas(1).tls().start().await?;
    let tls = c.config().tls.clone().unwrap();
    for f in ["ca.key", "node1.key", "node2.key"] {
        let mode = std::fs::metadata(tls.dir.join(f))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // Our own client: verify-full against the cluster CA, and the session is encrypted.
    let mut p = c.conn("node1").await?;
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut p)
            .await?;
    assert!(ssl, "client session is not TLS");
    assert!(version.starts_with("TLSv1."), "{version}");

    // The replica's WAL receiver connects over TLS.
    let (streams, over_tls): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
    )
    .fetch_one(&mut p)
    .await?;
    assert_eq!((streams, over_tls), (1, 1), "replication not over TLS");

    // And data still flows.
    sqlx::query("CREATE TABLE t AS SELECT 42 AS v")
        .execute(&mut p)
        .await?;
    let v: i32 = TestCluster::eventually(
        std::time::Duration::from_secs(20),
        "row on node2",
        || async {
            let mut r = c.conn("node2").await?;
            Ok(sqlx::query_scalar("SELECT v FROM t")
                .fetch_optional(&mut r)
                .await
                .ok()
                .flatten())
        },
    )
    .await?;
    assert_eq!(v, 42);

    // Plain TCP is refused by pg_hba (hostnossl ... reject), with the password right.
    let base = c.instance("node1")?.connect_params().options();
    let plain = base.clone().ssl_mode(PgSslMode::Disable).connect().await;
    let e = plain
        .expect_err("plain TCP connection accepted")
        .to_string();
    assert!(
        e.contains("no encryption") || e.contains("rejects connection"),
        "{e}"
    );

    // A client that trusts another CA fails verify-full.
    let other = tempfile::tempdir()?;
    let other_cfg = pgha_config::load_from_str(
        &format!(
            "[cluster]\nname = \"other\"\n[tls]\ndir = \"{}\"\n[[nodes]]\nname = \"x\"\n\
             host = \"127.0.0.1\"\ndata_dir = \"/nonexistent\"\n",
            other.path().display()
        ),
        "test",
    )?;
    pgha_tls::init(&other_cfg, &pgha_tls::InitOptions::default())?;
    let untrusted = base
        .clone()
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(other.path().join("ca.crt"))
        .connect()
        .await;
    assert!(
        untrusted.is_err(),
        "a server signed by another CA was trusted"
    );

    // verify-full also checks the name: the right CA but a host the certificate does not name.
    // `localhost` reaches the same listener; the certificate names 127.0.0.1 alone.
    let wrong_name = base
        .clone()
        .host("localhost")
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(tls.ca_file())
        .connect()
        .await;
    assert!(
        wrong_name.is_err(),
        "certificate accepted for a name it does not carry"
    );
    Ok(())
}

#[test]
fn a_secret_file_readable_by_others_is_refused_with_its_name() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("superuser.password");
    std::fs::write(&secret, "s3cret-Value-1").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = pgha_config::load_from_str(
        &format!(
            "[cluster]\nname = \"t\"\n[postgres]\nsuperuser_password = {{ file = \"{}\" }}\n\
             [[nodes]]\nname = \"n1\"\nhost = \"127.0.0.1\"\ndata_dir = \"/nonexistent\"\n",
            secret.display()
        ),
        "test",
    )
    .unwrap();
    let e = pgha_postgres::connect_params(&config, &config.nodes[0])
        .unwrap_err()
        .to_string();
    assert!(e.contains(&secret.display().to_string()), "{e}");
    assert!(e.contains("readable by group or others"), "{e}");
    assert!(!e.contains("s3cret-Value-1"), "{e}");
}
