//! The DCS seam: the few operations the agents and operator commands need.
//!
//! Keys under `<namespace>/<cluster>/`: `leader` (attached to the holder's session lease),
//! `members/<name>` (each agent's state, on its own lease, so it vanishes with the agent),
//! `status` (the leader's last WAL position, kept after it dies for the lag check),
//! `config` (pause), `switchover` (a pending switchover/failover request), `sync` (the
//! synchronous standbys a failover may promote).

mod etcd;
mod types;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use etcd::EtcdDcs;
pub use types::*;

use crate::Result;

/// What this agent's session lease did on renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// The lease was renewed; keys attached to it are still ours.
    Kept,
    /// The old lease had expired or was revoked (its keys are gone); a new one was granted.
    Replaced,
}

/// A distributed configuration store holding the cluster's leader lease and member states.
#[async_trait]
pub trait Dcs: Send + Sync + std::fmt::Debug {
    /// Renews (or first grants) this agent's session lease.
    async fn keep_alive(&self) -> Result<Session>;
    /// Everything under the cluster's prefix, in one read.
    async fn view(&self) -> Result<ClusterView>;
    /// Writes this agent's member key (on its session lease).
    async fn publish_member(&self, member: &MemberState) -> Result<()>;
    /// Takes the leader key if nobody holds it (compare-and-swap on its absence).
    async fn try_acquire_leader(&self) -> Result<bool>;
    /// Deletes the leader key if this agent holds it.
    async fn release_leader(&self) -> Result<()>;
    /// Revokes the lease of a leader confirmed dead, if it still holds the key at `leader.revision`.
    async fn revoke_leader(&self, leader: &LeaderInfo) -> Result<bool>;
    async fn put_status(&self, status: &LeaderStatus) -> Result<()>;
    /// Replaces the operators' switches if the key is still at `revision`
    /// (`ClusterView::config_revision`); false when someone changed it in between.
    async fn put_config(&self, config: &DynamicConfig, revision: i64) -> Result<bool>;
    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()>;
    async fn clear_switchover(&self) -> Result<()>;
    async fn put_sync(&self, sync: &SyncState) -> Result<()>;
    /// A channel that receives a unit each time something under the prefix changes.
    async fn watch(&self) -> Result<mpsc::Receiver<()>>;
}
