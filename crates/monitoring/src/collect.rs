//! The built-in collectors of one target: the postgres_exporter metric families (same names,
//! labels and queries as its defaults), each labelled with `server="host:port"` like 0.11.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::metrics::{Kind, MetricSet};
use crate::{settings, MonitoringError, Result};

/// Reads a numeric column whatever its integer/float/bool type; None for NULL or others.
pub(crate) fn num(row: &PgRow, i: usize) -> Option<f64> {
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v as f64);
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return v.map(f64::from);
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
        return v.map(f64::from);
    }
    if let Ok(v) = row.try_get::<Option<f32>, _>(i) {
        return v.map(f64::from);
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return v.map(|b| if b { 1.0 } else { 0.0 });
    }
    None
}

/// Reads a column as label text; NULL is the empty string, numbers are formatted.
pub(crate) fn text(row: &PgRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_default();
    }
    match num(row, i) {
        Some(v) if v == v.trunc() => format!("{}", v as i64),
        Some(v) => format!("{v}"),
        None => String::new(),
    }
}

pub(crate) async fn rows(
    conn: &mut PgConnection,
    target: &str,
    what: &str,
    sql: &str,
) -> Result<Vec<PgRow>> {
    sqlx::query(sql)
        .fetch_all(conn)
        .await
        .map_err(MonitoringError::query(target, what))
}

/// What the static query returns; also used for pg_replication_is_replica.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Basics {
    pub version: String,
    pub version_num: i32,
    pub start_time: f64,
    pub in_recovery: bool,
}

