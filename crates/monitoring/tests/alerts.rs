//! The rendered alert rules pass `promtool check rules`, and `promtool test rules` shows each
//! alert firing on bad series and staying silent on healthy ones.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use pgha_config::AlertThresholds;

const TESTS: &str = r#"
rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'pg_up{instance="a",server="a:1"}'
        values: '0x20'
      - series: 'pg_up{instance="b",server="b:1"}'
        values: '1x20'
      - series: 'pg_replication_lag_bytes{instance="a",server="a:1"}'
        values: '100000000x20'
      - series: 'pg_replication_lag_bytes{instance="b",server="b:1"}'
        values: '1000x20'
      - series: 'pg_replication_lag_seconds{instance="a",server="a:1"}'
        values: '120x20'
      - series: 'pg_replication_lag_seconds{instance="b",server="b:1"}'
        values: '1x20'
      - series: 'pgha_wal_receiver_streaming{cluster="c",node="n2"}'
        values: '0x20'
      - series: 'pgha_wal_receiver_streaming{cluster="c",node="n3"}'
        values: '1x20'
      - series: 'pg_replication_slots_active{server="a:1",slot_name="s1",database=""}'
        values: '0x20'
      - series: 'pg_replication_slots_active{server="a:1",slot_name="s2",database=""}'
        values: '1x20'
      - series: 'pg_replication_slots_pg_wal_lsn_diff{server="a:1",slot_name="s1",database=""}'
        values: '2000000000x20'
      - series: 'pg_replication_slots_pg_wal_lsn_diff{server="a:1",slot_name="s2",database=""}'
        values: '10x20'
      - series: 'pg_stat_activity_count{instance="a",server="a:1",datname="postgres",state="idle"}'
        values: '90x20'
      - series: 'pg_stat_activity_count{instance="b",server="b:1",datname="postgres",state="idle"}'
        values: '10x20'
      - series: 'pg_settings_max_connections{instance="a",server="a:1"}'
        values: '100x20'
      - series: 'pg_settings_max_connections{instance="b",server="b:1"}'
        values: '100x20'
      - series: 'pg_stat_database_xact_rollback{instance="a",server="a:1",datname="app",datid="5"}'
        values: '0+50x20'
      - series: 'pg_stat_database_xact_commit{instance="a",server="a:1",datname="app",datid="5"}'
        values: '0+50x20'
      - series: 'pg_stat_database_xact_rollback{instance="a",server="a:1",datname="good",datid="6"}'
        values: '0+1x20'
      - series: 'pg_stat_database_xact_commit{instance="a",server="a:1",datname="good",datid="6"}'
        values: '0+100x20'
      - series: 'pg_stat_database_deadlocks{instance="a",server="a:1",datname="app",datid="5"}'
        values: '0 0 0 0 0 0 0 3 3 3 3 3 3 3 3 3 3 3 3 3'
      - series: 'pg_stat_database_deadlocks{instance="a",server="a:1",datname="good",datid="6"}'
        values: '0x20'
      - series: 'pg_stat_archiver_failed_count{instance="a",server="a:1"}'
        values: '0+1x20'
      - series: 'pg_stat_archiver_failed_count{instance="b",server="b:1"}'
        values: '2x20'
      - series: 'pg_stat_archiver_last_archive_age{instance="a",server="a:1"}'
        values: '7200x20'
      - series: 'pg_stat_archiver_last_archive_age{instance="b",server="b:1"}'
        values: '10x20'
      - series: 'pg_replication_is_replica{instance="a",server="a:1"}'
        values: '0x20'
      - series: 'pg_replication_is_replica{instance="b",server="b:1"}'
        values: '0x20'
      - series: 'pg_exporter_last_scrape_error{instance="a"}'
        values: '1x20'
      - series: 'pg_exporter_last_scrape_error{instance="b"}'
        values: '0x20'
      - series: 'pgha_node_is_primary{cluster="c",node="n1"}'
        values: '1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'pgha_node_is_primary{cluster="c",node="n2"}'
        values: '0 0 0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'pgha_cluster_writable_nodes{cluster="c"}'
        values: '2x20'
      - series: 'pgha_cluster_writable_nodes{cluster="d"}'
        values: '1x20'
      - series: 'pg_stat_user_tables_n_dead_tup{instance="a",datname="app",schemaname="public",relname="bloated"}'
        values: '50000x20'
      - series: 'pg_stat_user_tables_n_live_tup{instance="a",datname="app",schemaname="public",relname="bloated"}'
        values: '100000x20'
      - series: 'pg_stat_user_tables_n_dead_tup{instance="a",datname="app",schemaname="public",relname="big"}'
        values: '50000x20'
      - series: 'pg_stat_user_tables_n_live_tup{instance="a",datname="app",schemaname="public",relname="big"}'
        values: '10000000x20'
      - series: 'pg_stat_user_tables_n_dead_tup{instance="a",datname="app",schemaname="public",relname="tiny"}'
        values: '900x20'
      - series: 'pg_stat_user_tables_n_live_tup{instance="a",datname="app",schemaname="public",relname="tiny"}'
        values: '100x20'
      - series: 'pg_database_wraparound_age_datfrozenxid_seconds{instance="a",datname="app"}'
        values: '1500000000x20'
      - series: 'pg_database_wraparound_age_datfrozenxid_seconds{instance="a",datname="good"}'
        values: '200000000x20'
      - series: 'pg_long_running_transactions_oldest_timestamp_seconds{instance="a"}'
        values: '0 60 120 180 240 300 360 420 480 540 600 0 0 0 0 0 0 0 0 0'
      - series: 'pg_long_running_transactions_oldest_timestamp_seconds{instance="b"}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: PostgresqlTooManyDeadTuples
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, datname: app, schemaname: public, relname: bloated}
      - eval_time: 10m
        alertname: PostgresqlTransactionIdWraparound
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, datname: app}
      - eval_time: 4m
        alertname: PostgresqlLongRunningTransaction
        exp_alerts: []
      - eval_time: 7m
        alertname: PostgresqlLongRunningTransaction
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}
      - eval_time: 12m
        alertname: PostgresqlLongRunningTransaction
        exp_alerts: []
      - eval_time: 0m
        alertname: PostgresqlDown
        exp_alerts: []
      - eval_time: 10m
        alertname: PostgresqlDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlReplicationLagBytes
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlReplicationLagSeconds
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlReplicaNotStreaming
        exp_alerts:
          - exp_labels: {severity: critical, cluster: c, node: n2}
      - eval_time: 10m
        alertname: PostgresqlReplicationSlotInactive
        exp_alerts:
          - exp_labels: {severity: warning, server: "a:1", slot_name: s1}
      - eval_time: 10m
        alertname: PostgresqlReplicationSlotRetainingWal
        exp_alerts:
          - exp_labels: {severity: warning, server: "a:1", slot_name: s1}
      - eval_time: 10m
        alertname: PostgresqlTooManyConnections
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlHighRollbackRate
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1", datname: app}
      - eval_time: 9m
        alertname: PostgresqlDeadlocks
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1", datname: app, datid: "5"}
      - eval_time: 19m
        alertname: PostgresqlDeadlocks
        exp_alerts: []
      - eval_time: 10m
        alertname: PostgresqlWalArchivingFailing
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlWalArchiveStale
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, server: "a:1"}
      - eval_time: 10m
        alertname: PostgresqlExporterErrors
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}
      - eval_time: 7m
        alertname: PghaPrimaryChanged
        exp_alerts:
          - exp_labels: {severity: warning, cluster: c, node: n2}
      - eval_time: 25m
        alertname: PghaPrimaryChanged
        exp_alerts: []
      - eval_time: 10m
        alertname: PghaNoSinglePrimary
        exp_alerts:
          - exp_labels: {severity: critical, cluster: c}
