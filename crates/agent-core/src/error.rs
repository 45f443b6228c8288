//! Errors of the agent core and of its seams (DCS, PostgreSQL control, peers).

/// Result alias of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// The cause of a DCS client error, kept as-is (etcd's, or a fake's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("DCS {op}: {source}")]
    Dcs {
        op: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("DCS request {op} timed out after {ms} ms")]
    DcsTimeout { op: &'static str, ms: u64 },
    #[error("DCS value at {key} is not valid: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("DCS value at {key} is {value:?}, expected {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{node}: {what}: {reason}")]
    Peer {
        node: String,
        what: &'static str,
        reason: String,
    },
    #[error("{what} did not finish within {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    #[error("{action} refused: {reason}")]
    Refused {
        action: &'static str,
        reason: String,
    },
    /// The first primary of a new cluster could not be made from its source (a backup).
    #[error("bootstrap from {from}: {source}")]
    Bootstrap {
        from: &'static str,
        #[source]
        source: BoxError,
    },
    /// A simulated component failed (the simulator's fakes).
    #[error("{what}: {reason}")]
    Simulated { what: &'static str, reason: String },
    #[error(transparent)]
    Postgres(#[from] pgha_postgres::PgError),
    #[error(transparent)]
    Replication(#[from] pgha_replication::ReplicationError),
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
}

impl CoreError {
    pub fn refused(action: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Refused {
            action,
            reason: reason.into(),
        }
    }

    pub fn peer(node: &str, what: &'static str, reason: impl std::fmt::Display) -> Self {
        CoreError::Peer {
            node: node.into(),
            what,
            reason: reason.to_string(),
        }
    }

    pub fn simulated(what: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Simulated {
            what,
            reason: reason.into(),
        }
    }
}
