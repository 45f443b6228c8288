//! What `decide` asks the executor to do.

use std::time::Duration;

use tokio::time::Instant;

use crate::dcs::{DynamicConfig, LeaderInfo, LeaderStatus, LeaseId, MemberState, SyncState};

/// One effect. Short ones run inline in the executor (each bounded by a timeout); long ones
/// are [`Job`]s that run in the background while the loop keeps renewing the lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    GrantSession {
        ttl: Duration,
    },
    /// The settings' TTL differs from our lease's: grant a lease of `ttl`, move the leader key
    /// onto it when it is on `old` (`leader_revision`, compare-and-swap), publish `member` on
    /// it, then revoke `old`. The tick's last action (the leader-only writes before it use
    /// `old`).
    RotateSession {
        old: LeaseId,
        ttl: Duration,
        leader_revision: Option<i64>,
        member: Box<MemberState>,
    },
    PublishMember {
        lease: LeaseId,
        member: MemberState,
    },
    /// Take the leader key if nobody holds it.
    AcquireLeader {
        lease: LeaseId,
    },
    /// The leader key names us but sits on a predecessor's lease: replace it by ours.
    TakeOverLeader {
        lease: LeaseId,
        revision: i64,
    },
    /// Delete the leader key if it is ours. Skipped when a fence earlier in the same tick
    /// failed: a PostgreSQL that may still take writes keeps the lease.
    ReleaseLeader {
        lease: LeaseId,
    },
    /// Delete a dead leader's key (at its revision) and revoke its lease.
    RevokeLeader(LeaderInfo),
    PutStatus(LeaderStatus),
    /// Write `/sync` if it is still at `revision` (this tick's view) and the leader key ours.
    PutSync {
        sync: SyncState,
        revision: i64,
    },
    /// Delete `/sync` on the same conditions (back in async mode, PostgreSQL waits for no
    /// standby any more).
    DeleteSync {
        revision: i64,
    },
    ClearSwitchover,
    /// Stop PostgreSQL at once (immediate shutdown; SIGKILL of the postmaster and its
    /// children when that fails), and make sure it is down.
    Fence {
        why: String,
    },
    /// Cancel the running background job (its effects stay; a fence follows when needed).
    AbortJob,
    Spawn {
        id: u64,
        job: Job,
    },
    /// pgha-node.conf streams from `upstream` (a node name); made and reloaded when it differs.
    /// The slot on the upstream is made first.
    PointAt {
        upstream: String,
    },
    /// pgha-node.conf streams from the primary site (standby leader).
    PointAtPrimarySite,
    SetSyncNames {
        value: String,
    },
    CreateSlot {
        name: String,
    },
    DropSlot {
        name: String,
    },
    /// A `replication.logical_slots` entry missing on our primary.
    CreateLogicalSlot {
        name: String,
        database: String,
        plugin: String,
    },
    /// Move our copy of permanent slot `name` (logical, or physical: then `database` is any)
    /// forward to `to` (the leader's position, at most what we replayed).
    AdvanceSlot {
        name: String,
        database: String,
        to: pgha_postgres::Lsn,
    },
    /// Make our slot on `node` (idempotent).
    CreateSlotOn {
        node: String,
        slot: String,
    },
    /// Take the `initialize` key: nobody bootstrapped the cluster yet.
    TryInitialize {
        lease: LeaseId,
    },
    /// Our bootstrap is done and we lead: keep the `initialize` key for good.
    FinishInitialize,
    /// Hand the cluster settings of `Ctx::generation` to the PostgreSQL seam: pgha.conf is
    /// rewritten, and reloaded when the server runs. Never while a job runs.
    ApplyConfig {
        generation: u64,
    },
    /// Write the dynamic settings pgha.toml seeds (compare-and-swap on the `config` key).
    SeedSettings {
        config: DynamicConfig,
        revision: i64,
    },
    /// The supervisor kills PostgreSQL at `deadline` unless told a later one; None: no
    /// deadline (this node cannot take writes).
    Watchdog {
        deadline: Option<Instant>,
    },
}

