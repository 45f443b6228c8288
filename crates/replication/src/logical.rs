//! Permanent logical slots (`replication.logical_slots`): created on the primary; copied to
//! replicas as the primary's slot state file (PostgreSQL 15 cannot create a logical slot on a
//! standby), then moved forward there with `pg_replication_slot_advance`, so a promoted
//! replica has each slot at a position no later than what its consumers confirmed.

use std::path::Path;

use sqlx::PgConnection;

use pgha_postgres::{Lsn, OsUser, PgError};

use crate::{ReplicationError, Result};

/// Creates logical slot `name` with `plugin` in the database `conn` is connected to; no-op
/// when a slot of that name exists.
pub async fn create_logical_slot(
    conn: &mut PgConnection,
    node: &str,
    name: &str,
    plugin: &str,
) -> Result<()> {
    sqlx::query(
        "SELECT pg_create_logical_replication_slot($1, $2) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(name)
    .bind(plugin)
    .execute(conn)
    .await
    .map_err(ReplicationError::query(
        node,
        "create logical replication slot",
    ))?;
    Ok(())
}

/// Moves slot `name` forward to `to` (in the slot's database; on a standby too): returns
/// where it ends (PostgreSQL stops at what it replayed).
pub async fn advance_slot(conn: &mut PgConnection, node: &str, name: &str, to: Lsn) -> Result<Lsn> {
    let (end,): (String,) = sqlx::query_as(
        "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
    )
    .bind(name)
    .bind(to.to_string())
    .fetch_one(conn)
    .await
    .map_err(ReplicationError::query(node, "advance replication slot"))?;
    end.parse().map_err(|_| ReplicationError::Query {
        node: node.into(),
        what: "advance replication slot",
        source: sqlx::Error::Protocol(format!("end_lsn `{end}` is not an LSN")),
    })
}

/// A logical slot as the primary keeps it on disk.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotState {
    pub name: String,
    pub database: String,
    pub plugin: String,
    pub confirmed_flush: Option<Lsn>,
    /// `pg_replslot/<name>/state`, byte for byte (checksummed by PostgreSQL).
    pub state: Vec<u8>,
}

impl std::fmt::Debug for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotState")
            .field("name", &self.name)
            .field("database", &self.database)
            .field("plugin", &self.plugin)
            .field("confirmed_flush", &self.confirmed_flush)
            .field("state_bytes", &self.state.len())
            .finish()
    }
}

/// Reads the state files of the logical slots `names` from a primary (`conn`: a superuser's,
/// or a role granted `pg_read_server_files`). Slots it does not have are left out; a server
/// in recovery gives none (it is not the primary any more).
pub async fn read_slot_states(
    conn: &mut PgConnection,
    node: &str,
    names: &[String],
) -> Result<Vec<SlotState>> {
    type Row = (String, String, String, Option<String>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.slot_name::text, d.datname::text, s.plugin::text, s.confirmed_flush_lsn::text, \
                pg_read_binary_file('pg_replslot/' || s.slot_name || '/state') \
         FROM pg_replication_slots s JOIN pg_database d ON d.oid = s.datoid \
         WHERE s.slot_type = 'logical' AND NOT pg_is_in_recovery() AND s.slot_name = ANY($1)",
    )
    .bind(names)
    .fetch_all(conn)
    .await
    .map_err(ReplicationError::query(
        node,
        "read logical slot state files",
    ))?;
    Ok(rows
        .into_iter()
        .map(|(name, database, plugin, confirmed, state)| SlotState {
            name,
            database,
            plugin,
            confirmed_flush: confirmed.and_then(|c| c.parse().ok()),
            state,
        })
        .collect())
}

