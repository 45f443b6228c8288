//! Replication metrics from pgha's own cluster status: honest lag (a replica whose WAL
//! receiver stopped shows lag growing from its last replay, not 0) and the `pgha_*` HA state.

use pgha_replication::status::{ClusterStatus, NodeStatus, Role};

use crate::metrics::MetricSet;

/// `pg_replication_*` and `pg_replication_lag_bytes` for one target, from its node status in
/// the derived cluster status.
pub fn replication(node: &NodeStatus, server: &str, m: &mut MetricSet) {
    let l = [("server", server)];
    let replica = node.role == Some(Role::Replica);
    let last_replay = node
        .receiver
        .as_ref()
        .and_then(|r| r.last_replay_age_seconds)
        .map(|s| s.max(0.0));
    let lag_seconds = if replica {
        node.lag_seconds.or(last_replay).unwrap_or(f64::NAN)
    } else {
        0.0
    };
    m.gauge(
        "pg_replication_lag_seconds",
        "Replication lag behind master in seconds (grows while the WAL receiver is stopped)",
        &l,
        lag_seconds,
    );
    m.gauge(
        "pg_replication_is_replica",
        "Indicates if the server is a replica",
        &l,
        if replica { 1.0 } else { 0.0 },
    );
    m.gauge(
        "pg_replication_last_replay_seconds",
        "Age of last replay in seconds",
        &l,
        last_replay.unwrap_or(0.0),
    );
    let lag_bytes = if replica {
        node.lag_bytes.map(|b| b as f64).unwrap_or(f64::NAN)
    } else {
        0.0
    };
    m.gauge(
        "pg_replication_lag_bytes",
        "Bytes of WAL this replica has not replayed yet, against the primary's current position",
        &l,
        lag_bytes,
    );
}

/// `pgha_*`: role, reachability, streaming and lag of every node in the cluster.
pub fn cluster(st: &ClusterStatus, m: &mut MetricSet) {
    let c = st.cluster.as_str();
    m.gauge(
        "pgha_cluster_writable_nodes",
        "Nodes answering as primary: 1 is healthy, 0 no primary, more than 1 split brain",
        &[("cluster", c)],
        st.writable.len() as f64,
    );
    for n in &st.nodes {
        let l = [("cluster", c), ("node", n.name.as_str())];
        m.gauge(
            "pgha_node_up",
            "1 when the node answered the status queries",
            &l,
            if n.reachable { 1.0 } else { 0.0 },
        );
        if let Some(role) = n.role {
            let role = role.to_string();
            m.gauge(
                "pgha_node_role",
                "Role the node reports (pg_is_in_recovery)",
                &[
                    ("cluster", c),
                    ("node", n.name.as_str()),
                    ("role", role.as_str()),
                ],
                1.0,
            );
        }
        if n.reachable {
            m.gauge(
                "pgha_node_is_primary",
                "1 when the node is a writable primary",
                &l,
                if n.role == Some(Role::Primary) {
                    1.0
                } else {
                    0.0
                },
            );
        }
        if let Some(tl) = n.timeline {
            m.gauge("pgha_node_timeline", "Timeline of the node", &l, tl as f64);
        }
        if let Some(lsn) = n.lsn {
            m.gauge(
                "pgha_node_wal_lsn_bytes",
                "Primary: current WAL position; replica: replay position (bytes)",
                &l,
                lsn.0 as f64,
            );
        }
        if n.role != Some(Role::Replica) {
            continue;
        }
        // A `nostream` replica never streams: no series (the alert on it would always fire).
        if let Some(s) = n.streaming.filter(|_| !n.archive_only) {
            m.gauge(
                "pgha_wal_receiver_streaming",
                "1 when the replica's WAL receiver is streaming from its upstream",
                &l,
                if s { 1.0 } else { 0.0 },
            );
        }
        if let Some(r) = &n.receiver {
            m.gauge(
                "pgha_wal_replay_paused",
                "1 when WAL replay is paused on the replica",
                &l,
                if r.replay_paused { 1.0 } else { 0.0 },
            );
        }
        if let Some(b) = n.lag_bytes {
            m.gauge(
                "pgha_replication_lag_bytes",
                "Bytes the replica is behind the primary's current WAL position",
                &l,
                b as f64,
            );
        }
        if let Some(s) = n.lag_seconds {
            m.gauge(
                "pgha_replication_lag_seconds",
                "Seconds the replica is behind; grows from the last replay when not streaming",
                &l,
                s,
            );
        }
        let sync = n.sync_state.as_deref().unwrap_or("none");
        m.gauge(
            "pgha_replica_sync_state",
            "sync_state the primary reports for the replica (async, sync, quorum, potential, none)",
            &[
                ("cluster", c),
                ("node", n.name.as_str()),
                ("sync_state", sync),
            ],
            1.0,
        );
    }
}
