//! Automatic failover for a pgha cluster.
//!
//! - [`dcs`]: what the agents need from a distributed configuration store (a leader key under a
//!   lease, compare-and-swap, member keys, watch), with etcd v3 as the implementation.
//! - [`agent`]: the per-node agent: the decision core of [`pgha_agent_core`] over real
//!   effects ([`node::LocalNode`], [`peers::NetPeers`], etcd).
//! - [`election`] and [`cascade`] (from the core): pure rules every agent evaluates alike.
//! - [`first`]: how a bootstrap makes a new cluster's first primary (initdb, or a seam for a backup).
//! - [`api`]: the agent's HTTP API (Patroni-compatible health endpoints for HAProxy).
//! - [`ops`]: operator actions (switchover, failover, pause) shared by the CLI and the API.
//! - [`settings`]: the cluster settings in the DCS (show-config, edit-config, `/config`).

pub mod agent;
pub mod api;
pub mod dcs;
mod error;
pub mod first;
pub mod node;
mod node_logical;
pub mod ops;
pub mod peers;
pub mod settings;
pub mod topology;

pub use error::{FailoverError, Result};
pub use pgha_agent_core::{cascade, election, now_ms};
