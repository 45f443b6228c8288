//! What one tick of the agent sees: the gather step's result, the only input of `decide`.

use std::collections::BTreeMap;

use pgha_postgres::Lsn;
use tokio::time::Instant;

use crate::action::Job;
use crate::dcs::{ClusterView, LeaseId, MemberRole, PgState};

/// Everything `decide` may look at in one tick.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub now: Instant,
    /// Wall clock (ms since the Unix epoch), only for `switchover --at` and published stamps.
    pub wall_ms: u64,
    pub local: Local,
    pub dcs: DcsRead,
    /// Messages from the API since the last tick.
    pub events: Vec<Event>,
    /// Results of the previous tick's actions and of finished background jobs.
    pub outcomes: Vec<Outcome>,
    /// Reads of other nodes, made when the view asked for them.
    pub probes: Probes,
    /// The agent is shutting down: it must not take the lease any more.
    pub stopping: bool,
}

/// The local PostgreSQL, as it answered this tick (or its data dir, when it is stopped).
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub pg_state: PgState,
    /// The data dir is an interrupted bootstrap's that made the first primary (its mark says
    /// so) but may not have committed it: it counts only if the initialize key is ours for
    /// good ([`crate::action::Job::FinishBootstrap`]). Reported as uninitialized.
    pub bootstrap_made: bool,
    /// Answered a query this tick.
    pub reachable: bool,
    /// Primary: not in recovery; replica: in recovery (or standby.signal on disk, stopped).
    pub role: MemberRole,
    /// Primary: its WAL file's timeline; replica: the received timeline while the receiver
    /// runs, else the last checkpoint's (which lags behind a timeline switch).
    pub timeline: Option<i64>,
    /// Primary: current LSN; replica: received (else replayed); stopped: from pg_controldata.
    pub lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub streaming: bool,
    /// Replica: `host:port` of the server it streams from.
    pub upstream: Option<String>,
    /// Primary: timeline of its last checkpoint.
    pub checkpoint_timeline: Option<i64>,
    /// Primary: pg_stat_replication.
    pub standbys: Vec<StandbyRow>,
    /// Primary: current `synchronous_standby_names`.
    pub sync_names: Option<String>,
    /// Physical replication slots (name, active); None when not read.
    pub slots: Option<Vec<(String, bool)>>,
    /// Logical replication slots, read with `slots`.
    pub logical_slots: Vec<LogicalSlot>,
    /// `restart_lsn` of the physical slots that have one, read with `slots`.
    pub slot_restart: BTreeMap<String, Lsn>,
    /// Settings changed in the files that need a restart (`pg_settings.pending_restart`).
    pub pending_restart: Vec<String>,
}

impl Local {
    pub fn in_recovery(&self) -> bool {
        self.role == MemberRole::Replica
    }

    /// Nothing known: a stopped, uninitialized node.
    pub fn stopped(role: MemberRole) -> Self {
        Local {
            pg_state: PgState::Stopped,
            bootstrap_made: false,
            reachable: false,
            role,
            timeline: None,
            lsn: None,
            replay_lsn: None,
            streaming: false,
            upstream: None,
            checkpoint_timeline: None,
            standbys: Vec::new(),
            sync_names: None,
            slots: None,
            logical_slots: Vec::new(),
            slot_restart: BTreeMap::new(),
            pending_restart: Vec::new(),
        }
    }
}

/// One row of pg_stat_replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyRow {
    pub name: String,
    pub streaming: bool,
    pub flush_lsn: Option<Lsn>,
}

/// What the DCS said this tick.
#[derive(Debug, Clone)]
pub enum DcsRead {
    Ok {
        session: SessionRead,
        view: ClusterView,
    },
    /// The view could not be read; the DCS has failed since `since` (our clock).
    Unreachable {
        since: Instant,
        session: SessionRead,
        error: String,
    },
}

/// What happened to our session lease this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRead {
    /// We had none.
    None,
    /// Renewed; the request was sent at `sent` (the lease lasts at least `ttl` from then).
    Renewed { lease: LeaseId, sent: Instant },
    /// The DCS says it no longer exists (expired or revoked).
    Gone { lease: LeaseId },
    /// The renewal failed; whether the lease still exists is unknown.
    Failed { lease: LeaseId, error: String },
}

/// A message from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// We told `leader` we cannot reach the DCS either (at `at`): we promised not to take the
    /// lease until `until` (what it asked for, at least `Timings::failsafe_quarantine`).
    FailsafeConfirmed {
        leader: String,
        at: Instant,
        until: Instant,
    },
    /// A previous run of this agent promised not to take the lease until then.
    PromiseInherited { until: Instant },
    /// An operator asks for a restart of PostgreSQL (`POST /restart`, `pgha restart`): not
    /// before `at_ms` (wall clock), and with `pending_only` only when a setting waits for it.
    RestartRequested {
        at_ms: Option<u64>,
        pending_only: bool,
    },
    /// `DELETE /restart`: the scheduled restart is dropped.
    RestartCancelled,
    /// An operator asks to wipe this replica and clone it afresh (`POST /reinitialize`).
    ReinitRequested,
}

/// A logical replication slot: one of `replication.logical_slots`, an ignored one, or
/// reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalSlot {
    pub name: String,
    pub database: Option<String>,
    pub plugin: Option<String>,
    /// `confirmed_flush_lsn`: what its consumer confirmed (on a replica's copy: how far it
    /// was advanced).
    pub confirmed_flush: Option<Lsn>,
}

/// Peer reads the gather step made because the view called for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probes {
    /// Following a leader with the fast path on: both its PostgreSQL and agent ports refused.
    pub leader_refused: Option<bool>,
    /// No leader: received (else replayed) WAL position read live from each running replica.
    pub positions: BTreeMap<String, Lsn>,
    /// Leader, DCS unreachable on the last tick (failsafe on): every other agent promised not
    /// to take the lease; Ok holds the earliest of the questions they answered yes to.
    pub failsafe: Option<Result<Instant, String>>,
}

/// The result of an action, delivered to the next tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    SessionGranted {
        lease: LeaseId,
        sent: Instant,
        ttl: std::time::Duration,
    },
    /// The leader key is ours (acquired or taken over), or it was not (someone else's).
    LeaderTaken {
        ok: bool,
    },
    LeaderReleased,
    /// A release of the leader key whose outcome is unknown (the request failed: etcd may
    /// still apply it later): the session is given up, since a key left on it could vanish
    /// under a PostgreSQL started as primary on the strength of it.
    SessionAbandoned {
        lease: LeaseId,
    },
    Fenced {
        ok: bool,
    },
    /// A background job ended.
    JobDone {
        id: u64,
        job: Job,
        error: Option<String>,
    },
    /// pgha-node.conf now points at `upstream` (a node, or the primary site).
    PointedAt {
        upstream: String,
    },
    /// synchronous_standby_names was set to `value` at WAL position `lsn`.
    SyncNamesSet {
        value: String,
        lsn: Lsn,
    },
    /// A write (or delete) of `/sync` conditioned on `revision` whose outcome is unknown: the
    /// request failed, and etcd may still apply it later.
    SyncInDoubt {
        revision: i64,
    },
    /// /sync was written.
    SyncWritten {
        standbys: Vec<String>,
    },
    /// The slot we re-made on our upstream while not streaming.
    SlotRetried,
    /// The settings of `Ctx::generation` reached PostgreSQL (or could not).
    ConfigApplied {
        generation: u64,
        error: Option<String>,
    },
}