/// Puts `slot`'s state file into `data_dir/pg_replslot/<name>` of a stopped server, replacing
/// what is there: written into `<name>.tmp` (which PostgreSQL removes at start should we
/// die half-way), fsynced, renamed into place, owned by `owner`.
pub fn install_slot_state(data_dir: &Path, slot: &SlotState, owner: Option<&OsUser>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let base = data_dir.join("pg_replslot");
    let dir = base.join(&slot.name);
    let tmp = base.join(format!("{}.tmp", slot.name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(PgError::io("remove", tmp.clone()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(PgError::io("create", tmp.clone()))?;
    if let Some(u) = owner {
        u.chown(&tmp)?;
    }
    pgha_postgres::files::write_atomic(&tmp.join("state"), &slot.state, 0o600, owner)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(PgError::io("remove", dir.clone()))?;
    }
    std::fs::rename(&tmp, &dir).map_err(PgError::io("rename into place", dir.clone()))?;
    for d in [&dir, &base] {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(PgError::io("fsync", d.to_path_buf()))?;
    }
    Ok(())
}

/// `ReplicationSlotOnDisk`'s magic number (PostgreSQL's slot.c).
const SLOT_MAGIC: u32 = 0x1051CA1;
/// Where `slotdata.database` starts: magic, checksum, version, length (4 bytes each), then
/// the slot's name (NameData: NAMEDATALEN, 64 unless PostgreSQL was built otherwise).
const DATABASE_AT: usize = 16 + 64;

/// The logical slots in a data dir, from their state files (a server need not run): those
/// bound to a database. A file that is not a slot's state is skipped.
pub fn logical_slots_on_disk(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join("pg_replslot");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), "cannot read the slots on disk ({e}): wal_level follows replication.logical_slots alone");
            }
            return Vec::new();
        }
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                return None; // PostgreSQL removes these at start
            }
            let state = std::fs::read(e.path().join("state")).ok()?;
            let word = |at: usize| -> Option<u32> {
                // Written by this host's PostgreSQL: its own byte order.
                Some(u32::from_ne_bytes(state.get(at..at + 4)?.try_into().ok()?))
            };
            (word(0)? == SLOT_MAGIC && word(DATABASE_AT)? != 0).then_some(name)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_file(database: u32) -> Vec<u8> {
        let mut b = vec![0u8; 200];
        b[..4].copy_from_slice(&SLOT_MAGIC.to_ne_bytes());
        b[DATABASE_AT..DATABASE_AT + 4].copy_from_slice(&database.to_ne_bytes());
        b
    }

    #[test]
    fn only_slots_bound_to_a_database_are_logical() {
        let d = tempfile::tempdir().unwrap();
        assert!(logical_slots_on_disk(d.path()).is_empty());
        let slots = d.path().join("pg_replslot");
        for (name, bytes) in [
            ("cdc", state_file(16384)),
            ("node2", state_file(0)),
            ("old.tmp", state_file(16384)),
            ("junk", b"short".to_vec()),
        ] {
            std::fs::create_dir_all(slots.join(name)).unwrap();
            std::fs::write(slots.join(name).join("state"), bytes).unwrap();
        }
        let mut bad_magic = state_file(16384);
        bad_magic[0] ^= 1;
        std::fs::create_dir_all(slots.join("other")).unwrap();
        std::fs::write(slots.join("other/state"), bad_magic).unwrap();
        assert_eq!(logical_slots_on_disk(d.path()), vec!["cdc".to_string()]);
    }

    #[test]
    fn install_replaces_an_old_copy_and_leaves_no_temp_dir() {
        let d = tempfile::tempdir().unwrap();
        let slots = d.path().join("pg_replslot");
        std::fs::create_dir_all(slots.join("cdc")).unwrap();
        std::fs::write(slots.join("cdc/state"), b"old").unwrap();
        std::fs::write(slots.join("cdc/xid-1.snap"), b"old").unwrap();
        std::fs::create_dir_all(slots.join("cdc.tmp")).unwrap();
        let s = SlotState {
            name: "cdc".into(),
            database: "app".into(),
            plugin: "pgoutput".into(),
            confirmed_flush: None,
            state: b"new".to_vec(),
        };
        install_slot_state(d.path(), &s, None).unwrap();
        assert_eq!(std::fs::read(slots.join("cdc/state")).unwrap(), b"new");
        let names: Vec<String> = std::fs::read_dir(&slots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["cdc".to_string()]);
        assert_eq!(std::fs::read_dir(slots.join("cdc")).unwrap().count(), 1);
        assert!(format!("{s:?}").contains("state_bytes: 3"));
    }
}
