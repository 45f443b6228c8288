//! The health checks, as pure functions of what the agent last saw: the same answers Patroni
//! gives for the same state, so HAProxy and Kubernetes probes written for Patroni work as-is.
//!
//! One stricter rule than Patroni: a snapshot older than the lease TTL (the agent loop is
//! stuck) claims no lead, so `/primary` and `/leader` answer 503 from an agent whose lease may
//! already have passed to another node.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use pgha_config::{ByteSize, PghaConfig};
use tokio::time::Instant;

use crate::agent::Snapshot;
use crate::dcs::{MemberRole, PgState};

/// Every path [`answer`] knows (`/` is `/primary`).
pub const PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/leader",
    "/standby-leader",
    "/standby_leader",
    "/replica",
    "/read-only",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
    "/read-only-sync",
    "/read-only-synchronous",
    "/quorum",
    "/read-only-quorum",
    "/health",
    "/liveness",
    "/readiness",
];

/// What the checks depend on, taken from one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub running: bool,
    /// The role PostgreSQL reports (`pg_is_in_recovery()` in the last tick).
    pub pg_role: Option<MemberRole>,
    /// Holds the leader key on a live session, as of a snapshot younger than the TTL.
    pub holds_lease: bool,
    /// This site follows another one (`[standby_cluster]`, not promoted).
    pub standby_cluster: bool,
    /// The last DCS round-trip succeeded.
    pub dcs_known: bool,
    pub paused: bool,
    pub streaming: bool,
    /// Patroni's `replication_state`: `streaming` or `in archive recovery`.
    pub replication_state: Option<&'static str>,
    /// The leader's last published WAL position.
    pub leader_lsn: Option<u64>,
    pub received_lsn: Option<u64>,
    pub replayed_lsn: Option<u64>,
    /// Named in the DCS `sync` key as a synchronous standby (sync mode).
    pub sync_standby: bool,
    pub quorum_standby: bool,
    pub noloadbalance: bool,
    /// Tags as `?tag_KEY=VALUE` matches them (`nofailover`/`noloadbalance` as `true`).
    pub tags: BTreeMap<String, String>,
    /// Age of the snapshot (None: the loop never published).
    pub loop_age: Option<Duration>,
    pub ttl: Duration,
    pub maximum_lag_on_failover: u64,
}

impl Facts {
    pub fn from_snapshot(snap: &Snapshot, cfg: &PghaConfig, now: Instant) -> Facts {
        let ttl = cfg.failover.ttl;
        let loop_age = snap.at.map(|at| now.saturating_duration_since(at));
        let fresh = loop_age.is_some_and(|a| a < ttl);
        let m = snap.member.as_ref();
        let view = snap.view.as_ref();
        let standby_cluster =
            cfg.standby_cluster.is_some() && !view.is_some_and(|v| v.config.standby_promoted);
        let running = m.is_some_and(|m| m.pg_state == PgState::Running);
        let streaming = m.is_some_and(|m| m.streaming);
        let pg_role = m.map(|m| m.role);
        let replication_state = match (running, pg_role, streaming) {
            (true, Some(MemberRole::Replica), true) => Some("streaming"),
            (true, Some(MemberRole::Replica), false)
                if cfg.backup.is_some() || cfg.replication.restore_command.is_some() =>
            {
                Some("in archive recovery")
            }
            _ => None,
        };
        // Named in `/sync`: what the election follows, in either mode; a quorum `sync`
        // (quorum commit) names quorum standbys, Patroni's `/quorum`.
        let named = view
            .and_then(|v| v.sync.as_ref())
            .filter(|s| s.standbys.iter().any(|n| n == &snap.name));
        let sync_standby = named.is_some_and(|s| s.quorum.is_none());
        let quorum_standby = named.is_some_and(|s| s.quorum.is_some());
        let node = cfg.node(&snap.name);
        let mut tags = node.map(|n| n.tags.clone()).unwrap_or_default();
        if node.is_some_and(|n| n.nofailover) {
            tags.insert("nofailover".into(), "true".into());
        }
        if node.is_some_and(|n| n.noloadbalance) {
            tags.insert("noloadbalance".into(), "true".into());
        }
        if node.is_some_and(|n| n.nosync) {
            tags.insert("nosync".into(), "true".into());
        }
        if node.is_some_and(|n| n.nostream) {
            tags.insert("nostream".into(), "true".into());
        }
        for (k, v) in [
            ("failover_priority", node.and_then(|n| n.failover_priority)),
            ("sync_priority", node.and_then(|n| n.sync_priority)),
        ] {
            if let Some(v) = v {
                tags.insert(k.into(), v.to_string());
            }
        }
        Facts {
            running,
            pg_role,
            holds_lease: snap.is_leader && fresh,
            standby_cluster,
            dcs_known: snap.dcs_reachable,
            paused: snap.paused,
            streaming,
            replication_state,
            leader_lsn: view.and_then(|v| v.status.as_ref()).map(|s| s.lsn.0),
            received_lsn: m.and_then(|m| m.lsn).map(|l| l.0),
            replayed_lsn: m.and_then(|m| m.replay_lsn.or(m.lsn)).map(|l| l.0),
            sync_standby,
            quorum_standby,
            noloadbalance: node.is_some_and(|n| n.noloadbalance),
            tags,
            loop_age,
            ttl,
            maximum_lag_on_failover: cfg.failover.maximum_lag_on_failover.bytes(),
        }
    }

