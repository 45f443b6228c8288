//! The Grafana dashboard in docs/grafana/pgha.json only queries `pgha_*` metrics the exporter
//! produces for a primary and a replica.
#![allow(clippy::unwrap_used)]

use pgha_monitoring::MetricSet;
use pgha_postgres::Lsn;
use pgha_replication::status::{ClusterStatus, NodeStatus, ReceiverStat, Role};

#[test]
fn dashboard_queries_exported_pgha_metrics() {
    let mut p = NodeStatus::unreachable("n1", "h:1".into(), String::new());
    p.reachable = true;
    p.error = None;
    p.role = Some(Role::Primary);
    p.timeline = Some(1);
    p.lsn = Some(Lsn(100));
    let mut r = NodeStatus::unreachable("n2", "h:2".into(), String::new());
    r.reachable = true;
    r.error = None;
    r.role = Some(Role::Replica);
    r.timeline = Some(1);
    r.lsn = Some(Lsn(50));
    r.streaming = Some(false);
    r.receiver = Some(ReceiverStat {
        receiver_status: None,
        upstream_host: None,
        upstream_port: None,
        slot_name: None,
        receive_lsn: Some(Lsn(50)),
        replay_lsn: Some(Lsn(50)),
        last_replay_age_seconds: Some(12.0),
        replay_paused: false,
        timeline: Some(1),
    });
    let st = ClusterStatus::derive("c".into(), vec![p, r]);
    let mut m = MetricSet::new();
    pgha_monitoring::ha::cluster(&st, &mut m);
    assert_eq!(
        m.family("pgha_replication_lag_bytes").unwrap().samples[0].1,
        50.0
    );
    assert_eq!(
        m.family("pgha_replication_lag_seconds").unwrap().samples[0].1,
        12.0
    );
    assert_eq!(
        m.family("pgha_wal_receiver_streaming").unwrap().samples[0].1,
        0.0
    );
    // A `nostream` replica never streams: no series, so `PostgresqlReplicaNotStreaming`
    // does not fire for it for ever.
    let mut archive = st.clone();
    archive.nodes[1].archive_only = true;
    let mut a = MetricSet::new();
    pgha_monitoring::ha::cluster(&archive, &mut a);
    assert!(a
        .family("pgha_wal_receiver_streaming")
        .is_none_or(|f| f.samples.is_empty()));

    // The runner's CARGO_MANIFEST_DIR first (a binary reused from another clone's build).
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/../../docs/grafana/pgha.json");
    let text = std::fs::read_to_string(path).unwrap();
    let mut used: Vec<&str> = text
        .match_indices("pgha_")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            m.family(name).is_some(),
            "dashboard queries {name}, which is not exported"
        );
    }
}
