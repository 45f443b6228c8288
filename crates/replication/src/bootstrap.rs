//! Bootstrapping a replica from its upstream with pg_basebackup.

use std::time::Instant;

use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::sql::pgpass_field;
use pgha_postgres::{files, ConnectParams, LocalInstance, OsUser, PgError};

use crate::{create_slot, install_settings, NodeRole, ReplicationError, Result};

/// Writes the passfile the replica's WAL receiver and pg_basebackup use: 0600, owned by the
/// server user. Passwords never go on a command line or into a setting.
pub fn write_passfile(
    config: &PghaConfig,
    node: &NodeConfig,
    owner: Option<&OsUser>,
) -> Result<()> {
    let pw = config
        .replication
        .password
        .as_ref()
        .ok_or(ReplicationError::NoReplicationPassword)?
        .read()?;
    let line = format!(
        "*:*:*:{}:{}\n",
        pgpass_field(&config.replication.user),
        pgpass_field(pw.expose())
    );
    let path = node.passfile();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PgError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    files::write_atomic(&path, line.as_bytes(), 0o600, owner)?;
    Ok(())
}

/// Creates `replica` as a streaming copy of `upstream`: slot on the upstream (when slots are
/// on), pg_basebackup with WAL streamed, then its settings and standby.signal. Does not start it.
pub async fn bootstrap_replica(
    config: &PghaConfig,
    replica: &NodeConfig,
    upstream: &NodeConfig,
    instance: &LocalInstance,
    upstream_conn: &ConnectParams,
) -> Result<()> {
    let data = instance.data_dir();
    if data.exists()
        && std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ReplicationError::TargetNotEmpty(data.to_owned()));
    }
    instance.prepare_dirs()?;
    write_passfile(config, replica, instance.run_as())?;
    if config.replication.slots {
        let mut conn = upstream_conn.connect().await?;
        create_slot(&mut conn, &upstream.name, &replica.name).await?;
    }
    // pg_basebackup verifies the upstream's certificate with the installed CA copy.
    crate::install_tls_files(config, replica, instance.run_as())?;
    let started = Instant::now();
    let mut cmd = instance.command("pg_basebackup");
    cmd.args(["-h", &upstream.host, "-p", &upstream.port.to_string()])
        .args(["-U", &config.replication.user])
        .arg("-D")
        .arg(data)
        .args(["-X", "stream", "-c", "fast", "-w"])
        .env("PGPASSFILE", replica.passfile())
        .env("PGAPPNAME", &replica.name);
    if config.replication.slots {
        cmd.args(["-S", &replica.name]);
    }
    let out = cmd.output().await.map_err(|source| PgError::Spawn {
        program: "pg_basebackup".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(PgError::CommandFailed {
            program: "pg_basebackup".into(),
            action: format!("from {} into {}", upstream.address(), data.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    tracing::info!(
        replica = %replica.name,
        upstream = %upstream.name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "base backup copied"
    );
    install_settings(config, replica, NodeRole::Replica { upstream }, instance)
}
