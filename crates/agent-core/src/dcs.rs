//! The DCS seam: the few operations the agents and operator commands need.
//!
//! Keys under `<namespace>/<cluster>/`: `leader` (attached to the holder's session lease),
//! `members/<name>` (each agent's state, on its own lease, so it vanishes with the agent),
//! `status` (the leader's last WAL position, kept after it dies for the lag check),
//! `config` (pause), `switchover` (a pending switchover/failover request), `sync` (the
//! synchronous standbys a failover may promote), `history` (promotions), `initialize` (who
//! bootstraps the cluster).
//!
//! Sessions are explicit: an agent holds a lease id it got from [`Dcs::grant_session`] and
//! renews it with [`Dcs::keep_alive`]; when to grant a new one is the decision core's call
//! (an expired lease is never silently replaced behind its back).

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use crate::types::*;
use crate::Result;

/// A session lease in the DCS (etcd's lease id).
pub type LeaseId = i64;

/// A distributed configuration store holding the cluster's leader lease and member states. One
/// value per agent (it knows the agent's node name) or per operator command.
#[async_trait]
pub trait Dcs: Send + Sync + std::fmt::Debug {
    /// Grants a new session lease of `ttl` (whole seconds; etcd keeps it for the lease's life,
    /// so a changed `ttl` takes a new lease).
    async fn grant_session(&self, ttl: std::time::Duration) -> Result<LeaseId>;
    /// Every request from now on gives up after `timeout` (`dcs.request_timeout`, which the
    /// fence timing counts on, changed in the cluster settings).
    fn set_request_timeout(&self, timeout: std::time::Duration);
    /// Renews `lease`. `Ok(false)`: the lease no longer exists (expired or revoked; every key
    /// on it is gone).
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool>;
    /// Everything under the cluster's prefix, in one read.
    async fn view(&self) -> Result<ClusterView>;
    /// Writes this agent's member key on `lease`.
    async fn publish_member(&self, lease: LeaseId, member: &MemberState) -> Result<()>;
    /// Takes the leader key on `lease` if nobody holds it (compare-and-swap on its absence).
    async fn try_acquire_leader(&self, lease: LeaseId) -> Result<bool>;
    /// Replaces the leader key, still at `revision` (it names this agent's node but sits on an
    /// older lease, a predecessor's), with one on `lease` (compare-and-swap on the revision).
    async fn take_over_leader(&self, lease: LeaseId, revision: i64) -> Result<bool>;
    /// Deletes the leader key if it is on `lease`; false when it was not ours (any more).
    async fn release_leader(&self, lease: LeaseId) -> Result<bool>;
    /// Revokes our own session lease at a clean shutdown (PostgreSQL is stopped): our member
    /// key (and a leader key still on it) goes at once, so a restart of this agent is not
    /// taken for a second agent of the node, and nobody waits for the lease to expire.
    async fn end_session(&self, lease: LeaseId) -> Result<()>;
    /// Takes the `initialize` key on `lease` if nobody has it (compare-and-swap on its
    /// absence): this agent bootstraps the cluster.
    async fn try_initialize(&self, lease: LeaseId) -> Result<bool>;
    /// The `initialize` key stays for good (off the lease). With `lease`: the bootstrap's
    /// commit point, only while the key is still ours on that lease and not done
    /// (compare-and-swap); false when it was not. Without: unconditionally (a key an older
    /// agent left not done under the leader it became).
    async fn finish_initialize(&self, lease: Option<LeaseId>) -> Result<bool>;
    /// Deletes the leader key if it is still at `leader.revision`, and revokes its lease.
    async fn revoke_leader(&self, leader: &LeaderInfo) -> Result<bool>;
    /// Writes `status` if the leader key is still on `lease` (a leader that lost the key
    /// writes nothing); false when it was not.
    async fn put_status(&self, lease: LeaseId, status: &LeaderStatus) -> Result<bool>;
    /// Replaces the operators' switches if the key is still at `revision`
    /// (`ClusterView::config_revision`); false when someone changed it in between.
    async fn put_config(&self, config: &DynamicConfig, revision: i64) -> Result<bool>;
    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()>;
    async fn clear_switchover(&self) -> Result<()>;
    /// Writes `sync` if the leader key is still on `lease` and the `sync` key is still at
    /// `revision` (`ClusterView::sync_revision`, 0: absent); false when either changed. The
    /// revision makes an older write that timed out, and is applied after a newer one, fail
    /// instead of bringing back standbys that are no longer synchronous.
    async fn put_sync(&self, lease: LeaseId, sync: &SyncState, revision: i64) -> Result<bool>;
    /// Deletes `sync` on the same conditions as [`Dcs::put_sync`] (a leader gone back to async
    /// mode, once PostgreSQL waits for no standby); false when either changed.
    async fn delete_sync(&self, lease: LeaseId, revision: i64) -> Result<bool>;
    /// Allocates the timeline of a promotion (compare-and-swap on the `timeline` key, the
    /// highest timeline any promotion was given): a new one, at least `at_least` and above
    /// every one given before, so no two promotions of the cluster share a timeline.
    async fn allocate_timeline(&self, at_least: i64) -> Result<i64>;
    /// Appends `entry` to the `history` key (compare-and-swap; the oldest entries beyond
    /// [`MAX_HISTORY`] are dropped).
    async fn append_history(&self, entry: &HistoryEntry) -> Result<()>;
    /// A channel that receives a unit each time a key decisions depend on changes.
    async fn watch(&self) -> Result<mpsc::Receiver<()>>;
}
