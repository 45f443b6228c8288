//! The documents the API serves, in Patroni's shapes where a Patroni client reads them:
//! `/patroni` (also the body of every health check's GET), `/cluster`, `/metrics`.

use std::sync::atomic::Ordering;

use serde_json::{json, Map, Value};

use super::health::Facts;
use super::ApiState;
use crate::agent::Snapshot;
use crate::dcs::{ClusterView, MemberRole, MemberState, PgState};

/// The Patroni REST API level these documents follow (`patroni.version`: clients such as
/// patronictl gate features on it); pgha's own version is under `pgha.version`.
pub const PATRONI_API_VERSION: &str = "4.0.0";

fn role_name(f: &Facts) -> &'static str {
    match f.pg_role {
        Some(MemberRole::Primary) => "primary",
        Some(MemberRole::Replica) if f.holds_lease && f.standby_cluster => "standby_leader",
        Some(MemberRole::Replica) => "replica",
        Some(MemberRole::Uninitialized) | None => "uninitialized",
    }
}

/// One tag as Patroni writes it: pgha's typed tags as booleans and numbers, free-form tags
/// as strings.
fn tag_value(k: &str, v: &str) -> Value {
    match (k, v) {
        ("nofailover" | "noloadbalance" | "nosync" | "nostream", "true") => Value::Bool(true),
        ("failover_priority" | "sync_priority", n) => n
            .parse::<u32>()
            .map_or_else(|_| Value::String(n.into()), Value::from),
        _ => Value::String(v.into()),
    }
}

fn tags_json(f: &Facts) -> Value {
    Value::Object(
        f.tags
            .iter()
            .map(|(k, v)| (k.clone(), tag_value(k, v)))
            .collect(),
    )
}

/// The node's status, as Patroni's `GET /patroni`.
pub fn patroni(s: &ApiState, snap: &Snapshot, f: &Facts) -> Value {
    let m = snap.member.as_ref();
    let mut doc = Map::new();
    doc.insert(
        "state".into(),
        json!(if f.running { "running" } else { "stopped" }),
    );
    doc.insert("role".into(), json!(role_name(f)));
    if let Some(tl) = m.and_then(|m| m.timeline) {
        doc.insert("timeline".into(), json!(tl));
    }
    match f.pg_role {
        Some(MemberRole::Primary) if f.running => {
            doc.insert(
                "xlog".into(),
                json!({ "location": m.and_then(|m| m.lsn).map_or(0, |l| l.0) }),
            );
        }
        Some(MemberRole::Replica) if f.running => {
            doc.insert(
                "xlog".into(),
                json!({
                    "received_location": f.received_lsn.unwrap_or(0),
                    "replayed_location": f.replayed_lsn.unwrap_or(0),
                    "replayed_timestamp": Value::Null,
                    "paused": false,
                }),
            );
        }
        _ => {}
    }
    if let Some(rs) = f.replication_state {
        doc.insert("replication_state".into(), json!(rs));
    }
    if f.sync_standby {
        doc.insert("sync_standby".into(), json!(true));
    }
    if f.quorum_standby {
        doc.insert("quorum_standby".into(), json!(true));
    }
    if !snap.unknown_slots.is_empty() {
        // pgha's own field: slots it neither manages nor ignores (they keep WAL).
        doc.insert("unknown_slots".into(), json!(snap.unknown_slots));
    }
    if f.paused {
        doc.insert("pause".into(), json!(true));
    }
    if snap.view.as_ref().is_none_or(|v| v.leader.is_none()) {
        doc.insert("cluster_unlocked".into(), json!(true));
    }
    if let Some(ms) = snap.dcs_last_seen_ms {
        doc.insert("dcs_last_seen".into(), json!(ms / 1000));
    }
    if !f.tags.is_empty() {
        doc.insert("tags".into(), tags_json(f));
    }
    pending_restart(&mut doc, snap.member.as_ref());
    if let Some(ms) = snap.scheduled_restart_ms {
        // Patroni's field for a `POST /restart` with `schedule`.
        doc.insert(
            "scheduled_restart".into(),
            json!({ "schedule": super::actions::iso8601(ms) }),
        );
    }
    doc.insert(
        "patroni".into(),
        json!({
            "version": PATRONI_API_VERSION,
            "scope": s.config.cluster.name,
            "name": snap.name,
        }),
    );
    doc.insert(
        "pgha".into(),
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "is_leader": snap.is_leader,
            "dcs_reachable": snap.dcs_reachable,
            "agent_role": snap.role,
            "reason": snap.reason,
            "member": snap.member,
            "reload_error": snap.reload_error,
        }),
    );
    Value::Object(doc)
}

fn api_url(s: &ApiState, m: &MemberState) -> Option<String> {
    let scheme = if s.config.tls.as_ref().is_some_and(|t| t.agent_api) {
        "https"
    } else {
        "http"
    };
    m.api_address
        .as_ref()
        .map(|a| format!("{scheme}://{a}/patroni"))
}

