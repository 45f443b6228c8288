//! Judging the cluster status snapshot (pure: no I/O): every node reachable, one writable
//! primary, replicas streaming within the lag thresholds, their slots, a synchronous standby
//! when the mode waits for one.

use pgha_config::PghaConfig;
use pgha_replication::status::{ClusterStatus, Role};
use pgha_replication::table::human_bytes;

use super::{check, skip, Check, Verdict};

pub(super) fn nodes(status: &ClusterStatus, out: &mut Vec<Check>) {
    for n in &status.nodes {
        let name = format!("node {}", n.name);
        out.push(match (n.reachable, n.role) {
            (true, Some(Role::Primary)) => check(
                name,
                Verdict::Pass,
                "primary",
                "reachable",
                n.address.clone(),
            ),
            (true, Some(Role::Replica)) => check(
                name,
                Verdict::Pass,
                "replica",
                "reachable",
                n.address.clone(),
            ),
            _ => check(
                name,
                Verdict::Fail,
                "unreachable",
                "reachable",
                n.error.clone().unwrap_or_default(),
            ),
        });
    }
    let w = &status.writable;
    out.push(match w.len() {
        1 => check(
            "single primary",
            Verdict::Pass,
            w[0].clone(),
            "exactly 1 writable",
            "",
        ),
        0 => check(
            "single primary",
            Verdict::Fail,
            "none",
            "exactly 1 writable",
            "no node accepts writes",
        ),
        _ => check(
            "single primary",
            Verdict::Fail,
            w.join(","),
            "exactly 1 writable",
            "split brain: several nodes accept writes",
        ),
    });
}

pub(super) fn replicas(
    config: &PghaConfig,
    status: &ClusterStatus,
    primary: Option<&str>,
    out: &mut Vec<Check>,
) {
    let a = &config.monitoring.alerts;
    let (max_bytes, max_secs) = (a.lag_bytes.0, a.lag_seconds);
    let primary_status = primary.and_then(|p| status.node(p));
    for n in status
        .nodes
        .iter()
        .filter(|n| n.role == Some(Role::Replica))
    {
        let name = format!("replica {}", n.name);
        if n.streaming != Some(true) {
            out.push(check(
                name,
                Verdict::Fail,
                "not streaming",
                "streaming",
                "its WAL receiver is not streaming",
            ));
            continue;
        }
        let bytes = n.lag_bytes.unwrap_or(0);
        let secs = n.lag_seconds.unwrap_or(0.0);
        let value = format!("lag {} / {secs:.1}s", human_bytes(bytes));
        let threshold = format!("<= {} / {max_secs}s", human_bytes(max_bytes));
        out.push(if bytes > max_bytes || secs > max_secs {
            check(
                name,
                Verdict::Fail,
                value,
                threshold,
                "lag above the alert thresholds",
            )
        } else {
            check(name, Verdict::Pass, value, threshold, "streaming")
        });
        if config.replication.slots {
            let slot = primary_status.and_then(|p| p.slots.iter().find(|s| s.slot_name == n.name));
            out.push(match slot {
                Some(s) if s.active => check(
                    format!("slot {}", n.name),
                    Verdict::Pass,
                    "active",
                    "active",
                    "",
                ),
                Some(_) => check(
                    format!("slot {}", n.name),
                    Verdict::Fail,
                    "inactive",
                    "active",
                    "the slot holds WAL for nobody",
                ),
                None => check(
                    format!("slot {}", n.name),
                    Verdict::Fail,
                    "missing",
                    "active",
                    "no slot on the primary",
                ),
            });
        }
    }
    if config.replication.mode.waits() {
        let sync = primary_status
            .map(|p| {
                p.standbys
                    .iter()
                    .filter(|s| matches!(s.sync_state.as_deref(), Some("sync" | "quorum")))
                    .count()
            })
            .unwrap_or(0);
        out.push(if sync > 0 {
            check("sync standby", Verdict::Pass, sync.to_string(), ">= 1", "")
        } else {
            check(
                "sync standby",
                Verdict::Fail,
                "0",
                ">= 1",
                "sync mode without a synchronous standby: commits wait",
            )
        });
    } else {
        out.push(skip("sync standby", "replication.mode is async"));
    }
}
