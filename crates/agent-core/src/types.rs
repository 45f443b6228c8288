//! Values stored in the DCS (JSON).

use std::collections::BTreeMap;

use pgha_postgres::Lsn;
use serde::{Deserialize, Serialize};

/// Whether the member's PostgreSQL runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgState {
    Running,
    Stopped,
}

/// The member's role as its PostgreSQL reports it (or its data dir says, when stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Primary,
    Replica,
    Uninitialized,
}

/// One agent's published state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    pub name: String,
    /// PostgreSQL `host:port`.
    pub pg_address: String,
    /// Agent API `host:port`.
    pub api_address: Option<String>,
    pub pg_state: PgState,
    pub role: MemberRole,
    pub timeline: Option<i64>,
    /// Primary: current WAL position. Replica: last received (else replayed) position.
    pub lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Replica: its WAL receiver streams.
    pub streaming: bool,
    /// Replica: the `host:port` it streams from.
    pub upstream: Option<String>,
    pub nofailover: bool,
    pub updated_ms: u64,
    /// Primary: the timeline of its last checkpoint (`pg_control_checkpoint()`). Equal to
    /// `timeline` once the checkpoint after a promotion is done: before that, pg_rewind from
    /// this node would read the old timeline from its control file.
    #[serde(default)]
    pub checkpoint_timeline: Option<i64>,
    /// Follower: the leader lease whose PostgreSQL and agent ports refuse our connections
    /// (the fast dead-leader path wants a second observer's word).
    #[serde(default)]
    pub suspects: Option<i64>,
    /// Kept out of read load balancing (`nodes[].noloadbalance`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noloadbalance: bool,
    /// `nodes[].tags`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Settings PostgreSQL read from its files but applies only after a restart
    /// (`pg_settings.pending_restart`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// The agent's loop period in ms (its key is republished at least this often): peers
    /// judge a stale key by it, not by their own, while a changed `loop_wait` spreads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_wait_ms: Option<u64>,
    /// `nodes[].failover_priority` when it is not the default 1 (0 with `nofailover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_priority: Option<u32>,
}

impl MemberState {
    /// The election priority it published: 0 never leads, higher wins among equally advanced
    /// candidates.
    pub fn failover_rank(&self) -> u32 {
        if self.nofailover {
            0
        } else {
            self.failover_priority.unwrap_or(1)
        }
    }
}

/// Who holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub name: String,
    /// The holder's lease id (revoked by the fast dead-leader path).
    pub lease: i64,
    /// mod_revision of the key, for compare-and-swap.
    pub revision: i64,
}

/// The leader's last published position, kept after it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    pub leader: String,
    pub lsn: Lsn,
    pub timeline: i64,
    pub updated_ms: u64,
    /// The leader's failsafe topology (Patroni's `/failsafe` key): every node its failsafe
    /// round asks, with the URL of its `/patroni`, itself included. With failsafe on, a
    /// node not in it may not be elected: the leader never asked it, so it could take the
    /// lease while the leader serves on its peers' confirmations. None: an older agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<BTreeMap<String, String>>,
    /// The leader's permanent slots: `confirmed_flush_lsn` of each of
    /// `replication.logical_slots`, `restart_lsn` of each of `replication.permanent_slots`
    /// (the names never overlap). A replica advances its copy up to it (never past it, nor
    /// past what it replayed). A logical copy ahead of it is not this slot's (a former
    /// primary's own, from before a failover).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, Lsn>,
}

/// Cluster-wide switches set by operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicConfig {
    /// No automatic action (no promotion, no fencing, no restarts) while set.
    pub paused: bool,
    /// Set by `pgha promote-cluster`: this standby cluster (`[standby_cluster]`) is now the
    /// primary site; its leader promotes and it no longer follows the other site.
    pub standby_promoted: bool,
    /// The cluster-wide settings (Patroni's dynamic configuration, in its shape:
    /// `pgha_config::dynamic`), kept raw so a document this version does not understand
    /// never makes the view unreadable. None until the first leader seeds it from pgha.toml.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
}

