//! The collectors postgres_exporter added after 0.11 and enables by default (names, labels and
//! queries as in its `collector/` package: `stat_user_tables`, `statio_user_tables`,
//! `database_wraparound`, `wal`), its opt-in `long_running_transactions`, and the
//! `pg_txid_*` series of its example queries.yaml that popular alert rules use. Like upstream's
//! newer collectors they carry no `server` label.

use sqlx::PgConnection;

use crate::collect::{num, rows, text};
use crate::metrics::MetricSet;
use crate::Result;

/// (metric suffix, help, counter?) of pg_stat_user_tables, in query order; the column is
/// [`user_table_column`]'s.
const USER_TABLES: &[(&str, &str, bool)] = &[
    (
        "seq_scan",
        "Number of sequential scans initiated on this table",
        true,
    ),
    (
        "seq_tup_read",
        "Number of live rows fetched by sequential scans",
        true,
    ),
    (
        "idx_scan",
        "Number of index scans initiated on this table",
        true,
    ),
    (
        "idx_tup_fetch",
        "Number of live rows fetched by index scans",
        true,
    ),
    ("n_tup_ins", "Number of rows inserted", true),
    ("n_tup_upd", "Number of rows updated", true),
    ("n_tup_del", "Number of rows deleted", true),
    (
        "n_tup_hot_upd",
        "Number of rows HOT updated (i.e., with no separate index update required)",
        true,
    ),
    ("n_live_tup", "Estimated number of live rows", false),
    ("n_dead_tup", "Estimated number of dead rows", false),
    (
        "n_mod_since_analyze",
        "Estimated number of rows changed since last analyze",
        false,
    ),
    (
        "last_vacuum",
        "Last time at which this table was manually vacuumed (not counting VACUUM FULL)",
        false,
    ),
    (
        "last_autovacuum",
        "Last time at which this table was vacuumed by the autovacuum daemon",
        false,
    ),
    (
        "last_analyze",
        "Last time at which this table was manually analyzed",
        false,
    ),
    (
        "last_autoanalyze",
        "Last time at which this table was analyzed by the autovacuum daemon",
        false,
    ),
    (
        "vacuum_count",
        "Number of times this table has been manually vacuumed (not counting VACUUM FULL)",
        true,
    ),
    (
        "autovacuum_count",
        "Number of times this table has been vacuumed by the autovacuum daemon",
        true,
    ),
    (
        "analyze_count",
        "Number of times this table has been manually analyzed",
        true,
    ),
    (
        "autoanalyze_count",
        "Number of times this table has been analyzed by the autovacuum daemon",
        true,
    ),
    (
        "index_size_bytes",
        "Total disk space used by this index, in bytes",
        false,
    ),
    (
        "table_size_bytes",
        "Total disk space used by this table, in bytes",
        false,
    ),
];

/// The SQL of a pg_stat_user_tables metric: the column of the same name, times as epoch
/// seconds (0 for never, as upstream), sizes from the size functions.
fn user_table_column(name: &str) -> String {
    match name {
        "index_size_bytes" => "pg_indexes_size(t.relid)::float8".into(),
        "table_size_bytes" => "pg_table_size(t.relid)::float8".into(),
        n if n.starts_with("last_") => format!("coalesce(extract(epoch FROM t.{n}), 0)::float8"),
        n => format!("t.{n}::float8"),
    }
}

/// (column of pg_statio_user_tables, metric suffix, help), all counters.
const STATIO: &[(&str, &str, &str)] = &[
    (
        "heap_blks_read",
        "heap_blocks_read",
        "Number of disk blocks read from this table",
    ),
    (
        "heap_blks_hit",
        "heap_blocks_hit",
        "Number of buffer hits in this table",
    ),
    (
        "idx_blks_read",
        "idx_blocks_read",
        "Number of disk blocks read from all indexes on this table",
    ),
    (
        "idx_blks_hit",
        "idx_blocks_hit",
        "Number of buffer hits in all indexes on this table",
    ),
    (
        "toast_blks_read",
        "toast_blocks_read",
        "Number of disk blocks read from this table's TOAST table (if any)",
    ),
    (
        "toast_blks_hit",
        "toast_blocks_hit",
        "Number of buffer hits in this table's TOAST table (if any)",
    ),
    (
        "tidx_blks_read",
        "tidx_blocks_read",
        "Number of disk blocks read from this table's TOAST table indexes (if any)",
    ),
    (
        "tidx_blks_hit",
        "tidx_blocks_hit",
        "Number of buffer hits in this table's TOAST table indexes (if any)",
    ),
];

/// `pg_stat_user_tables_*` and `pg_statio_user_tables_*{datname,schemaname,relname}` for the
/// target's database, in one query. Never-vacuumed/analyzed times are 0, as upstream's.
pub async fn user_tables(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    let mut cols: Vec<String> = USER_TABLES
        .iter()
        .map(|(name, ..)| user_table_column(name))
        .collect();
    cols.extend(STATIO.iter().map(|(c, ..)| format!("io.{c}::float8")));
    let sql = format!(
        "SELECT current_database()::text, t.schemaname::text, t.relname::text, {} \
         FROM pg_stat_user_tables t JOIN pg_statio_user_tables io USING (relid)",
        cols.join(", ")
    );
    for r in rows(conn, server, "pg_stat_user_tables", &sql).await? {
        let (db, schema, rel) = (text(&r, 0), text(&r, 1), text(&r, 2));
        let l = [
            ("datname", db.as_str()),
            ("relname", rel.as_str()),
            ("schemaname", schema.as_str()),
        ];
        for (i, (name, help, counter)) in USER_TABLES.iter().enumerate() {
            let v = num(&r, 3 + i).unwrap_or(0.0);
            let name = format!("pg_stat_user_tables_{name}");
            if *counter {
                m.counter(&name, help, &l, v);
            } else {
                m.gauge(&name, help, &l, v);
            }
        }
        for (i, (_, name, help)) in STATIO.iter().enumerate() {
            let v = num(&r, 3 + USER_TABLES.len() + i).unwrap_or(0.0);
            m.counter(&format!("pg_statio_user_tables_{name}"), help, &l, v);
        }
    }
    Ok(())
}

