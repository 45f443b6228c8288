//! The first primary of a new cluster: initdb with data checksums and the superuser's
//! password, pgha's settings, and the replication role (its password sent as a SCRAM
//! verifier), so the agent can log in to it and the replicas can clone from it.

use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::{InitDbOptions, LocalInstance, PgControl, PgError, StopMode};

use crate::{ensure_replication_role, install_settings, NodeRole, ReplicationError, Result};

/// initdb into the (empty) data dir of `node`, settings, start, replication role; the server
/// is left running when `leave_running`, else stopped (fast).
pub async fn bootstrap_primary(
    config: &PghaConfig,
    node: &NodeConfig,
    instance: &LocalInstance,
    leave_running: bool,
) -> Result<()> {
    let superuser_password = config
        .postgres
        .superuser_password
        .as_ref()
        .map(|s| s.read())
        .transpose()?;
    instance
        .initdb(&InitDbOptions {
            superuser: config.postgres.superuser.clone(),
            superuser_password,
            data_checksums: true,
        })
        .await?;
    install_settings(config, node, NodeRole::Primary, instance)?;
    instance.start().await?;
    let made = prepare_first_primary(config, node, instance).await;
    if !leave_running || made.is_err() {
        instance.stop(StopMode::Fast).await?;
    }
    made
}

/// On the running first primary (made by initdb, or restored from a backup): the replication
/// role with pgha.toml's password (its password sent as a SCRAM verifier).
pub async fn prepare_first_primary(
    config: &PghaConfig,
    node: &NodeConfig,
    instance: &LocalInstance,
) -> Result<()> {
    let replication_password = config
        .replication
        .password
        .as_ref()
        .ok_or(ReplicationError::NoReplicationPassword)?
        .read()?;
    let mut conn = instance.connect_params().connect().await?;
    // In sync mode no standby exists yet: these commits must not wait for one.
    sqlx::query("SET synchronous_commit = local")
        .execute(&mut conn)
        .await
        .map_err(|source| PgError::Query {
            target: node.name.clone(),
            source,
        })?;
    ensure_replication_role(
        &mut conn,
        &node.name,
        &config.replication.user,
        &replication_password,
    )
    .await
}
