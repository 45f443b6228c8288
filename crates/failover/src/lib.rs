//! Automatic failover for a pgha cluster.
//!
//! - [`dcs`]: what the agents need from a distributed configuration store (a leader key under a
//!   lease, compare-and-swap, member keys, watch), with etcd v3 as the implementation.
//! - [`election`]: pure rules: who may be promoted, who is best.
//! - [`cascade`]: who streams from whom (`replicate_from`) and which slots each node keeps.
//! - [`agent`]: the per-node loop that holds or follows the leader, promotes, fences, rejoins.
//! - [`api`]: the agent's HTTP API (Patroni-compatible health endpoints for HAProxy).
//! - [`ops`]: operator actions (switchover, failover, pause) shared by the CLI and the API.

pub mod agent;
pub mod api;
pub mod cascade;
pub mod dcs;
pub mod election;
mod error;
mod observe;
pub mod ops;

pub use error::{FailoverError, Result};

/// Milliseconds since the Unix epoch, for timestamps stored in the DCS.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
