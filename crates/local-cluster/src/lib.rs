//! A whole pgha cluster on this machine: a primary and N streaming replicas of real PostgreSQL
//! on free loopback ports, under one state dir, with its own `pgha.toml`.
//!
//! `cargo xtask cluster ...` and the test harness both drive clusters through this crate, so the
//! tests exercise the same path an operator runs.

mod agents;
mod error;
mod etcd;
mod ports;
mod provision;
mod secrets;

pub use agents::{stop_pid, AgentProcess};
pub use error::{LocalClusterError, Result};
pub use etcd::{etcd_binary, EtcdServer, EtcdTls};
pub use ports::{free_port, PortReservation};
pub use provision::{ClusterSpec, LocalCluster, StandbySpec, COMPLETE_MARKER, CONFIG_FILE};
