//! Who PgBouncer should point at: the primary and the replicas that answer, from live status.

use pgha_config::PghaConfig;
use pgha_replication::{ClusterStatus, Role};

use crate::{PoolingError, Result};

/// One PostgreSQL server as PgBouncer reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub node: String,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}:{})", self.node, self.host, self.port)
    }
}

/// The servers behind the read-write and read-only entries. A change of it is what makes the
/// follower re-render and reload PgBouncer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub primary: Backend,
    /// Replicas that answered, in config order.
    pub replicas: Vec<Backend>,
}

impl Topology {
    /// From a status snapshot: the single writable node and every reachable replica. Fails when
    /// no node or more than one answers as primary (never guess during a split brain).
    pub fn from_status(config: &PghaConfig, status: &ClusterStatus) -> Result<Self> {
        let backend = |name: &str| {
            config.node(name).map(|n| Backend {
                node: n.name.clone(),
                host: n.host.clone(),
                port: n.port,
            })
        };
        let primary =
            status
                .primary
                .as_deref()
                .and_then(backend)
                .ok_or_else(|| PoolingError::NoPrimary {
                    writable: status.writable.clone(),
                    unreachable: status
                        .nodes
                        .iter()
                        .filter(|n| !n.reachable)
                        .map(|n| n.name.clone())
                        .collect(),
                })?;
        let replicas = status
            .nodes
            .iter()
            .filter(|n| n.reachable && n.role == Some(Role::Replica))
            .filter_map(|n| backend(&n.name))
            .collect();
        Ok(Topology { primary, replicas })
    }

    /// Live status of every node, then [`Self::from_status`].
    pub async fn collect(config: &PghaConfig) -> Result<Self> {
        let status = ClusterStatus::collect(config).await?;
        Self::from_status(config, &status)
    }

    /// One line for logs: `primary node1 (127.0.0.1:5432), replicas node2 (...), node3 (...)`.
    pub fn describe(&self) -> String {
        let replicas = if self.replicas.is_empty() {
            "none".to_owned()
        } else {
            self.replicas
                .iter()
                .map(Backend::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("primary {}, replicas {replicas}", self.primary)
    }
}