    fn is(&self, role: MemberRole) -> bool {
        self.running && self.pg_role == Some(role)
    }
}

/// A query parameter that cannot be honoured (answered 400, naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

fn lag_param(q: &HashMap<String, String>) -> Result<Option<u64>, BadQuery> {
    match q.get("lag").map(|l| l.parse::<ByteSize>()) {
        Some(Ok(b)) => Ok(Some(b.bytes())),
        Some(Err(e)) => Err(BadQuery(format!("lag: {e}"))),
        None => Ok(None),
    }
}

/// The answer to a health check on `path` (one of [`PATHS`]): true for 200, false for 503.
/// None: not a health path.
pub fn answer(
    path: &str,
    q: &HashMap<String, String>,
    f: &Facts,
) -> Option<Result<bool, BadQuery>> {
    if !PATHS.contains(&path) {
        return None;
    }
    Some(evaluate(path, q, f))
}

fn evaluate(path: &str, q: &HashMap<String, String>, f: &Facts) -> Result<bool, BadQuery> {
    let path = if path == "/" { "/primary" } else { path };
    match path {
        "/liveness" => return Ok(liveness(f)),
        "/readiness" => return readiness(q, f),
        _ => {}
    }
    let max_lag = lag_param(q)?;
    let replayed = f.replayed_lsn.unwrap_or(0);
    let lagging = match (f.leader_lsn, max_lag) {
        (Some(leader), Some(max)) => leader > replayed.saturating_add(max),
        _ => false,
    };
    let state_ok = q
        .get("replication_state")
        .is_none_or(|want| f.replication_state == Some(want.as_str()));
    let mut replica =
        !f.noloadbalance && !lagging && f.is(MemberRole::Replica) && state_ok && !f.holds_lease;
    let (leader, primary, standby_leader);
    if !f.dcs_known && f.paused {
        // Paused with the DCS out of reach: nothing moves, so PostgreSQL's role is the answer.
        primary = f.is(MemberRole::Primary);
        leader = primary;
        standby_leader = false;
    } else if f.holds_lease {
        leader = f.running;
        if f.standby_cluster {
            primary = false;
            replica = false;
            standby_leader = f.is(MemberRole::Replica);
        } else {
            primary = f.is(MemberRole::Primary);
            standby_leader = false;
        }
    } else {
        (leader, primary, standby_leader) = (false, false, false);
    }
    let (ok, tags_apply) = match path {
        "/standby-leader" | "/standby_leader" => (standby_leader, false),
        "/leader" => (leader, false),
        "/primary" | "/master" | "/read-write" => (primary, false),
        "/replica" => (replica, true),
        "/read-only" => (primary || standby_leader || replica, true),
        "/health" => (f.running, true),
        _ if !f.dcs_known => (false, true),
        "/sync" | "/synchronous" => (f.sync_standby && replica, true),
        "/quorum" => (f.quorum_standby && replica, true),
        "/async" | "/asynchronous" => (!f.sync_standby && !f.quorum_standby && replica, true),
        "/read-only-sync" | "/read-only-synchronous" => (
            primary || standby_leader || (f.sync_standby && replica),
            true,
        ),
        "/read-only-quorum" => (
            primary || standby_leader || (f.quorum_standby && replica),
            true,
        ),
        _ => (false, true),
    };
    Ok(ok && (!tags_apply || tags_match(q, f)))
}

/// Every `?tag_KEY=VALUE` names a tag this node has, with that value.
fn tags_match(q: &HashMap<String, String>, f: &Facts) -> bool {
    q.iter()
        .filter_map(|(k, v)| k.strip_prefix("tag_").map(|k| (k, v)))
        .all(|(k, v)| f.tags.get(k) == Some(v))
}

/// The agent loop ran within one TTL (a primary) or two (a replica); always while paused.
fn liveness(f: &Facts) -> bool {
    let limit = if f.is(MemberRole::Primary) {
        f.ttl
    } else {
        f.ttl * 2
    };
    f.paused || f.loop_age.is_some_and(|a| a < limit)
}

/// The leader; or a streaming replica (a `nostream` one: in archive recovery) within `?lag=`
/// (default `maximum_lag_on_failover`) of the leader, measured on replayed WAL
/// (`?mode=apply`, the default) or received (`write`).
fn readiness(q: &HashMap<String, String>, f: &Facts) -> Result<bool, BadQuery> {
    if f.holds_lease {
        return Ok(true);
    }
    // A `nostream` replica is ready replaying from the archive (it never streams).
    let nostream = f.tags.get("nostream").is_some_and(|v| v == "true");
    let replicating = match f.replication_state {
        Some("streaming") => true,
        Some("in archive recovery") => nostream,
        _ => false,
    };
    if !f.running || !replicating {
        return Ok(false);
    }
    let Some(leader) = f.leader_lsn.filter(|_| f.dcs_known) else {
        return Ok(false);
    };
    let mine = match q.get("mode").map(String::as_str) {
        Some("write") => f.received_lsn,
        Some("apply") | None => f.replayed_lsn,
        Some(other) => {
            return Err(BadQuery(format!(
                "mode: `{other}`: expected `apply` or `write`"
            )))
        }
    };
    let max = lag_param(q)?.unwrap_or(f.maximum_lag_on_failover);
    Ok(leader.saturating_sub(mine.unwrap_or(0)) <= max)
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