"#;

fn promtool() -> Option<&'static str> {
    std::path::Path::new("/usr/bin/promtool")
        .exists()
        .then_some("/usr/bin/promtool")
}

#[test]
fn rendered_rules_pass_promtool_check_and_tests() {
    let Some(promtool) = promtool() else {
        panic!("promtool missing: run `cargo xtask install-deps` (Debian package prometheus)");
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    pgha_monitoring::alerts::write(&rules, &AlertThresholds::default()).unwrap();
    let check = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // promtool compares annotations too; the unit tests are about when alerts fire, so they
    // run on a copy without annotations (check rules above validated the templates).
    let full = std::fs::read_to_string(&rules).unwrap();
    let bare: Vec<&str> = full
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("annotations:")
                || t.starts_with("summary:")
                || t.starts_with("description:"))
        })
        .collect();
    std::fs::write(&rules, bare.join("\n")).unwrap();
    let tests = dir.path().join("tests.yml");
    std::fs::write(&tests, TESTS).unwrap();
    let test = Command::new(promtool)
        .args(["test", "rules"])
        .arg(&tests)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn thresholds_come_from_config() {
    let t = AlertThresholds {
        lag_bytes: pgha_config::ByteSize(1234),
        lag_seconds: 7.5,
        ..AlertThresholds::default()
    };
    let text = pgha_monitoring::alerts::render(&t);
    assert!(text.contains("pg_replication_lag_bytes > 1234"), "{text}");
    assert!(text.contains("pg_replication_lag_seconds > 7.5"), "{text}");
    assert!(text.contains("for: 1m"), "{text}");
}

/// Every panel query of the Grafana dashboards in docs/grafana is valid PromQL: each becomes a
/// recording rule and `promtool check rules` parses them all.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = promtool() else {
        panic!("promtool missing: run `cargo xtask install-deps` (Debian package prometheus)");
    };
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let grafana = std::path::Path::new(&dir).join("../../docs/grafana");
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut n = 0;
    for e in std::fs::read_dir(&grafana).unwrap().flatten() {
        if e.path().extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                // Grafana's variables become a value promtool can parse.
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$cluster", "c")
                    .replace("$node", "n")
                    .replace("$instance", "i");
                n += 1;
                rules.push_str(&format!(
                    "      - record: dashboard:query{n}\n        expr: '{}'\n",
                    expr.replace('\'', "''")
                ));
            }
        }
    }
    assert!(n >= 40, "only {n} dashboard queries found");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboards.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
