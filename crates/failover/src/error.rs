//! Errors of the failover crate.

/// Result alias of this crate.
pub type Result<T, E = FailoverError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailoverError {
    #[error("etcd {op}: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("DCS request {op} timed out after {ms} ms")]
    DcsTimeout { op: &'static str, ms: u64 },
    #[error("DCS value at {key} is not valid: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
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
    #[error("agent API at {addr}: {reason}")]
    Api { addr: String, reason: String },
}

impl FailoverError {
    pub(crate) fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| FailoverError::Etcd { op, source }
    }

    pub(crate) fn refused(action: &'static str, reason: impl Into<String>) -> Self {
        FailoverError::Refused {
            action,
            reason: reason.into(),
        }
    }
}