/// Long work, run in the background; its end is an [`crate::inputs::Outcome::JobDone`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Sync mode first writes an empty /sync and sets `sync_names`; then pg_promote and wait
    /// until PostgreSQL leaves recovery.
    Promote {
        sync_names: Option<String>,
        /// The highest timeline any node used as far as the view shows (DCS `status` and
        /// members) and our own: the promotion is allocated a higher one in the DCS
        /// ([`crate::dcs::Dcs::allocate_timeline`]), never one another node wrote on.
        timeline_floor: Option<i64>,
        /// CHECKPOINT after promoting (pg_rewind from us reads the new timeline then).
        checkpoint: bool,
        /// Recorded in the DCS `history` once promoted (`new_timeline` and `at_ms` then).
        history: PromotionNote,
    },
    /// Install the primary's settings and start.
    StartPrimary,
    /// Start whatever is on disk with its own settings (a leader's crashed primary).
    Restart,
    /// Clone (empty data dir) or rewind (it was a primary, or diverged) from `upstream`, then
    /// start streaming from it.
    StartReplica {
        upstream: String,
        rewind: bool,
        clone: bool,
    },
    /// Move the data dir aside and clone it from `upstream`: the last resort.
    Reclone { upstream: String },
    /// Start as the leader of a standby cluster (a first copy of the primary site when empty).
    StartStandbyLeader { clone: bool },
    /// Start read-only with no upstream (no leader yet): the node becomes electable.
    StartReadOnly,
    /// Fast shutdown (fallback: immediate); then wait until `to` received the final
    /// checkpoint (at most `wait`).
    HandOver { to: String, wait: Duration },
    /// Fast stop of a replica before a rewind.
    StopForRewind,
    /// CHECKPOINT on the primary: its control file then names its timeline (pg_rewind from
    /// it needs that).
    Checkpoint,
    /// An operator's restart: fast stop (immediate when that fails), then start what is on
    /// disk. `primary`: the leader's primary (the lease is held throughout).
    RestartPg { primary: bool },
    /// The first primary of a new cluster: initdb (checksums, the superuser's password),
    /// its settings, the replication role; left stopped, to be elected like any node with data.
    Bootstrap { lease: LeaseId },
    /// A bootstrap committed in the DCS (the initialize key is ours for good) whose agent
    /// died before it removed the half-made mark: remove it; the data dir counts.
    FinishBootstrap,
    /// An operator's reinit of a replica: stop, move the data dir aside, clone from
    /// `upstream`, start streaming.
    Reinit { upstream: String },
    /// Copy the logical slots `names` from the primary `from` (their state files) and
    /// restart to load them: a replica's copies of `replication.logical_slots`.
    CopyLogicalSlots { from: String, names: Vec<String> },
}

/// What the history entry of a promotion says, known when it is decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromotionNote {
    pub timeline: Option<i64>,
    pub lsn: Option<pgha_postgres::Lsn>,
    pub reason: String,
}

impl Job {
    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            Job::Promote { .. } => "promote",
            Job::StartPrimary => "start as primary",
            Job::Restart => "restart",
            Job::StartReplica { clone: true, .. } => "clone and start as replica",
            Job::StartReplica { rewind: true, .. } => "rewind and start as replica",
            Job::StartReplica { .. } => "start as replica",
            Job::Reclone { .. } => "re-clone",
            Job::StartStandbyLeader { .. } => "start as standby leader",
            Job::StartReadOnly => "start read-only",
            Job::HandOver { .. } => "hand over",
            Job::StopForRewind => "stop for rewind",
            Job::Checkpoint => "checkpoint",
            Job::RestartPg { .. } => "restart on request",
            Job::Bootstrap { .. } => "bootstrap the cluster",
            Job::FinishBootstrap => "finish the committed bootstrap",
            Job::Reinit { .. } => "reinitialize",
            Job::CopyLogicalSlots { .. } => "copy logical slots",
        }
    }

    /// Jobs after which PostgreSQL may accept writes: the watchdog is armed before they start.
    pub fn may_make_writable(&self) -> bool {
        matches!(
            self,
            Job::Promote { .. }
                | Job::StartPrimary
                | Job::Restart
                | Job::RestartPg { primary: true }
        )
    }
}
