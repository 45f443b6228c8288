//! Operator actions through the DCS, shared by the `pgha` CLI and the agent API: switchover,
//! manual failover, pause/resume, and the member list.

use pgha_config::{PghaConfig, StandbyClusterSection};

use crate::dcs::{ClusterView, Dcs, MemberRole, PgState, RequestKind, SwitchoverRequest};
use crate::{now_ms, FailoverError, Result};

/// Validates and records a switchover (`RequestKind::Switchover`: the leader hands over, only to
/// a healthy streaming replica within the lag bound) or a manual failover (to any running node,
/// lag ignored, also when there is no leader).
pub async fn request(
    dcs: &dyn Dcs,
    config: &PghaConfig,
    kind: RequestKind,
    to: &str,
    at_ms: Option<u64>,
) -> Result<SwitchoverRequest> {
    let action = match kind {
        RequestKind::Switchover => "switchover",
        RequestKind::Failover => "failover",
    };
    let view = dcs.view().await?;
    let effective = crate::settings::effective(config, &view);
    let config = &effective;
    if config.node(to).is_none() {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(FailoverError::refused(
            action,
            format!(
                "`{to}` is not a node of this cluster (nodes: {})",
                names.join(", ")
            ),
        ));
    }
    let leader = view.leader.as_ref().map(|l| l.name.clone());
    if leader.as_deref() == Some(to) {
        return Err(FailoverError::refused(
            action,
            format!("{to} is already the leader"),
        ));
    }
    let Some(m) = view.members.get(to) else {
        return Err(FailoverError::refused(
            action,
            format!("{to} has no running agent (no member key)"),
        ));
    };
    if m.pg_state != PgState::Running {
        return Err(FailoverError::refused(
            action,
            format!("{to}'s PostgreSQL is not running"),
        ));
    }
    // A node that must not lead: its own agent's word (the member key) or this config's.
    let node = config.node(to).map(|n| (n.nofailover, n.failover_rank()));
    if m.nofailover || node.is_some_and(|(nofailover, _)| nofailover) {
        return Err(FailoverError::refused(
            action,
            format!("{to} is tagged nofailover: it never leads"),
        ));
    }
    if m.failover_rank() == 0 || node.is_some_and(|(_, rank)| rank == 0) {
        return Err(FailoverError::refused(
            action,
            format!("{to} has failover_priority 0: it never leads"),
        ));
    }
    if kind == RequestKind::Switchover {
        if leader.is_none() {
            return Err(FailoverError::refused(
                action,
                "there is no leader to hand over; use `pgha failover --to NODE`",
            ));
        }
        if m.role != MemberRole::Replica {
            return Err(FailoverError::refused(
                action,
                format!("{to} is not a replica"),
            ));
        }
        if let (Some(st), Some(lsn)) = (&view.status, m.lsn) {
            let lag = st.lsn.bytes_since(lsn);
            let max = config.failover.maximum_lag_on_failover.bytes();
            if lag > max {
                return Err(FailoverError::refused(
                    action,
                    format!("{to} is {lag} bytes behind the leader (maximum_lag_on_failover is {max} bytes)"),
                ));
            }
        }
        if !m.streaming {
            return Err(FailoverError::refused(
                action,
                format!("{to} is not streaming from the leader"),
            ));
        }
        // The `sync` key restricts in either mode (the election's rule): it exists while a
        // commit may have been acknowledged on its standbys only.
        if let Some(sync) = &view.sync {
            if !sync.standbys.iter().any(|s| s == to) {
                return Err(FailoverError::refused(
                    action,
                    format!(
                        "sync mode: {to} is not a synchronous standby (sync: [{}])",
                        sync.standbys.join(", ")
                    ),
                ));
            }
        }
    }
    if view.config.paused {
        return Err(FailoverError::refused(
            action,
            "the cluster is paused; `pgha resume` first",
        ));
    }
    if config.standby_cluster.is_some() && !view.config.standby_promoted {
        return Err(FailoverError::refused(
            action,
            "a standby cluster's leader follows the other site and hands nothing over; `pgha promote-cluster` first",
        ));
    }
    let req = SwitchoverRequest {
        kind,
        from: leader,
        to: to.into(),
        at_ms,
        requested_ms: now_ms(),
    };
    dcs.put_switchover(&req).await?;
    Ok(req)
}

