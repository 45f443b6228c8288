//! Streaming replication: the settings each node runs with, the replication role and slots,
//! bootstrapping a replica, rewinding one, switching async/sync, and the live status of the whole cluster.
//!
//! Settings are split in three files inside each data dir, included from postgresql.conf:
//! `pgha.conf` (identical on every node, so pg_basebackup/pg_rewind copying it is harmless),
//! `pgha-node.conf` (this node's port, addresses, upstream; rewritten after every copy) and
//! `pg_hba.conf`.

mod bootstrap;
mod error;
mod first;
mod install;
pub mod logical;
mod mode;
mod rewind;
mod roles;
mod settings;
mod slots;
pub mod status;
pub mod table;

pub use bootstrap::{bootstrap_replica, bootstrap_standby_leader, write_passfile};
pub use error::{ReplicationError, Result};
pub use first::{bootstrap_primary, prepare_first_primary};
pub use install::{
    install_settings, install_tls_files, NodeRole, CLUSTER_CONF, INCLUDE_MARKER, NODE_CONF,
};
pub use mode::{apply_sync_names, set_mode, synchronous_standby_names};
pub use pgha_postgres::Lsn;
pub use rewind::rewind;
pub use roles::ensure_replication_role;
pub use settings::{
    render_cluster_conf, render_cluster_conf_keeping, render_hba, render_node_conf,
    render_node_conf_for, RenderedNode, TLS_CA, TLS_CERT, TLS_KEY,
};
pub use slots::{create_slot, drop_slot, list_slots, SlotStatus};
pub use status::{ClusterStatus, NodeStatus, Role};