/// One member as Patroni's `cluster_as_json` shows it.
fn member_json(s: &ApiState, view: &ClusterView, m: &MemberState) -> Value {
    let leads = view.leader.as_ref().is_some_and(|l| l.name == m.name);
    let standby_site = s.config.standby_cluster.is_some() && !view.config.standby_promoted;
    // Named in `/sync`: what the election follows, in either mode.
    let named = view
        .sync
        .as_ref()
        .filter(|y| y.standbys.iter().any(|n| n == &m.name));
    let role = match (leads, standby_site) {
        (true, true) => "standby_leader",
        (true, false) => "leader",
        (false, _) if named.is_some_and(|y| y.quorum.is_some()) => "quorum_standby",
        (false, _) if named.is_some() => "sync_standby",
        (false, _) => "replica",
    };
    let state = match (m.pg_state, m.role, m.streaming) {
        (PgState::Stopped, _, _) => "stopped",
        (PgState::Running, MemberRole::Replica, true) => "streaming",
        (PgState::Running, MemberRole::Replica, false) => "in archive recovery",
        (PgState::Running, _, _) => "running",
    };
    let (host, port) = match m.pg_address.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().ok()),
        None => (m.pg_address.clone(), None),
    };
    let mut doc = Map::new();
    doc.insert("name".into(), json!(m.name));
    doc.insert("role".into(), json!(role));
    doc.insert("state".into(), json!(state));
    if let Some(u) = api_url(s, m) {
        doc.insert("api_url".into(), json!(u));
    }
    doc.insert("host".into(), json!(host));
    if let Some(p) = port {
        doc.insert("port".into(), json!(p));
    }
    if let Some(tl) = m.timeline {
        doc.insert("timeline".into(), json!(tl));
    }
    if !leads {
        let lag = match (view.status.as_ref(), m.lsn) {
            (Some(st), Some(l)) if m.pg_state == PgState::Running => json!(st.lsn.bytes_since(l)),
            _ => json!("unknown"),
        };
        doc.insert("lag".into(), lag);
    }
    let mut tags: Map<String, Value> = m
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), tag_value(k, v)))
        .collect();
    if m.nofailover {
        tags.insert("nofailover".into(), json!(true));
    }
    if m.noloadbalance {
        tags.insert("noloadbalance".into(), json!(true));
    }
    if let Some(p) = m.failover_priority {
        tags.insert("failover_priority".into(), json!(p));
    }
    if !tags.is_empty() {
        doc.insert("tags".into(), Value::Object(tags));
    }
    pending_restart(&mut doc, Some(m));
    Value::Object(doc)
}

/// Patroni's `pending_restart: true` and `pending_restart_reason` (by setting; the old and
/// new values are not tracked, so each maps to an empty object).
fn pending_restart(doc: &mut Map<String, Value>, m: Option<&MemberState>) {
    let Some(m) = m.filter(|m| !m.pending_restart.is_empty()) else {
        return;
    };
    doc.insert("pending_restart".into(), json!(true));
    let reasons: Map<String, Value> = m
        .pending_restart
        .iter()
        .map(|p| (p.clone(), json!({})))
        .collect();
    doc.insert("pending_restart_reason".into(), Value::Object(reasons));
}

/// The cluster, as Patroni's `GET /cluster` (`members[]`, `scope`, `pause`,
/// `scheduled_switchover`), plus pgha's raw DCS view under `view`.
pub fn cluster(s: &ApiState, snap: &Snapshot) -> Value {
    let empty = ClusterView::default();
    let view = snap.view.as_ref().unwrap_or(&empty);
    let mut members: Vec<&MemberState> = view.members.values().collect();
    // The leader first, then by name (BTreeMap order), as patronictl lists them.
    members.sort_by_key(|m| view.leader.as_ref().is_none_or(|l| l.name != m.name));
    let mut doc = Map::new();
    doc.insert(
        "members".into(),
        Value::Array(members.iter().map(|m| member_json(s, view, m)).collect()),
    );
    doc.insert("scope".into(), json!(s.config.cluster.name));
    if view.config.paused {
        doc.insert("pause".into(), json!(true));
    }
    if let Some(r) = view.switchover.as_ref() {
        if let Some(at) = r.at_ms {
            doc.insert(
                "scheduled_switchover".into(),
                json!({ "at": super::actions::iso8601(at), "from": r.from, "to": r.to }),
            );
        }
    }
    doc.insert("reported_by".into(), json!(snap.name));
    doc.insert("dcs_reachable".into(), json!(snap.dcs_reachable));
    doc.insert("view".into(), json!(snap.view));
    Value::Object(doc)
}

