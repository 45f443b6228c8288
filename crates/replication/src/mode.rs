//! Switching a running cluster between asynchronous and synchronous replication.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use pgha_config::{PghaConfig, ReplicationMode};
use pgha_postgres::sql::{quote_ident, quote_literal};

use crate::{ReplicationError, Result};

/// `ANY n ("a", "b", ...)` over every node: the primary never streams from itself, so listing
/// it too keeps the value identical on every node and valid after a failover.
pub fn synchronous_standby_names(config: &PghaConfig) -> String {
    let names: Vec<String> = config.nodes.iter().map(|n| quote_ident(&n.name)).collect();
    format!(
        "ANY {} ({})",
        config.replication.sync_standbys.max(1),
        names.join(", ")
    )
}

/// Switches the primary behind `conn` to `mode` with ALTER SYSTEM (kept in
/// postgresql.auto.conf, so it survives restarts and travels with pg_rewind) and a reload, then
/// waits until the new value is in effect. Switching to sync with no standby connected is
/// refused unless `force`: every commit would hang. Refused when `[dcs]` is set: the agents
/// manage the mode then.
pub async fn set_mode(
    conn: &mut PgConnection,
    node: &str,
    config: &PghaConfig,
    mode: ReplicationMode,
    force: bool,
) -> Result<()> {
    if config.dcs.is_some() {
        return Err(ReplicationError::AgentsManageMode);
    }
    let value = match mode {
        ReplicationMode::Sync | ReplicationMode::Quorum => synchronous_standby_names(config),
        ReplicationMode::Async => String::new(),
    };
    if mode.waits() && !force {
        let standbys: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(ReplicationError::query(node, "count standbys"))?;
        if standbys == 0 {
            return Err(ReplicationError::NoStandbyForSync {
                primary: node.into(),
            });
        }
    }
    sqlx::query("ALTER SYSTEM SET synchronous_commit = 'on'")
        .execute(&mut *conn)
        .await
        .map_err(ReplicationError::query(node, "set synchronous_commit"))?;
    apply_sync_names(conn, node, &value, Duration::from_secs(10)).await?;
    tracing::info!(node, %mode, synchronous_standby_names = %value, "replication mode set");
    Ok(())
}

/// Sets synchronous_standby_names on the primary behind `conn` (ALTER SYSTEM and a reload)
/// and returns once this backend sees the new value, at most `wait` later: a WAL position
/// read after it is one from which commits wait for the new standbys.
pub async fn apply_sync_names(
    conn: &mut PgConnection,
    node: &str,
    value: &str,
    wait: Duration,
) -> Result<()> {
    let stmt = format!(
        "ALTER SYSTEM SET synchronous_standby_names = {}",
        quote_literal(value)
    );
    sqlx::query(&stmt)
        .execute(&mut *conn)
        .await
        .map_err(ReplicationError::query(
            node,
            "set synchronous_standby_names",
        ))?;
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut *conn)
        .await
        .map_err(ReplicationError::query(node, "reload configuration"))?;
    // pg_reload_conf only signals; the postmaster and this backend re-read the file shortly after.
    let deadline = Instant::now() + wait;
    loop {
        let current: String =
            sqlx::query_scalar("SELECT current_setting('synchronous_standby_names')")
                .fetch_one(&mut *conn)
                .await
                .map_err(ReplicationError::query(
                    node,
                    "read synchronous_standby_names",
                ))?;
        if current == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ReplicationError::ReloadNotApplied {
                node: node.into(),
                setting: "synchronous_standby_names",
                seconds: wait.as_secs().max(1),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
