//! Errors of the failover crate.

/// Result alias of this crate.
pub type Result<T, E = FailoverError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailoverError {
    /// The DCS, the agent core, PostgreSQL control or a peer (the core's error).
    #[error(transparent)]
    Core(#[from] pgha_agent_core::CoreError),
    #[error("no [dcs] section in the config: the agent needs etcd endpoints")]
    NoDcs,
    #[error("node `{0}` is not in the config")]
    UnknownNode(String),
    #[error("{action} refused: {reason}")]
    Refused {
        action: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Postgres(#[from] pgha_postgres::PgError),
    #[error(transparent)]
    Replication(#[from] pgha_replication::ReplicationError),
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
    #[error("{field}: {reason}")]
    DcsSetup { field: String, reason: String },
    /// An edit of the cluster settings was refused (every problem, one per line).
    #[error("cluster settings refused:\n{0}")]
    Settings(String),
    #[error("agent API at {addr}: {reason}")]
    Api { addr: String, reason: String },
}

impl FailoverError {
    pub(crate) fn refused(action: &'static str, reason: impl Into<String>) -> Self {
        FailoverError::Refused {
            action,
            reason: reason.into(),
        }
    }
}
