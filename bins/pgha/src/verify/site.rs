//! The checks of a standby site (`[standby_cluster]`): nobody writable, the standby leader
//! streaming from the primary site, the other nodes from the leader, the leader's lag.

use pgha_config::PghaConfig;
use pgha_replication::status::{ClusterStatus, Role};

use super::{check, Check, Verdict};

/// A standby site: every node reachable as a replica, none writable, the DCS leader streaming
/// from one of the primary site's nodes, every other node streaming from the leader, and the
/// leader's replay recent.
pub(super) async fn standby_site(
    config: &PghaConfig,
    source: &pgha_config::StandbyClusterSection,
    status: &ClusterStatus,
    leader: Option<String>,
    out: &mut Vec<Check>,
) {
    for n in &status.nodes {
        let name = format!("node {}", n.name);
        out.push(match (n.reachable, n.role) {
            (true, Some(Role::Replica)) => check(
                name,
                Verdict::Pass,
                "replica",
                "reachable replica",
                n.address.clone(),
            ),
            (true, Some(Role::Primary)) => check(
                name,
                Verdict::Fail,
                "primary",
                "reachable replica",
                "a standby site takes no writes until `pgha promote-cluster`",
            ),
            _ => check(
                name,
                Verdict::Fail,
                "unreachable",
                "reachable replica",
                n.error.clone().unwrap_or_default(),
            ),
        });
    }
    out.push(if status.writable.is_empty() {
        check(
            "no writable node",
            Verdict::Pass,
            "none",
            "0 writable",
            "standby cluster",
        )
    } else {
        check(
            "no writable node",
            Verdict::Fail,
            status.writable.join(","),
            "0 writable",
            "the standby site accepts writes: split brain with the primary site?",
        )
    });
    let Some(leader) = leader else {
        out.push(check(
            "standby leader",
            Verdict::Fail,
            "none",
            "a DCS leader",
            "no leader key",
        ));
        return;
    };
    let hosts = source.hosts_and_ports().unwrap_or_default();
    let streams_from = |n: &str| {
        status
            .node(n)
            .and_then(|s| s.receiver.as_ref())
            .filter(|r| r.receiver_status.as_deref() == Some("streaming"))
            .and_then(|r| Some((r.upstream_host.clone()?, r.upstream_port? as u16)))
    };
    out.push(match streams_from(&leader) {
        Some((h, p)) if hosts.iter().any(|(hh, pp)| *hh == h && *pp == p) => check(
            "standby leader",
            Verdict::Pass,
            format!("{leader} <- {h}:{p}"),
            "streams from the primary site",
            "",
        ),
        Some((h, p)) => check(
            "standby leader",
            Verdict::Fail,
            format!("{leader} <- {h}:{p}"),
            "streams from the primary site",
            format!("not one of {}", source.primary_hosts.join(",")),
        ),
        None => check(
            "standby leader",
            Verdict::Warn,
            format!("{leader} not streaming"),
            "streams from the primary site",
            if source.restore_command.is_some() {
                "following the archive (restore_command) only, or reconnecting"
            } else {
                "no restore_command to fall back on"
            },
        ),
    });
    let leader_addr = config.node(&leader).map(|n| (n.host.clone(), n.port));
    for n in config.nodes.iter().filter(|n| n.name != leader) {
        let got = streams_from(&n.name);
        let ok = got.is_some() && got == leader_addr;
        out.push(check(
            format!("replica {}", n.name),
            if ok { Verdict::Pass } else { Verdict::Fail },
            got.map(|(h, p)| format!("<- {h}:{p}"))
                .unwrap_or_else(|| "not streaming".into()),
            format!("streams from {leader}"),
            "",
        ));
    }
    let replayed = status
        .node(&leader)
        .and_then(|s| s.receiver.as_ref())
        .and_then(|r| r.replay_lsn);
    out.push(standby_lag(config, source, replayed).await);
}

/// The standby leader's replay position against the primary site's current WAL position
/// (the primary site's writable node, reached with this config's superuser credentials).
async fn standby_lag(
    config: &PghaConfig,
    source: &pgha_config::StandbyClusterSection,
    replayed: Option<pgha_postgres::Lsn>,
) -> Check {
    let max = config.monitoring.alerts.lag_bytes.bytes();
    let threshold = format!("<= {max} B");
    let Some(replayed) = replayed else {
        return check(
            "standby lag",
            Verdict::Warn,
            "-",
            threshold,
            "the standby leader reports no replay position",
        );
    };
    if let Some((at, current)) = pgha_failover::ops::primary_site_position(config, source).await {
        let lag = current.bytes_since(replayed);
        let verdict = if lag <= max {
            Verdict::Pass
        } else {
            Verdict::Warn
        };
        return check(
            "standby lag",
            verdict,
            format!("{lag} B"),
            threshold,
            format!("primary site {at} at {current}, replayed {replayed}"),
        );
    }
    check(
        "standby lag",
        Verdict::Warn,
        "primary site unreachable",
        threshold,
        "no writable node among standby_cluster.primary_hosts: lost? (docs/RUNBOOK.md, site disaster)",
    )
}