/// Planned switchover (the leader hands over) or manual failover (to a chosen node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Switchover,
    Failover,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    pub kind: RequestKind,
    /// The leader when requested (None for a failover with no leader).
    pub from: Option<String>,
    pub to: String,
    /// Not before this time (ms since epoch).
    pub at_ms: Option<u64>,
    pub requested_ms: u64,
}

/// The standbys a failover may promote in sync mode (besides the leader itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub leader: String,
    pub standbys: Vec<String>,
    /// Quorum commit (Patroni's `quorum`): any this many of `standbys` include one that holds
    /// every acknowledged commit, so a candidate must see that many (itself included, their
    /// positions read live) and be at least as far as each. None: each of `standbys` holds
    /// every acknowledged commit (`FIRST n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncState {
    /// How many of `standbys` hold every acknowledged commit, at least (pigeonhole: any
    /// `quorum` of them include one of those).
    pub fn holders(&self) -> usize {
        match self.quorum {
            None => self.standbys.len(),
            Some(q) => (self.standbys.len() + 1).saturating_sub(q as usize),
        }
    }
}

/// One promotion, kept in the DCS `history` key (Patroni's `/history`): the timeline that
/// ended, where, why, when, and who leads the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline the promotion ended (the parent of `new_timeline`).
    pub timeline: Option<i64>,
    pub new_timeline: i64,
    /// The last WAL position the promoted node had replayed when it decided to promote.
    pub lsn: Option<Lsn>,
    pub reason: String,
    pub at_ms: u64,
    pub leader: String,
}

/// Why this node promotes: the request naming it, else the lost leader.
pub fn promotion_reason(view: &ClusterView, me: &str) -> String {
    let old = view
        .status
        .as_ref()
        .map(|s| s.leader.clone())
        .filter(|l| l != me);
    match (view.switchover.as_ref().filter(|r| r.to == me), old) {
        (Some(r), _) if r.kind == RequestKind::Switchover => format!(
            "switchover from {}",
            r.from.as_deref().unwrap_or("no leader")
        ),
        (Some(r), _) => format!(
            "manual failover from {}",
            r.from.as_deref().unwrap_or("no leader")
        ),
        (None, Some(old)) => format!("automatic failover: the lease of {old} ended"),
        (None, None) => "promoted: no previous leader known".into(),
    }
}

/// The `initialize` key: who bootstraps (bootstrapped) the cluster. While the bootstrap runs
/// it sits on the bootstrapping agent's session lease (it goes if that agent dies); once the
/// first primary leads it stays for good (`done`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initialize {
    pub by: String,
    #[serde(default)]
    pub done: bool,
    /// The lease the key sits on (filled in by the reader; 0 or None: none).
    #[serde(skip)]
    pub lease: Option<i64>,
}

/// At most this many entries are kept in the `history` key (the oldest are dropped).
pub const MAX_HISTORY: usize = 200;

/// Everything the agents read each loop.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub leader: Option<LeaderInfo>,
    pub members: BTreeMap<String, MemberState>,
    pub status: Option<LeaderStatus>,
    pub config: DynamicConfig,
    /// mod_revision of the `config` key (0: absent), for compare-and-swap updates.
    #[serde(default)]
    pub config_revision: i64,
    pub switchover: Option<SwitchoverRequest>,
    pub sync: Option<SyncState>,
    /// mod_revision of the `sync` key (0: absent): every `/sync` write is a compare-and-swap
    /// on it, so a write that timed out and lands late cannot undo a newer one.
    #[serde(default)]
    pub sync_revision: i64,
    /// Promotions, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Who bootstraps (bootstrapped) the cluster; None: nobody yet.
    #[serde(default)]
    pub initialize: Option<Initialize>,
}
