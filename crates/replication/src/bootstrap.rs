//! Bootstrapping a replica from its upstream with pg_basebackup.

use std::time::Instant;

use pgha_config::{NodeConfig, PghaConfig, StandbyClusterSection};
use pgha_postgres::sql::{conninfo_value, pgpass_field};
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
    ensure_empty(instance)?;
    instance.prepare_dirs()?;
    write_passfile(config, replica, instance.run_as())?;
    // A `nostream` replica reads the archive afterwards: no slot of its own on the upstream
    // (pg_basebackup streams the copy's WAL through a temporary one).
    let own_slot = config.replication.slots && !replica.nostream;
    if own_slot {
        let mut conn = upstream_conn.connect().await?;
        create_slot(&mut conn, &upstream.name, &replica.name).await?;
    }
    let conninfo = format!(
        "host={} port={}",
        conninfo_value(&upstream.host),
        upstream.port
    );
    let slot = own_slot.then_some(replica.name.as_str());
    base_backup(
        config,
        replica,
        instance,
        &conninfo,
        slot,
        &upstream.address(),
    )
    .await?;
    install_settings(config, replica, NodeRole::Replica { upstream }, instance)
}

/// Creates the leader of a standby cluster as a copy of the primary site's writable node
/// (`standby_cluster.primary_hosts`), with its standby-leader settings. Does not start it.
/// The slot it will stream through (`primary_slot_name`) is the primary site's to keep
/// (`replication.permanent_slots` there); the copy itself streams WAL through a temporary one.
pub async fn bootstrap_standby_leader(
    config: &PghaConfig,
    node: &NodeConfig,
    source: &StandbyClusterSection,
    instance: &LocalInstance,
) -> Result<()> {
    ensure_empty(instance)?;
    instance.prepare_dirs()?;
    write_passfile(config, node, instance.run_as())?;
    let conninfo = crate::settings::primary_site_endpoint(source);
    base_backup(
        config,
        node,
        instance,
        &conninfo,
        None,
        &source.primary_hosts.join(","),
    )
    .await?;
    install_settings(config, node, NodeRole::StandbyLeader { source }, instance)
}

fn ensure_empty(instance: &LocalInstance) -> Result<()> {
    let data = instance.data_dir();
    if data.exists()
        && std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ReplicationError::TargetNotEmpty(data.to_owned()));
    }
    Ok(())
}

/// pg_basebackup from `conninfo` (host/port only: the user and passfile come from the config)
/// into the node's data dir, WAL streamed, through `slot` when given.
async fn base_backup(
    config: &PghaConfig,
    node: &NodeConfig,
    instance: &LocalInstance,
    conninfo: &str,
    slot: Option<&str>,
    from: &str,
) -> Result<()> {
    let data = instance.data_dir();
    // pg_basebackup verifies the upstream's certificate with the installed CA copy.
    crate::install_tls_files(config, node, instance.run_as())?;
    let started = Instant::now();
    let mut cmd = instance.command("pg_basebackup");
    cmd.args(["-d", conninfo])
        .args(["-U", &config.replication.user])
        .arg("-D")
        .arg(data)
        .args(["-X", "stream", "-c", "fast", "-w"])
        .env("PGPASSFILE", node.passfile())
        .env("PGAPPNAME", &node.name);
    if let Some(slot) = slot {
        cmd.args(["-S", slot]);
    }
    let out = cmd.output().await.map_err(|source| PgError::Spawn {
        program: "pg_basebackup".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(PgError::CommandFailed {
            program: "pg_basebackup".into(),
            action: format!("from {from} into {}", data.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    tracing::info!(
        node = %node.name,
        source = %from,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "base backup copied"
    );
    Ok(())
}