/// `pg_static`, `pg_postmaster_start_time_seconds`.
pub async fn basics(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<Basics> {
    let b = sqlx::query_as::<_, Basics>(
        "SELECT version() AS version, current_setting('server_version_num')::int AS version_num, \
         extract(epoch FROM pg_postmaster_start_time())::float8 AS start_time, \
         pg_is_in_recovery() AS in_recovery",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(MonitoringError::query(server, "version"))?;
    let short = short_version(b.version_num);
    m.gauge(
        "pg_static",
        "Version string as reported by postgres",
        &[
            ("server", server),
            ("short_version", &short),
            ("version", &b.version),
        ],
        1.0,
    );
    m.gauge(
        "pg_postmaster_start_time_seconds",
        "Time at which postmaster started",
        &[("server", server)],
        b.start_time,
    );
    Ok(b)
}

/// `150018` -> `15.18.0`, `90624` -> `9.6.24` (postgres_exporter's semver form).
pub fn short_version(num: i32) -> String {
    if num >= 100_000 {
        format!("{}.{}.0", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, (num / 100) % 100, num % 100)
    }
}

/// `pg_settings_*`.
pub async fn settings(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    let rs = sqlx::query_as::<_, (String, String, String, String)>(
        "SELECT name, setting, COALESCE(unit, ''), vartype FROM pg_settings \
         WHERE vartype IN ('bool', 'integer', 'real')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(MonitoringError::query(server, "pg_settings"))?;
    for (name, setting, unit, vartype) in rs {
        if let Some((metric, v)) = settings::normalise(&name, &setting, &unit, &vartype) {
            let help = if metric.len() > name.len() {
                format!(
                    "Server Parameter: {name} [Units converted to {}.]",
                    &metric[name.len() + 1..]
                )
            } else {
                format!("Server Parameter: {name}")
            };
            m.gauge(
                &format!("pg_settings_{metric}"),
                &help,
                &[("server", server)],
                v,
            );
        }
    }
    Ok(())
}

/// `pg_database_size_bytes`, `pg_database_connection_limit`.
pub async fn database(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    for r in rows(
        conn,
        server,
        "pg_database",
        "SELECT datname::text, datconnlimit::float8, pg_database_size(oid)::float8 FROM pg_database",
    )
    .await?
    {
        let d = text(&r, 0);
        let l = [("datname", d.as_str()), ("server", server)];
        m.gauge(
            "pg_database_connection_limit",
            "Connection limit set for the database",
            &l,
            num(&r, 1).unwrap_or(0.0),
        );
        m.gauge(
            "pg_database_size_bytes",
            "Disk space used by the database",
            &l,
            num(&r, 2).unwrap_or(0.0),
        );
    }
    Ok(())
}

/// `pg_locks_count{datname,mode}` for every database and lock mode.
pub async fn locks(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    for r in rows(
        conn,
        server,
        "pg_locks",
        "SELECT pg_database.datname::text, tmp.mode, COALESCE(count, 0)::float8 \
         FROM (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), \
           ('shareupdateexclusivelock'), ('sharelock'), ('sharerowexclusivelock'), \
           ('exclusivelock'), ('accessexclusivelock'), ('sireadlock')) AS tmp(mode) \
         CROSS JOIN pg_database \
         LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count FROM pg_locks \
           WHERE database IS NOT NULL GROUP BY database, lower(mode)) AS tmp2 \
         ON tmp.mode = tmp2.mode AND pg_database.oid = tmp2.database ORDER BY 1",
    )
    .await?
    {
        let (d, mode) = (text(&r, 0), text(&r, 1));
        m.gauge(
            "pg_locks_count",
            "Number of locks",
            &[("datname", &d), ("mode", &mode), ("server", server)],
            num(&r, 2).unwrap_or(0.0),
        );
    }
    Ok(())
}

/// `pg_stat_activity_count` and `pg_stat_activity_max_tx_duration` by datname and state.
pub async fn activity(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    for r in rows(
        conn,
        server,
        "pg_stat_activity",
        "SELECT pg_database.datname::text, tmp.state, COALESCE(count, 0)::float8, \
           COALESCE(max_tx_duration, 0)::float8 \
         FROM (VALUES ('active'), ('idle'), ('idle in transaction'), \
           ('idle in transaction (aborted)'), ('fastpath function call'), ('disabled')) AS tmp(state) \
         CROSS JOIN pg_database \
         LEFT JOIN (SELECT datname, state, count(*) AS count, \
           MAX(EXTRACT(EPOCH FROM now() - xact_start))::float8 AS max_tx_duration \
           FROM pg_stat_activity GROUP BY datname, state) AS tmp2 \
         ON tmp.state = tmp2.state AND pg_database.datname = tmp2.datname",
    )
    .await?
    {
        let (d, st) = (text(&r, 0), text(&r, 1));
        let l = [("datname", d.as_str()), ("server", server), ("state", st.as_str())];
        m.gauge(
            "pg_stat_activity_count",
            "number of connections in this state",
            &l,
            num(&r, 2).unwrap_or(0.0),
        );
        m.gauge(
            "pg_stat_activity_max_tx_duration",
            "max duration in seconds any active transaction has been running",
            &l,
            num(&r, 3).unwrap_or(0.0),
        );
    }
    Ok(())
}

/// pg_stat_database columns (PostgreSQL 14+ names; older servers lack the session ones).
const STAT_DATABASE: &[(&str, Kind, &str)] = &[
    (
        "numbackends",
        Kind::Gauge,
        "Number of backends currently connected to this database.",
    ),
    (
        "xact_commit",
        Kind::Counter,
        "Number of transactions in this database that have been committed",
    ),
    (
        "xact_rollback",
        Kind::Counter,
        "Number of transactions in this database that have been rolled back",
    ),
    (
        "blks_read",
        Kind::Counter,
        "Number of disk blocks read in this database",
    ),
    (
        "blks_hit",
        Kind::Counter,
        "Number of times disk blocks were found already in the buffer cache",
    ),
    (
        "tup_returned",
        Kind::Counter,
        "Number of rows returned by queries in this database",
    ),
    (
        "tup_fetched",
        Kind::Counter,
        "Number of rows fetched by queries in this database",
    ),
    (
        "tup_inserted",
        Kind::Counter,
        "Number of rows inserted by queries in this database",
    ),
    (
        "tup_updated",
        Kind::Counter,
        "Number of rows updated by queries in this database",
    ),
    (
        "tup_deleted",
        Kind::Counter,
        "Number of rows deleted by queries in this database",
    ),
    (
        "conflicts",
        Kind::Counter,
        "Number of queries canceled due to conflicts with recovery in this database.",
    ),
    (
        "temp_files",
        Kind::Counter,
        "Number of temporary files created by queries in this database.",
    ),
    (
        "temp_bytes",
        Kind::Counter,
        "Total amount of data written to temporary files by queries in this database.",
    ),
    (
        "deadlocks",
        Kind::Counter,
        "Number of deadlocks detected in this database",
    ),
    (
        "checksum_failures",
        Kind::Counter,
        "Number of data page checksum failures detected in this database",
    ),
    (
        "blk_read_time",
        Kind::Counter,
        "Time spent reading data file blocks by backends in this database, in milliseconds",
    ),
    (
        "blk_write_time",
        Kind::Counter,
        "Time spent writing data file blocks by backends in this database, in milliseconds",
    ),
];

/// Session columns of pg_stat_database, PostgreSQL 14 and later.
const STAT_DATABASE_14: &[(&str, Kind, &str)] = &[
    ("session_time", Kind::Counter, "Time spent by database sessions in this database, in milliseconds"),
    ("active_time", Kind::Counter, "Time spent executing SQL statements in this database, in milliseconds"),
    ("idle_in_transaction_time", Kind::Counter, "Time spent idling while in a transaction in this database, in milliseconds"),
    ("sessions", Kind::Counter, "Total number of sessions established to this database"),
    ("sessions_abandoned", Kind::Counter, "Number of database sessions to this database that were terminated because connection to the client was lost"),
    ("sessions_fatal", Kind::Counter, "Number of database sessions to this database that were terminated by fatal errors"),
    ("sessions_killed", Kind::Counter, "Number of database sessions to this database that were terminated by operator intervention"),
    ("checksum_last_failure", Kind::Counter, "Time at which the last data page checksum failure was detected in this database"),
];

/// `pg_stat_database_*{datid,datname}` and `pg_stat_database_conflicts_confl_*`.
pub async fn stat_database(
    conn: &mut PgConnection,
    server: &str,
    version_num: i32,
    m: &mut MetricSet,
) -> Result<()> {
    let columns: Vec<(&str, Kind, &str)> = STAT_DATABASE
        .iter()
        .chain(if version_num >= 140_000 {
            STAT_DATABASE_14
        } else {
            &[]
        })
        .copied()
        .collect();
    let cols: Vec<String> = columns
        .iter()
        .map(|(c, _, _)| {
            if *c == "checksum_last_failure" {
                "COALESCE(extract(epoch FROM checksum_last_failure), 0)::float8".to_string()
            } else {
                format!("{c}::float8")
            }
        })
        .collect();
    let sql = format!(
        "SELECT datid::text, COALESCE(datname::text, ''), {}, \
         COALESCE(extract(epoch FROM stats_reset), 0)::float8 FROM pg_stat_database",
        cols.join(", ")
    );
    for r in rows(conn, server, "pg_stat_database", &sql).await? {
        let (id, d) = (text(&r, 0), text(&r, 1));
        let l = [
            ("datid", id.as_str()),
            ("datname", d.as_str()),
            ("server", server),
        ];
        for (i, (c, kind, help)) in columns.iter().enumerate() {
            if let Some(v) = num(&r, i + 2) {
                m.add(&format!("pg_stat_database_{c}"), help, *kind, &l, v);
            }
        }
        m.counter(
            "pg_stat_database_stats_reset",
            "Time at which these statistics were last reset",
            &l,
            num(&r, columns.len() + 2).unwrap_or(0.0),
        );
    }
    for r in rows(
        conn,
        server,
        "pg_stat_database_conflicts",
        "SELECT datid::text, datname::text, confl_tablespace::float8, confl_lock::float8, \
           confl_snapshot::float8, confl_bufferpin::float8, confl_deadlock::float8 \
         FROM pg_stat_database_conflicts",
    )
    .await?
    {
        let (id, d) = (text(&r, 0), text(&r, 1));
        let l = [
            ("datid", id.as_str()),
            ("datname", d.as_str()),
            ("server", server),
        ];
        for (i, c) in ["tablespace", "lock", "snapshot", "bufferpin", "deadlock"]
            .iter()
            .enumerate()
        {
            m.counter(
                &format!("pg_stat_database_conflicts_confl_{c}"),
                &format!("Number of queries in this database that have been canceled due to {c} conflicts"),
                &l,
                num(&r, i + 2).unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// `pg_stat_bgwriter_*_total`.
pub async fn bgwriter(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    const COLS: &[(&str, &str)] = &[
        ("checkpoints_timed", "checkpoints_timed"),
        ("checkpoints_req", "checkpoints_req"),
        ("checkpoint_write_time", "checkpoint_write_time"),
        ("checkpoint_sync_time", "checkpoint_sync_time"),
        ("buffers_checkpoint", "buffers_checkpoint"),
        ("buffers_clean", "buffers_clean"),
        ("maxwritten_clean", "maxwritten_clean"),
        ("buffers_backend", "buffers_backend"),
        ("buffers_backend_fsync", "buffers_backend_fsync"),
        ("buffers_alloc", "buffers_alloc"),
    ];
    let sql = format!(
        "SELECT {}, COALESCE(extract(epoch FROM stats_reset), 0)::float8 FROM pg_stat_bgwriter",
        COLS.iter()
            .map(|(c, _)| format!("{c}::float8"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let l = [("server", server)];
    for r in rows(conn, server, "pg_stat_bgwriter", &sql).await? {
        for (i, (_, name)) in COLS.iter().enumerate() {
            m.counter(
                &format!("pg_stat_bgwriter_{name}_total"),
                &format!("pg_stat_bgwriter {name}"),
                &l,
                num(&r, i).unwrap_or(0.0),
            );
        }
        m.counter(
            "pg_stat_bgwriter_stats_reset_total",
            "Time at which these statistics were last reset",
            &l,
            num(&r, COLS.len()).unwrap_or(0.0),
        );
    }
    Ok(())
}

/// `pg_stat_archiver_*`.
pub async fn archiver(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    let l = [("server", server)];
    for r in rows(
        conn,
        server,
        "pg_stat_archiver",
        "SELECT archived_count::float8, failed_count::float8, \
         extract(epoch FROM now() - last_archived_time)::float8 FROM pg_stat_archiver",
    )
    .await?
    {
        m.counter(
            "pg_stat_archiver_archived_count",
            "Number of WAL files that have been successfully archived",
            &l,
            num(&r, 0).unwrap_or(0.0),
        );
        m.counter(
            "pg_stat_archiver_failed_count",
            "Number of failed attempts for archiving WAL files",
            &l,
            num(&r, 1).unwrap_or(0.0),
        );
        m.gauge(
            "pg_stat_archiver_last_archive_age",
            "Time in seconds since last WAL segment was successfully archived",
            &l,
            num(&r, 2).unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// `pg_replication_slots_*{slot_name,database}`.
pub async fn slots(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    for r in rows(
        conn,
        server,
        "pg_replication_slots",
        "SELECT slot_name::text, COALESCE(database::text, ''), active, \
           (CASE pg_is_in_recovery() WHEN 't' THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), restart_lsn) \
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) END)::float8, \
           slot_type::text, safe_wal_size::float8 \
         FROM pg_replication_slots",
    )
    .await?
    {
        let (slot, db, ty) = (text(&r, 0), text(&r, 1), text(&r, 4));
        let l = [("database", db.as_str()), ("server", server), ("slot_name", slot.as_str())];
        m.gauge(
            "pg_replication_slots_active",
            "Flag indicating if the slot is active",
            &l,
            num(&r, 2).unwrap_or(0.0),
        );
        if let Some(v) = num(&r, 3) {
            m.gauge(
                "pg_replication_slots_pg_wal_lsn_diff",
                "Replication lag in bytes",
                &l,
                v,
            );
        }
        if let Some(v) = num(&r, 5) {
            m.gauge(
                "pg_replication_slots_safe_wal_size_bytes",
                "number of bytes that can be written to WAL such that this slot is not in danger of getting in state lost",
                &[("server", server), ("slot_name", slot.as_str()), ("slot_type", ty.as_str())],
                v,
            );
        }
    }
    Ok(())
}

/// `pg_stat_replication_*` on a primary (postgres_exporter labels the pid as `slot_name`;
/// kept for dashboard compatibility) and the seed's `pg_stat_replication_count`.
pub async fn stat_replication(
    conn: &mut PgConnection,
    server: &str,
    m: &mut MetricSet,
) -> Result<()> {
    let rs = rows(
        conn,
        server,
        "pg_stat_replication",
        "SELECT COALESCE(application_name, ''), COALESCE(host(client_addr), ''), pid::text, \
           COALESCE(state, ''), \
           (CASE pg_is_in_recovery() WHEN 't' THEN NULL \
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), pg_lsn('0/0')) END)::float8, \
           (CASE pg_is_in_recovery() WHEN 't' THEN NULL \
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) END)::float8, \
           extract(epoch FROM reply_time)::float8 \
         FROM pg_stat_replication",
    )
    .await?;
    m.gauge(
        "pg_stat_replication_count",
        "Number of standbys connected to this server (rows of pg_stat_replication)",
        &[("server", server)],
        rs.len() as f64,
    );
    for r in rs {
        let (app, addr, pid, state) = (text(&r, 0), text(&r, 1), text(&r, 2), text(&r, 3));
        let l = [
            ("application_name", app.as_str()),
            ("client_addr", addr.as_str()),
            ("server", server),
            ("slot_name", pid.as_str()),
            ("state", state.as_str()),
        ];
        if let Some(v) = num(&r, 4) {
            m.gauge(
                "pg_stat_replication_pg_current_wal_lsn_bytes",
                "WAL position in bytes",
                &l,
                v,
            );
        }
        if let Some(v) = num(&r, 5) {
            m.gauge(
                "pg_stat_replication_pg_wal_lsn_diff",
                "Lag in bytes between master and slave",
                &l,
                v,
            );
        }
        if let Some(v) = num(&r, 6) {
            m.gauge(
                "pg_stat_replication_reply_time",
                "Send time of last reply message received from standby server",
                &l,
                v,
            );
        }
    }
    Ok(())
}
