//! `[dcs]` against a real etcd: TLS with client certificates (`--client-cert-auth`, the
//! certificates from `pgha tls init`) and etcd's user/password auth.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use pgha_failover::dcs::{Dcs, EtcdDcs};
use pgha_local_cluster::{EtcdServer, EtcdTls};

fn config(tls_dir: &Path, dcs: &str) -> pgha_config::PghaConfig {
    let mut t = format!(
        "[cluster]\nname = \"acc\"\n[replication]\npassword = {{ env = \"PGHA_ACC_UNUSED\" }}\n\
         [tls]\ndir = \"{}\"\n[dcs]\n{dcs}\n",
        tls_dir.display()
    );
    for i in 1..=2 {
        t.push_str(&format!(
            "[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.1\"\nport = {}\ndata_dir = \"/nonexistent/{i}\"\n",
            6400 + i
        ));
    }
    pgha_config::load_from_str(&t, "acc.toml").unwrap()
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    // Certificates from our own CA: `pgha tls init` issues etcd.crt for the hosts of the
    // https:// endpoints (the port is not in a certificate); node2's is the client's.
    let planned = format!(
        "etcd = [\"https://127.0.0.1:2379\"]\nca_file = \"{}\"\n",
        tls.join("ca.crt").display()
    );
    let report = pgha_tls::init(&config(&tls, &planned), &Default::default())?;
    assert!(
        report
            .files
            .iter()
            .any(|f| f.what == "etcd certificate for 127.0.0.1"),
        "{report:?}"
    );
    let etcd = EtcdServer::start_tls(
        &dir.path().join("etcd"),
        &EtcdTls {
            ca: tls.join("ca.crt"),
            cert: tls.join("etcd.crt"),
            key: tls.join("etcd.key"),
        },
    )?;
    assert!(
        etcd.client_url.starts_with("https://"),
        "{}",
        etcd.client_url
    );
    let base = format!(
        "etcd = [\"{}\"]\nca_file = \"{}\"\n",
        etcd.client_url,
        tls.join("ca.crt").display()
    );
    let with_cert = format!(
        "{base}cert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls.join("node2.crt").display(),
        tls.join("node2.key").display()
    );
    let d = EtcdDcs::from_config(&config(&tls, &with_cert), "acc").await?;
    assert_eq!(d.allocate_timeline(2).await?, 2, "a write over TLS");
    assert!(d.view().await?.leader.is_none());

    // Without a client certificate etcd refuses the connection.
    let no_cert = EtcdDcs::from_config(&config(&tls, &base), "acc").await;
    let refused = match no_cert {
        Err(_) => true,
        Ok(d) => d.view().await.is_err(),
    };
    assert!(
        refused,
        "etcd with --client-cert-auth served a client without a certificate"
    );

    // A missing file is named by its field.
    let missing = with_cert.replace("node2.key", "nope.key");
    let err = EtcdDcs::from_config(&config(&tls, &missing), "acc")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("dcs.key_file: ") && err.contains("nope.key"),
        "{err}"
    );
    Ok(())
}

fn write_secret(p: &Path, v: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, v)?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
}

#[tokio::test]
async fn etcd_user_and_password() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = EtcdServer::start(&dir.path().join("etcd"))?;
    let pw = "pw-0f3b7c1e";
    let mut c = etcd_client::Client::connect([etcd.client_url.as_str()], None).await?;
    c.user_add("root", pw, None).await?;
    c.user_grant_role("root", "root").await?;
    c.auth_enable().await?;
    let pw_file = dir.path().join("etcd.password");
    write_secret(&pw_file, pw)?;
    let dcs = |user: &str, file: &Path| {
        format!(
            "etcd = [\"{}\"]\nusername = \"{user}\"\npassword = {{ file = \"{}\" }}\n",
            etcd.client_url,
            file.display()
        )
    };
    let tls = dir.path().join("tls");
    let d = EtcdDcs::from_config(&config(&tls, &dcs("root", &pw_file)), "acc").await?;
    assert_eq!(d.allocate_timeline(1).await?, 1, "a write as the etcd user");

    let wrong = dir.path().join("wrong.password");
    write_secret(&wrong, "nope")?;
    let r = EtcdDcs::from_config(&config(&tls, &dcs("root", &wrong)), "acc").await;
    let refused = match r {
        Err(_) => true,
        Ok(d) => d.view().await.is_err(),
    };
    assert!(refused, "etcd accepted a wrong password");
    // Nor does it serve a client without a user once auth is on.
    let anon = format!("etcd = [\"{}\"]\n", etcd.client_url);
    let d = EtcdDcs::from_config(&config(&tls, &anon), "acc").await?;
    assert!(
        d.view().await.is_err(),
        "etcd served an anonymous client with auth on"
    );
    Ok(())
}
