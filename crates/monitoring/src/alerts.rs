//! `pgha render alerts`: a Prometheus rules file with thresholds from `[monitoring.alerts]`,
//! written against the metric names the exporter (and postgres_exporter) expose.

use std::fmt::Write;
use std::path::Path;

use pgha_config::AlertThresholds;

use crate::{MonitoringError, Result};

/// One alerting rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub alert: &'static str,
    pub expr: String,
    /// Use the configured `for:` (false: fire at once, for events like a primary change).
    pub hold: bool,
    pub severity: &'static str,
    pub summary: &'static str,
    pub description: String,
}

/// The rules, thresholds filled in.
pub fn rules(t: &AlertThresholds) -> Vec<Rule> {
    let conn_ratio = t.connections_ratio;
    let user_dbs = r#"datname!~"template0|template1|""#;
    vec![
        Rule {
            alert: "PostgresqlDown",
            expr: "pg_up == 0".into(),
            hold: true,
            severity: "critical",
            summary: "PostgreSQL is down",
            description: "The exporter cannot reach PostgreSQL on {{ $labels.instance }}.".into(),
        },
        Rule {
            alert: "PostgresqlReplicationLagBytes",
            expr: format!("pg_replication_lag_bytes > {}", t.lag_bytes.0),
            hold: true,
            severity: "warning",
            summary: "Replica is behind in bytes",
            description: format!(
                "{{{{ $labels.server }}}} is {{{{ $value | humanize1024 }}}}B behind the primary (threshold {}).",
                t.lag_bytes
            ),
        },
        Rule {
            alert: "PostgresqlReplicationLagSeconds",
            expr: format!("pg_replication_lag_seconds > {}", t.lag_seconds),
            hold: true,
            severity: "warning",
            summary: "Replica is behind in time",
            description: format!(
                "{{{{ $labels.server }}}} is {{{{ $value | humanizeDuration }}}} behind (threshold {}s).",
                t.lag_seconds
            ),
        },
        Rule {
            alert: "PostgresqlReplicaNotStreaming",
            expr: "pgha_wal_receiver_streaming == 0".into(),
            hold: true,
            severity: "critical",
            summary: "Replica is not streaming WAL",
            description: "The WAL receiver of {{ $labels.node }} is not streaming; its lag grows.".into(),
        },
        Rule {
            alert: "PostgresqlReplicationSlotInactive",
            expr: "pg_replication_slots_active == 0".into(),
            hold: true,
            severity: "warning",
            summary: "Replication slot inactive",
            description: "Slot {{ $labels.slot_name }} on {{ $labels.server }} has no consumer and keeps WAL.".into(),
        },
        Rule {
            alert: "PostgresqlReplicationSlotRetainingWal",
            expr: format!(
                "pg_replication_slots_pg_wal_lsn_diff > {}",
                t.slot_retained_bytes.0
            ),
            hold: true,
            severity: "warning",
            summary: "Replication slot retains too much WAL",
            description: format!(
                "Slot {{{{ $labels.slot_name }}}} keeps {{{{ $value | humanize1024 }}}}B of WAL (threshold {}).",
                t.slot_retained_bytes
            ),
        },
        Rule {
            alert: "PostgresqlTooManyConnections",
            expr: format!(
                "sum by (instance, server) (pg_stat_activity_count) > on (instance, server) (pg_settings_max_connections * {conn_ratio})"
            ),
            hold: true,
            severity: "warning",
            summary: "Too many connections",
            description: format!(
                "{{{{ $labels.server }}}} uses {{{{ $value }}}} connections, above {}% of max_connections.",
                conn_ratio * 100.0
            ),
        },
        Rule {
            alert: "PostgresqlHighRollbackRate",
            expr: format!(
                "sum by (instance, server, datname) (rate(pg_stat_database_xact_rollback{{{user_dbs}}}[5m])) \
                 / sum by (instance, server, datname) (rate(pg_stat_database_xact_rollback{{{user_dbs}}}[5m]) \
                 + rate(pg_stat_database_xact_commit{{{user_dbs}}}[5m])) > {}",
                t.rollback_ratio
            ),
            hold: true,
            severity: "warning",
            summary: "High rollback rate",
            description: format!(
                "More than {}% of transactions in {{{{ $labels.datname }}}} roll back.",
                t.rollback_ratio * 100.0
            ),
        },
        Rule {
            alert: "PostgresqlDeadlocks",
            expr: format!(
                "increase(pg_stat_database_deadlocks{{{user_dbs}}}[5m]) > {}",
                t.deadlocks
            ),
            hold: false,
            severity: "warning",
            summary: "Deadlocks detected",
            description: "{{ $value }} deadlocks in {{ $labels.datname }} over 5 minutes.".into(),
        },
        Rule {
            alert: "PostgresqlWalArchivingFailing",
            expr: "increase(pg_stat_archiver_failed_count[5m]) > 0".into(),
            hold: false,
            severity: "critical",
            summary: "WAL archiving is failing",
            description: "archive_command failed on {{ $labels.server }}; point-in-time recovery is at risk.".into(),
        },
        Rule {
            alert: "PostgresqlWalArchiveStale",
            expr: format!(
                "pg_stat_archiver_last_archive_age > {} and on (instance, server) pg_replication_is_replica == 0",
                t.archive_age.as_secs()
            ),
            hold: true,
            severity: "warning",
            summary: "No WAL archived recently",
            description: format!(
                "The last WAL segment archived on {{{{ $labels.server }}}} is older than {}s.",
                t.archive_age.as_secs()
            ),
        },
        Rule {
            alert: "PostgresqlTooManyDeadTuples",
            expr: format!(
                "pg_stat_user_tables_n_dead_tup > 10000 and pg_stat_user_tables_n_dead_tup / \
                 (pg_stat_user_tables_n_live_tup + pg_stat_user_tables_n_dead_tup) > {}",
                t.dead_tuples_ratio
            ),
            hold: true,
            severity: "warning",
            summary: "Autovacuum is not keeping up with a table",
            description: format!(
                "{{{{ $labels.schemaname }}}}.{{{{ $labels.relname }}}} in {{{{ $labels.datname }}}} has more than {:.0}% dead rows.",
                t.dead_tuples_ratio * 100.0
            ),
        },
        Rule {
            alert: "PostgresqlTransactionIdWraparound",
            expr: format!(
                "pg_database_wraparound_age_datfrozenxid_seconds > {}",
                t.xid_age
            ),
            hold: true,
            severity: "critical",
            summary: "Transaction id wraparound is approaching",
            description: format!(
                "Database {{{{ $labels.datname }}}} has transaction ids {{{{ $value }}}} old (threshold {}; writes stop near 2.1 billion): vacuum it.",
                t.xid_age
            ),
        },
        Rule {
            alert: "PostgresqlLongRunningTransaction",
            expr: format!(
                "pg_long_running_transactions_oldest_timestamp_seconds > {}",
                t.long_transaction.as_secs()
            ),
            hold: false,
            severity: "warning",
            summary: "A transaction has been open for long",
            description: format!(
                "The oldest transaction on {{{{ $labels.instance }}}} is {{{{ $value | humanizeDuration }}}} old (threshold {}s); it holds back vacuum.",
                t.long_transaction.as_secs()
            ),
        },
        Rule {
            alert: "PostgresqlExporterErrors",
            expr: "pg_exporter_last_scrape_error == 1".into(),
            hold: true,
            severity: "warning",
            summary: "Exporter scrape errors",
            description: "The exporter on {{ $labels.instance }} fails to collect some metrics.".into(),
        },
        Rule {
            alert: "PghaPrimaryChanged",
            expr: "changes(pgha_node_is_primary[10m]) > 0 and pgha_node_is_primary == 1".into(),
            hold: false,
            severity: "warning",
            summary: "The primary changed",
            description: "{{ $labels.node }} became primary of cluster {{ $labels.cluster }} in the last 10 minutes.".into(),
        },
        Rule {
            alert: "PghaNoSinglePrimary",
            expr: "pgha_cluster_writable_nodes != 1".into(),
            hold: true,
            severity: "critical",
            summary: "No single writable primary",
            description: "Cluster {{ $labels.cluster }} has {{ $value }} writable nodes (0: no primary, >1: split brain).".into(),
        },
    ]
}

/// The rules file text (YAML).
pub fn render(t: &AlertThresholds) -> String {
    let hold = humantime_secs(t.for_duration.as_secs());
    let mut out = String::from(
        "# Prometheus alert rules rendered by `pgha render alerts` from [monitoring.alerts].\n\
         groups:\n  - name: pgha\n    rules:\n",
    );
    for r in rules(t) {
        let _ = writeln!(out, "      - alert: {}", r.alert);
        let _ = writeln!(out, "        expr: {}", yaml_str(&r.expr));
        if r.hold {
            let _ = writeln!(out, "        for: {hold}");
        }
        let _ = writeln!(out, "        labels:\n          severity: {}", r.severity);
        let _ = writeln!(
            out,
            "        annotations:\n          summary: {}\n          description: {}",
            yaml_str(r.summary),
            yaml_str(&r.description)
        );
    }
    out
}

/// Writes the rules file atomically.
pub fn write(path: &Path, t: &AlertThresholds) -> Result<()> {
    pgha_postgres::files::write_atomic(path, render(t).as_bytes(), 0o644, None).map_err(|source| {
        MonitoringError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn humantime_secs(s: u64) -> String {
    if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