/// Thresholds of `pg_long_running_transactions_count{threshold}`, as upstream's.
const LONG_RUNNING: [u32; 4] = [60, 300, 600, 1800];

/// Name of [`server_ages`] in `pg_scrape_collector_*{collector}`.
pub const SERVER_AGES: &str = "database_wraparound+long_running_transactions+wal";

/// In one round trip (rows tagged `db`, `tx`, `wal`):
/// - `pg_database_wraparound_age_datfrozenxid_seconds` / `_age_datminmxid_seconds{datname}`:
///   the transaction-id ages autovacuum must keep under `autovacuum_freeze_max_age` (the
///   "seconds" in the names is upstream's; the values are transaction counts);
/// - `pg_long_running_transactions_count{threshold}`, `..._oldest_timestamp_seconds`, and
///   `pg_txid_current` / `pg_txid_xmin` / `pg_txid_xmax`. `pg_txid_current` is the next
///   transaction id (the snapshot's xmax) instead of queries.yml's `txid_current()`, which
///   would spend a transaction id and write WAL at every scrape and fails on replicas; its
///   rate is the same;
/// - `pg_wal_segments`, `pg_wal_size_bytes`, `pg_wal_lsn_location_bytes`. pg_ls_waldir()
///   needs superuser or pg_monitor: pgha-exporter connects as `postgres.superuser`; a role
///   without it fails this collector (`pg_scrape_collector_success 0`), not the scrape.
pub async fn server_ages(conn: &mut PgConnection, server: &str, m: &mut MetricSet) -> Result<()> {
    let counts: Vec<String> = LONG_RUNNING
        .iter()
        .map(|t| format!("count(*) FILTER (WHERE age >= {t})::float8"))
        .collect();
    let sql = format!(
        "SELECT 'db', datname::text, age(datfrozenxid)::float8, mxid_age(datminmxid)::float8, \
           NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::float8 \
         FROM pg_catalog.pg_database WHERE datallowconn \
         UNION ALL \
         SELECT 'tx', NULL, txid_snapshot_xmax(s)::float8, txid_snapshot_xmin(s)::float8, a.* \
         FROM txid_current_snapshot() s, ( \
           SELECT coalesce(max(age), 0)::float8, {} FROM ( \
             SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age \
             FROM pg_catalog.pg_stat_activity \
             WHERE state IS DISTINCT FROM 'idle' AND query NOT LIKE 'autovacuum:%' \
               AND xact_start IS NOT NULL) x) a \
         UNION ALL \
         SELECT 'wal', NULL, count(*)::float8, sum(size)::float8, \
           (CASE WHEN pg_is_in_recovery() \
             THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0') \
             ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') END)::float8, \
           NULL, NULL, NULL, NULL \
         FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{{24}}$'",
        counts.join(", ")
    );
    for r in rows(conn, server, SERVER_AGES, &sql).await? {
        let v = |i: usize| num(&r, i);
        match text(&r, 0).as_str() {
            "db" => {
                let db = text(&r, 1);
                let l = [("datname", db.as_str())];
                if let (Some(x), Some(mx)) = (v(2), v(3)) {
                    m.gauge(
                        "pg_database_wraparound_age_datfrozenxid_seconds",
                        "Age of the oldest transaction ID that has not been frozen.",
                        &l,
                        x,
                    );
                    m.gauge(
                        "pg_database_wraparound_age_datminmxid_seconds",
                        "Age of the oldest multi-transaction ID that has been replaced with a transaction ID.",
                        &l,
                        mx,
                    );
                }
            }
            "tx" => {
                let xmax = v(2).unwrap_or(0.0);
                m.gauge(
                    "pg_txid_current",
                    "Next transaction id to be assigned (the current snapshot's xmax)",
                    &[],
                    xmax,
                );
                m.gauge(
                    "pg_txid_xmin",
                    "Oldest transaction id still active",
                    &[],
                    v(3).unwrap_or(0.0),
                );
                m.gauge(
                    "pg_txid_xmax",
                    "First as-yet-unassigned transaction id",
                    &[],
                    xmax,
                );
                m.gauge(
                    "pg_long_running_transactions_oldest_timestamp_seconds",
                    "The current maximum transaction age in seconds",
                    &[],
                    v(4).unwrap_or(0.0),
                );
                for (i, t) in LONG_RUNNING.iter().enumerate() {
                    m.gauge(
                        "pg_long_running_transactions_count",
                        "Number of transactions running longer than threshold",
                        &[("threshold", &t.to_string())],
                        v(5 + i).unwrap_or(0.0),
                    );
                }
            }
            _ => {
                m.gauge(
                    "pg_wal_segments",
                    "Number of WAL segments",
                    &[],
                    v(2).unwrap_or(0.0),
                );
                if let Some(size) = v(3) {
                    m.gauge("pg_wal_size_bytes", "Total size of WAL segments", &[], size);
                    m.gauge(
                        "pg_wal_lsn_location_bytes",
                        "WAL Log Sequence Number in bytes",
                        &[],
                        v(4).unwrap_or(0.0),
                    );
                }
            }
        }
    }
    Ok(())
}
