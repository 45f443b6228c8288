//! The seams the executor acts through: the local PostgreSQL, the other nodes, the supervisor.
//! pgha-failover implements them with real processes; the simulator with fakes.

use async_trait::async_trait;
use pgha_postgres::{Lsn, StopMode};
use tokio::time::Instant;

use crate::inputs::Local;
use crate::Result;

/// What pgha-node.conf should make PostgreSQL do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Primary,
    /// Stream from this cluster node.
    Replica {
        upstream: String,
    },
    /// Stream from the primary site (`[standby_cluster]`).
    StandbyLeader,
}

/// Control of the local PostgreSQL.
#[async_trait]
pub trait PgNode: Send + Sync + std::fmt::Debug {
    /// One look at the instance; never fails (an unreachable server is an observation).
    /// `details`: also read pg_stat_replication, synchronous_standby_names and slots.
    async fn observe(&self, details: bool) -> Local;
    /// Installs the settings of `target` (and standby.signal for a standby) and starts.
    async fn start(&self, target: &Target) -> Result<()>;
    /// Starts with what is on disk.
    async fn restart(&self) -> Result<()>;
    async fn stop(&self, mode: StopMode) -> Result<()>;
    /// Stops at once and makes sure it is down: immediate shutdown, else SIGKILL of the
    /// postmaster and its children.
    async fn fence(&self) -> Result<()>;
    /// pg_promote and wait until PostgreSQL leaves recovery, on a timeline above
    /// `timeline_floor` (PostgreSQL picks the next timeline without a history file in pg_wal:
    /// placeholder history files up to the floor make it skip those another node used).
    async fn promote(&self, timeline_floor: Option<i64>) -> Result<()>;
    /// CHECKPOINT (after a promotion: so pg_rewind from us reads the new timeline).
    async fn checkpoint(&self) -> Result<()>;
    /// `synchronous_standby_names` (ALTER SYSTEM + reload); returns the current WAL position.
    async fn set_sync_names(&self, value: &str) -> Result<Lsn>;
    /// Rewrites pgha-node.conf for `target` and reloads when it differs; true when it did.
    async fn point_at(&self, target: &Target) -> Result<bool>;
    /// A new cluster's first data dir ([`crate::action::Job::Bootstrap`]): a half-made one
    /// from an interrupted bootstrap (and a server still running on it) is cleared first; the
    /// server the bootstrap runs listens on a private port only; PostgreSQL is left stopped
    /// and the data dir marked half-made (observed as uninitialized) until
    /// [`Self::finish_bootstrap`], the mark saying "made" ([`crate::inputs::Local::bootstrap_made`]).
    async fn bootstrap(&self) -> Result<()>;
    /// Removes the half-made mark: the data dir counts from now on.
    async fn finish_bootstrap(&self) -> Result<()>;
    /// From now on renders settings from `cfg` (the cluster settings changed); rewrites
    /// pgha.conf when it differs and reloads a running server. True when the file changed.
    async fn apply_config(&self, cfg: std::sync::Arc<pgha_config::PghaConfig>) -> Result<bool>;
    /// pg_rewind from `source` (a node).
    async fn rewind(&self, source: &str) -> Result<()>;
    /// pg_basebackup from `source` into an empty data dir (`move_aside`: move the current one
    /// aside first).
    async fn clone_replica(&self, source: &str, move_aside: bool) -> Result<()>;
    /// The first copy of a standby cluster's leader, from the primary site.
    async fn clone_standby_leader(&self) -> Result<()>;
    async fn create_slot(&self, name: &str) -> Result<()>;
    async fn drop_slot(&self, name: &str) -> Result<()>;
    /// Creates logical slot `name` (one of `replication.logical_slots`) with `plugin` in
    /// `database` on this primary (idempotent).
    async fn create_logical_slot(&self, name: &str, database: &str, plugin: &str) -> Result<()>;
    /// Moves logical slot `name` (in `database`) forward to `to`; returns where it ended.
    async fn advance_slot(&self, name: &str, database: &str, to: Lsn) -> Result<Lsn>;
    /// Copies the logical slots `names` from `source` (the primary: their state files) into
    /// this replica and restarts it to load them; returns the names copied. PostgreSQL is
    /// left running as before when the primary has none of them.
    async fn copy_logical_slots(&self, source: &str, names: &[String]) -> Result<Vec<String>>;
    /// The checkpoint LSN in pg_control (after a shutdown: the final one).
    async fn checkpoint_lsn(&self) -> Result<Lsn>;
}

/// The other nodes, as seen from this one.
#[async_trait]
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Both `node`'s PostgreSQL port and agent port refuse connections (reset), within the
    /// probe timeout. A timeout is not a refusal.
    async fn refused(&self, node: &str) -> bool;
    /// `node`'s received (else replayed) WAL position, read live, when it is in recovery.
    async fn position(&self, node: &str) -> Option<Lsn>;
    /// Makes the slot `slot` on `node`.
    async fn create_slot_on(&self, node: &str, slot: &str) -> Result<()>;
    /// `node`'s last received WAL position.
    async fn received_lsn(&self, node: &str) -> Result<Option<Lsn>>;
    /// Asks `node`'s agent whether it cannot reach the DCS either (POST /failsafe) and, if
    /// so, to promise not to take the lease for `promise` (at least its own quarantine).
    async fn ask_failsafe(
        &self,
        node: &str,
        leader: &str,
        promise: std::time::Duration,
    ) -> Result<()>;
}

/// The supervisor that owns the postmaster and kills it at a deadline.
pub trait Watchdog: Send + Sync + std::fmt::Debug {
    /// From now on PostgreSQL is killed at `deadline` (None: never) unless a later call
    /// moves it.
    fn arm(&self, deadline: Option<Instant>) -> Result<()>;
}

/// Where the failsafe promise is kept, so a restarted agent still honours it (the
/// promise: "I will not take the lease until then", given to a leader cut off from the DCS).
pub trait PromiseStore: Send + Sync + std::fmt::Debug {
    /// Records the promise (wall-clock ms since the epoch); durable before it returns.
    fn save(&self, until_ms: u64) -> Result<()>;
    /// The latest promise recorded, if any.
    fn load(&self) -> Option<u64>;
}

/// Wall-clock milliseconds since the Unix epoch (virtual in the simulator).
pub trait WallClock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::now_ms()
    }
}
