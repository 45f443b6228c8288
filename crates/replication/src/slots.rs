//! Physical replication slots.

use serde::Serialize;
use sqlx::PgConnection;

use pgha_postgres::Lsn;

use crate::{ReplicationError, Result};

/// One slot as pg_replication_slots shows it, with the WAL it holds back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SlotStatus {
    pub slot_name: String,
    pub slot_type: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    /// Bytes of WAL kept for this slot: current (or received) LSN minus restart_lsn.
    pub wal_retained_bytes: Option<i64>,
    /// reserved / extended / unreserved / lost.
    pub wal_status: Option<String>,
}

/// Creates physical slot `name` reserving WAL from now; no-op when it exists.
pub async fn create_slot(conn: &mut PgConnection, node: &str, name: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_create_physical_replication_slot($1, true) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(name)
    .execute(conn)
    .await
    .map_err(ReplicationError::query(node, "create replication slot"))?;
    Ok(())
}

/// Drops slot `name`; no-op when it does not exist. Fails if a replica is using it.
pub async fn drop_slot(conn: &mut PgConnection, node: &str, name: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(name)
    .execute(conn)
    .await
    .map_err(ReplicationError::query(node, "drop replication slot"))?;
    Ok(())
}

/// Every slot on the node.
pub async fn list_slots(conn: &mut PgConnection, node: &str) -> Result<Vec<SlotStatus>> {
    sqlx::query_as::<_, SlotStatus>(
        "SELECT slot_name::text AS slot_name, slot_type, active, restart_lsn, \
           (CASE WHEN pg_is_in_recovery() \
                 THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                 ELSE pg_current_wal_lsn() END - restart_lsn)::bigint AS wal_retained_bytes, \
           wal_status \
         FROM pg_replication_slots ORDER BY slot_name",
    )
    .fetch_all(conn)
    .await
    .map_err(ReplicationError::query(node, "list replication slots"))
}