/// The switchover target when none is named (Patroni's `switchover` without a candidate):
/// the most advanced running, streaming replica that may be promoted, within
/// `maximum_lag_on_failover`, and a synchronous standby in sync mode.
pub fn pick_candidate(config: &PghaConfig, view: &ClusterView) -> Option<String> {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let max = crate::settings::effective(config, view)
        .failover
        .maximum_lag_on_failover
        .bytes();
    view.members
        .values()
        .filter(|m| Some(m.name.as_str()) != leader)
        .filter(|m| {
            m.pg_state == PgState::Running
                && m.role == MemberRole::Replica
                && m.streaming
                && m.failover_rank() > 0
                && config.node(&m.name).is_none_or(|n| n.failover_rank() > 0)
        })
        .filter(|m| match (&view.status, m.lsn) {
            (Some(st), Some(lsn)) => st.lsn.bytes_since(lsn) <= max,
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter(|m| {
            view.sync
                .as_ref()
                .is_none_or(|s| s.standbys.iter().any(|n| n == &m.name))
        })
        // The furthest, then the higher failover_priority among equally advanced ones.
        .max_by_key(|m| (m.lsn, m.failover_rank()))
        .map(|m| m.name.clone())
}

/// Refuses to run a second agent for `node`: a member key of that name that another agent
/// renews while we watch it (two loops and a bit) belongs to a live agent. A key left by a
/// previous run of ours stands still until its lease expires, and does not stop us.
pub async fn ensure_sole_agent(dcs: &dyn Dcs, config: &PghaConfig, node: &str) -> Result<()> {
    let first = dcs.view().await?;
    let Some(before) = first.members.get(node) else {
        return Ok(());
    };
    // Its period, as it publishes it (the DCS settings may make it longer than ours).
    let period = before
        .loop_wait_ms
        .map(std::time::Duration::from_millis)
        .map_or(config.failover.loop_wait, |p| {
            p.max(config.failover.loop_wait)
        });
    tokio::time::sleep(period * 2 + std::time::Duration::from_millis(300)).await;
    let again = dcs.view().await?;
    match again.members.get(node) {
        Some(now) if now.updated_ms != before.updated_ms => Err(FailoverError::refused(
            "agent start",
            format!(
                "another agent already runs node `{node}`: its member key is renewed every loop \
                 (agent API {}, PostgreSQL {}); stop it first, or give this node another name",
                now.api_address.as_deref().unwrap_or("none"),
                now.pg_address
            ),
        )),
        _ => Ok(()),
    }
}

/// Removes a scheduled switchover (one with a time): true when there was one.
pub async fn cancel_switchover(dcs: &dyn Dcs) -> Result<bool> {
    let view = dcs.view().await?;
    match view.switchover {
        Some(r) if r.at_ms.is_some() => {
            dcs.clear_switchover().await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Pause (no automatic failover) or resume.
pub async fn set_paused(dcs: &dyn Dcs, paused: bool) -> Result<()> {
    update_config(dcs, "pause", |c| {
        c.paused = paused;
        Ok(())
    })
    .await
}

/// Read-modify-write of the `config` key with compare-and-swap, so concurrent operators
/// (pause and promote-cluster) never overwrite each other's switch.
async fn update_config(
    dcs: &dyn Dcs,
    action: &'static str,
    change: impl Fn(&mut crate::dcs::DynamicConfig) -> Result<()>,
) -> Result<()> {
    for _ in 0..10 {
        let view = dcs.view().await?;
        let mut config = view.config;
        change(&mut config)?;
        if dcs.put_config(&config, view.config_revision).await? {
            return Ok(());
        }
    }
    Err(FailoverError::refused(
        action,
        "the DCS config key kept changing under us; retry",
    ))
}

/// `pgha promote-cluster`: this standby cluster becomes the primary site. Its standby leader
/// promotes at its next loop. Refused while a node of the primary site (`primary_hosts`)
/// answers as writable, unless `force`: two writable sites would fork the data.
pub async fn promote_cluster(dcs: &dyn Dcs, config: &PghaConfig, force: bool) -> Result<()> {
    let action = "promote-cluster";
    let Some(source) = &config.standby_cluster else {
        return Err(FailoverError::refused(
            action,
            format!(
                "cluster {} has no [standby_cluster] section: it is a primary site already",
                config.cluster.name
            ),
        ));
    };
    let view = dcs.view().await?;
    if view.config.standby_promoted {
        return Err(FailoverError::refused(
            action,
            "already promoted: this site is the primary site (remove [standby_cluster] from pgha.toml)",
        ));
    }
    if view.config.paused {
        return Err(FailoverError::refused(
            action,
            "the cluster is paused; `pgha resume` first",
        ));
    }
    if view.leader.is_none() {
        return Err(FailoverError::refused(
            action,
            "no standby leader holds the lease: nothing to promote",
        ));
    }
    if !force {
        if let Some((w, _)) = primary_site_position(config, source).await {
            return Err(FailoverError::refused(
                action,
                format!(
                    "{w} of the primary site still takes writes: fence that site first (docs/RUNBOOK.md, site disaster), or --force"
                ),
            ));
        }
    }
    update_config(dcs, action, |c| {
        if c.standby_promoted {
            return Err(FailoverError::refused(action, "already promoted"));
        }
        c.standby_promoted = true;
        Ok(())
    })
    .await
}

/// The primary site's writable node (`standby_cluster.primary_hosts`, reached with this
/// config's superuser) and its current WAL position; None when none answers as writable.
/// Short timeouts: a lost site must not make the operator wait.
pub async fn primary_site_position(
    config: &PghaConfig,
    source: &StandbyClusterSection,
) -> Option<(String, pgha_postgres::Lsn)> {
    let template = config.nodes.first()?;
    for (host, port) in source.hosts_and_ports().unwrap_or_default() {
        let mut node = template.clone();
        node.host = host.clone();
        node.port = port;
        let Ok(mut params) = pgha_postgres::connect_params(config, &node) else {
            continue;
        };
        params.connect_timeout = std::time::Duration::from_secs(2);
        let Ok(mut c) = params.connect().await else {
            continue;
        };
        let row: std::result::Result<(bool, pgha_postgres::Lsn), _> =
            sqlx::query_as("SELECT pg_is_in_recovery(), pg_current_wal_lsn()")
                .fetch_one(&mut c)
                .await;
        if let Ok((false, lsn)) = row {
            return Some((format!("{host}:{port}"), lsn));
        }
    }
    None
}

/// `pgha demote-cluster`: a site that `promote-cluster` made the primary one becomes a standby
/// cluster again (of the site its `[standby_cluster]` names). Refused while any of its nodes
/// takes writes: stop its agents and move its data dirs aside first; the standby leader then
/// copies the other site afresh.
pub async fn demote_cluster(dcs: &dyn Dcs, config: &PghaConfig, force: bool) -> Result<()> {
    let action = "demote-cluster";
    if config.standby_cluster.is_none() {
        return Err(FailoverError::refused(
            action,
            "add a [standby_cluster] section naming the site to follow first",
        ));
    }
    let view = dcs.view().await?;
    if !view.config.standby_promoted {
        return Err(FailoverError::refused(
            action,
            "this site is not promoted: it is a standby cluster already",
        ));
    }
    for node in &config.nodes {
        let checked = async {
            let mut params = pgha_postgres::connect_params(config, node)?;
            params.connect_timeout = std::time::Duration::from_secs(1);
            let mut c = params.connect().await?;
            let writable: bool = sqlx::query_scalar("SELECT NOT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await
                .map_err(|source| pgha_postgres::PgError::Query {
                    target: node.name.clone(),
                    source,
                })?;
            Ok::<_, FailoverError>(writable)
        }
        .await;
        match checked {
            Ok(true) => {
                return Err(FailoverError::refused(
                    action,
                    format!(
                    "{} takes writes: stop this site's agents and move its data dirs aside first",
                    node.name
                ),
                ))
            }
            Ok(false) => {}
            // A stopped node refuses connections: that is the expected state here.
            Err(FailoverError::Postgres(pgha_postgres::PgError::Connect { .. })) => {}
            Err(e) if !force => {
                return Err(FailoverError::refused(
                    action,
                    format!("could not check {}: {e} (--force to go on)", node.name),
                ))
            }
            Err(_) => {}
        }
    }
    update_config(dcs, action, |c| {
        c.standby_promoted = false;
        Ok(())
    })
    .await
}

/// Rows of `pgha list`: one per configured node, with what its agent published.
pub fn list_rows(config: &PghaConfig, view: &ClusterView) -> Vec<[String; 9]> {
    let leader = view.leader.as_ref().map(|l| l.name.as_str());
    let leader_lsn = view.status.as_ref().map(|s| s.lsn);
    let mut rows = vec![[
        "MEMBER",
        "HOST",
        "ROLE",
        "STATE",
        "TL",
        "LSN",
        "LAG",
        "TAGS",
        "PENDING RESTART",
    ]
    .map(String::from)];
    for n in &config.nodes {
        let m = view.members.get(&n.name);
        let role = match (leader == Some(n.name.as_str()), m.map(|m| m.role)) {
            (true, Some(MemberRole::Replica))
                if config.standby_cluster.is_some() && !view.config.standby_promoted =>
            {
                "Standby Leader".to_string()
            }
            (true, _) => "Leader".to_string(),
            (false, Some(MemberRole::Replica)) => {
                match view.sync.as_ref().filter(|s| s.standbys.contains(&n.name)) {
                    Some(s) if s.quorum.is_some() => "Quorum Standby".into(),
                    Some(_) => "Sync Standby".into(),
                    None => "Replica".into(),
                }
            }
            (false, Some(MemberRole::Primary)) => "Primary (no lease)".into(),
            (false, Some(MemberRole::Uninitialized)) => "Uninitialized".into(),
            (false, None) => "-".into(),
        };
        let state = match m {
            None => "no agent".into(),
            Some(m) if m.pg_state == PgState::Stopped => "stopped".into(),
            Some(m) if m.role == MemberRole::Replica => {
                if m.streaming {
                    "streaming".into()
                } else if m.tags.get("nostream").is_some_and(|v| v == "true") {
                    // Patroni's state for a replica without a WAL receiver.
                    "in archive recovery".into()
                } else {
                    "running (not streaming)".into()
                }
            }
            Some(_) => "running".into(),
        };
        let lag = match (m, leader_lsn, leader == Some(n.name.as_str())) {
            (Some(m), Some(l), false) => m
                .lsn
                .map(|x| l.bytes_since(x).to_string())
                .unwrap_or_else(|| "?".into()),
            _ => "-".into(),
        };
        rows.push([
            n.name.clone(),
            n.address(),
            role,
            state,
            m.and_then(|m| m.timeline)
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            m.and_then(|m| m.lsn)
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            lag,
            if n.nofailover {
                "nofailover".into()
            } else {
                String::new()
            },
            m.map(|m| m.pending_restart.join(",")).unwrap_or_default(),
        ]);
    }
    rows
}