/// Prometheus text: pgha's own metrics (`node` label) and Patroni's names (`scope`, `name`).
pub fn metrics(s: &ApiState, snap: &Snapshot, f: &Facts) -> String {
    let name = &snap.name;
    let b = |v: bool| u8::from(v).to_string();
    let mut out = String::new();
    let mut own = |n: &str, help: &str, kind: &str, v: String| {
        out.push_str(&format!(
            "# HELP {n} {help}\n# TYPE {n} {kind}\n{n}{{node=\"{name}\"}} {v}\n"
        ));
    };
    let m = snap.member.as_ref();
    own(
        "pgha_agent_is_leader",
        "1 when this node holds the leader lease.",
        "gauge",
        b(snap.is_leader),
    );
    own(
        "pgha_agent_dcs_reachable",
        "1 when the last DCS round-trip succeeded.",
        "gauge",
        b(snap.dcs_reachable),
    );
    own(
        "pgha_agent_paused",
        "1 while automatic failover is paused.",
        "gauge",
        b(snap.paused),
    );
    own(
        "pgha_postgres_running",
        "1 when the local PostgreSQL runs.",
        "gauge",
        b(f.running),
    );
    own(
        "pgha_replica_streaming",
        "1 when the local replica's WAL receiver streams.",
        "gauge",
        b(f.streaming),
    );
    own(
        "pgha_promotions_total",
        "Promotions done by this agent.",
        "counter",
        s.shared.promotions.load(Ordering::Relaxed).to_string(),
    );
    own(
        "pgha_fencings_total",
        "Times this agent stopped its PostgreSQL to fence it.",
        "counter",
        s.shared.fencings.load(Ordering::Relaxed).to_string(),
    );
    own(
        "pgha_unknown_replication_slots",
        "Slots on this node that are neither a node's, nor permanent, nor in replication.ignore_slots.",
        "gauge",
        snap.unknown_slots.len().to_string(),
    );
    let labels = format!("{{scope=\"{}\",name=\"{name}\"}}", s.config.cluster.name);
    let mut patroni = |n: &str, help: &str, kind: &str, v: String| {
        out.push_str(&format!(
            "# HELP {n} {help}\n# TYPE {n} {kind}\n{n}{labels} {v}\n"
        ));
    };
    let primary = f.running && f.pg_role == Some(MemberRole::Primary);
    let replica = f.running && f.pg_role == Some(MemberRole::Replica);
    let standby_leader = replica && f.holds_lease && f.standby_cluster;
    let version: String = PATRONI_API_VERSION
        .split('.')
        .map(|p| format!("{p:0>2}"))
        .collect();
    patroni(
        "patroni_version",
        "Patroni semver without periods (the API level pgha implements).",
        "gauge",
        version,
    );
    patroni(
        "patroni_postgres_running",
        "Value is 1 if Postgres is running, 0 otherwise.",
        "gauge",
        b(f.running),
    );
    patroni(
        "patroni_primary",
        "Value is 1 if this node is the leader, 0 otherwise.",
        "gauge",
        b(primary && f.holds_lease),
    );
    patroni(
        "patroni_xlog_location",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        "counter",
        if primary {
            m.and_then(|m| m.lsn).map_or(0, |l| l.0)
        } else {
            0
        }
        .to_string(),
    );
    patroni(
        "patroni_standby_leader",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        "gauge",
        b(standby_leader),
    );
    patroni(
        "patroni_replica",
        "Value is 1 if this node is a replica, 0 otherwise.",
        "gauge",
        b(replica && !standby_leader),
    );
    patroni(
        "patroni_sync_standby",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        "gauge",
        b(f.sync_standby),
    );
    patroni(
        "patroni_quorum_standby",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        "gauge",
        b(f.quorum_standby),
    );
    patroni("patroni_xlog_received_location", "Current location of the received Postgres transaction log, 0 if this node is not a replica.", "counter",
        if replica { f.received_lsn.unwrap_or(0) } else { 0 }.to_string());
    patroni("patroni_xlog_replayed_location", "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.", "counter",
        if replica { f.replayed_lsn.unwrap_or(0) } else { 0 }.to_string());
    patroni(
        "patroni_postgres_streaming",
        "Value is 1 if Postgres is streaming, 0 otherwise.",
        "gauge",
        b(f.replication_state == Some("streaming")),
    );
    patroni(
        "patroni_postgres_in_archive_recovery",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
        "gauge",
        b(f.replication_state == Some("in archive recovery")),
    );
    patroni(
        "patroni_cluster_unlocked",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        "gauge",
        b(snap.view.as_ref().is_none_or(|v| v.leader.is_none())),
    );
    patroni(
        "patroni_postgres_timeline",
        "Postgres timeline of this node (if running), 0 otherwise.",
        "counter",
        m.filter(|_| f.running)
            .and_then(|m| m.timeline)
            .unwrap_or(0)
            .to_string(),
    );
    patroni(
        "patroni_dcs_last_seen",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        "gauge",
        snap.dcs_last_seen_ms.map_or(0, |ms| ms / 1000).to_string(),
    );
    patroni(
        "patroni_is_paused",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        "gauge",
        b(f.paused),
    );
    out
}

/// Promotions as Patroni's `GET /history`: `[timeline, lsn, reason, timestamp, new leader]`
/// per line, oldest first.
pub fn history(snap: &Snapshot) -> Value {
    let lines = snap.view.as_ref().map_or(&[][..], |v| v.history.as_slice());
    Value::Array(
        lines
            .iter()
            .map(|h| {
                json!([
                    h.timeline.unwrap_or(h.new_timeline - 1),
                    h.lsn.map_or(0, |l| l.0),
                    h.reason,
                    super::actions::iso8601(h.at_ms),
                    h.leader
                ])
            })
            .collect(),
    )
}
