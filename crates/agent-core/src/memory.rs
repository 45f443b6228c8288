//! What the agent remembers between ticks: its role, its session, its running job, and named
//! timers. `decide` reads one `Memory` and returns the next.

use std::collections::BTreeMap;

use pgha_postgres::Lsn;
use tokio::time::Instant;

use crate::action::Job;
use crate::dcs::LeaseId;

/// The agent's role, as its own decisions made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Just started: nothing decided yet.
    Starting,
    /// The DCS names no leader, and we did not take the key.
    NoLeader,
    /// `leader` holds the key; we run (or start) as its replica.
    Follower { leader: String },
    /// We hold the key on our session: PostgreSQL is (or becomes) the primary.
    Leader,
    /// We hold the key of a standby cluster: PostgreSQL streams from the primary site.
    StandbyLeader,
    /// We stopped PostgreSQL because we lost (or could not keep) the lease.
    Fenced { why: String },
}

impl Role {
    pub fn holds_lease(&self) -> bool {
        matches!(self, Role::Leader | Role::StandbyLeader)
    }
}

/// A restart an operator asked for, until it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRequest {
    /// Not before (wall clock, ms since the epoch).
    pub at_ms: Option<u64>,
    /// Only when `pg_settings.pending_restart` names a setting.
    pub pending_only: bool,
}

/// Our session lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub lease: LeaseId,
    /// When the last successful renewal (or the grant) was sent: the lease lasts at least
    /// `ttl` from then.
    pub renewed_at: Instant,
    /// The TTL the lease was granted with (etcd renews it to that, whatever the settings say
    /// now).
    pub ttl: std::time::Duration,
}

/// A background job in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningJob {
    pub id: u64,
    pub job: Job,
    pub started: Instant,
}

/// A change of synchronous standbys waiting for the new ones to catch up before /sync names
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSync {
    pub standbys: Vec<String>,
    /// Quorum mode: `ANY acks (standbys)`; None: `FIRST n` of them all.
    pub acks: Option<usize>,
    /// synchronous_standby_names as set for this change, and the WAL position then.
    pub since_lsn: Option<Lsn>,
    pub since: Instant,
}

/// The fast dead-leader path's observations of one leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderWatch {
    pub leader: String,
    pub lease: LeaseId,
    /// Consecutive ticks on which both its ports refused.
    pub refused_hits: u32,
    /// Its member key's last `updated_ms` and since when we saw that value unchanged.
    pub member_stamp: Option<u64>,
    pub stamp_since: Instant,
}

/// Named timers (all on the agent's monotonic clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timers {
    pub started: Option<Instant>,
    pub pg_down_since: Option<Instant>,
    pub not_streaming_since: Option<Instant>,
    pub slots_checked: Option<Instant>,
    pub slot_retry: Option<Instant>,
    pub cascade_usable_since: Option<Instant>,
    pub cascade_backoff_until: Option<Instant>,
    pub dcs_unreachable_since: Option<Instant>,
    /// We confirmed failsafe to a leader: no lease for us until then.
    pub quarantine_until: Option<Instant>,
    /// Start of the newest failsafe round every other agent confirmed.
    pub failsafe_ok: Option<Instant>,
    /// The last background job failed then: the next one waits a loop.
    pub job_failed: Option<Instant>,
    /// When applying the cluster settings failed last (retried `loop_wait` later).
    pub config_failed: Option<Instant>,
    /// When we last copied logical slots from the leader (a copy restarts PostgreSQL: not
    /// more often than `decide::logical::COPY_BACKOFF`).
    pub logical_copied: Option<Instant>,
}

/// Everything the agent carries from one tick to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    pub role: Role,
    pub session: Option<Session>,
    pub job: Option<RunningJob>,
    pub next_job_id: u64,
    /// The data dir must be rewound from the leader before it can follow it.
    pub needs_rewind: bool,
    pub failed_starts: u32,
    /// Rewinds tried because we could not stream (each doubles the wait for the next).
    pub rewind_attempts: u32,
    /// What pgha-node.conf points at, as far as this agent knows.
    pub current_upstream: Option<String>,
    /// Highest timeline our running PostgreSQL reported since it started.
    pub seen_timeline: Option<i64>,
    pub pending_sync: Option<PendingSync>,
    /// A `/sync` write conditioned on this revision may still land
    /// ([`crate::inputs::Outcome::SyncInDoubt`]): settled before the next change.
    pub sync_in_doubt: Option<i64>,
    /// Nodes whose member key we found gone, since when (`replication.member_slots_ttl`).
    pub members_absent: BTreeMap<String, Instant>,
    /// Slots on our PostgreSQL that are neither a node's, nor permanent, nor ignored
    /// (`replication.ignore_slots`): reported, never dropped. `logical:` or `physical:` name.
    pub unknown_slots: Vec<String>,
    /// Slots named after one of our nodes that nobody should read from us, since when.
    pub unwanted_slots: BTreeMap<String, Instant>,
    pub leader_watch: Option<LeaderWatch>,
    pub timers: Timers,
    /// The deadline last sent to the supervisor.
    pub watchdog: Option<Instant>,
    /// The `Ctx::generation` of the settings PostgreSQL was handed last (0: those it
    /// started with).
    pub config_applied: u64,
    /// A restart an operator asked for (runs between jobs, also while paused).
    pub restart: Option<RestartRequest>,
    /// An operator asked to clone this replica afresh.
    pub reinit: bool,
    /// The last view we read held our failsafe topology in `status` (ours, written as
    /// leader): only then does a confirmed failsafe round count as a proof, since only then
    /// may no node outside the topology be elected (`election::Rules::failsafe`).
    pub failsafe_published: bool,
    /// Our copies of `replication.logical_slots` found ahead of the leader's slot: since
    /// when, and how many statuses the leader wrote since. Still ahead after a few: not the
    /// leader's slot (a former primary's own), copied anew.
    pub logical_ahead: BTreeMap<String, Ahead>,
}

/// A copy of a logical slot seen ahead of the leader's published position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahead {
    /// The leader whose statuses these are (another one's clock counts anew).
    pub leader: String,
    pub since: Instant,
    /// `updated_ms` of the last leader status we compared with.
    pub status_ms: u64,
    /// Statuses the leader wrote after the first one, all still behind our copy.
    pub statuses: u32,
}

impl Memory {
    /// The leader's right to serve rests on this: the start of its last lease renewal or of
    /// its last failsafe round every other agent confirmed, whichever is newer. The fence
    /// (`fence_after`) and the supervisor's deadline (`watchdog_after`) count from it.
    pub fn proof(&self, s: Session) -> Instant {
        self.timers
            .failsafe_ok
            .map_or(s.renewed_at, |f| f.max(s.renewed_at))
    }

    pub fn new(now: Instant) -> Self {
        Memory {
            role: Role::Starting,
            session: None,
            job: None,
            next_job_id: 1,
            needs_rewind: false,
            failed_starts: 0,
            rewind_attempts: 0,
            current_upstream: None,
            seen_timeline: None,
            pending_sync: None,
            sync_in_doubt: None,
            unwanted_slots: BTreeMap::new(),
            members_absent: BTreeMap::new(),
            unknown_slots: Vec::new(),
            leader_watch: None,
            timers: Timers {
                started: Some(now),
                ..Timers::default()
            },
            watchdog: None,
            config_applied: 0,
            restart: None,
            reinit: false,
            failsafe_published: false,
            logical_ahead: BTreeMap::new(),
        }
    }
}
