//! Errors of the router, and which database errors mean "the primary moved".

use std::time::Duration;

use pgha_postgres::Lsn;

/// Result alias of this crate.
pub type Result<T, E = RouterError> = std::result::Result<T, E>;

/// What went wrong while building or using a [`crate::Router`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A connection URL could not be used; `url` has its password replaced by `***`.
    #[error("invalid database URL `{url}`: {problem}")]
    InvalidUrl { url: String, problem: String },
    /// A required environment variable is unset or not UTF-8.
    #[error("environment variable {name} is not set (expected a postgres:// URL)")]
    MissingEnv { name: String },
    /// An option has a value the router cannot work with.
    #[error("router option {option}: {problem}")]
    InvalidOption {
        option: &'static str,
        problem: String,
    },
    /// Discovery returned no node at all.
    #[error("discovery ({source_name}) returned no PostgreSQL node")]
    NoNodes { source_name: String },
    /// The discovery source failed.
    #[error("discovery ({source_name}) failed: {cause}")]
    Discovery { source_name: String, cause: String },
    /// No node reported itself as a writable primary in time.
    #[error("no writable primary among [{nodes}] within {waited:?}")]
    NoPrimary { nodes: String, waited: Duration },
    /// No replica qualifies for a read and the fallback to the primary is off.
    #[error(
        "no healthy replica within the lag bound ({bound}) and fallback to the primary is off"
    )]
    NoReplica { bound: String },
    /// A read-your-writes read found no node that replayed the write in time and the fallback
    /// to the primary is off.
    #[error(
        "no replica replayed up to {lsn} within {waited:?} and fallback to the primary is off"
    )]
    NotReplayed { lsn: Lsn, waited: Duration },
    /// A query failed on a node.
    #[error("{node}: {source}")]
    Query {
        node: String,
        #[source]
        source: sqlx::Error,
    },
    /// Reading a secret referenced by pgha.toml failed.
    #[error(transparent)]
    Secret(#[from] pgha_config::SecretError),
}

impl RouterError {
    /// True when the same call may succeed later (a failover in progress, a node restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            RouterError::NoPrimary { .. }
            | RouterError::NoReplica { .. }
            | RouterError::NotReplayed { .. } => true,
            RouterError::Query { source, .. } => is_failover_error(source),
            _ => false,
        }
    }
}

/// So that `?` works in functions returning `sqlx::Result` and the handles can be sqlx
/// [`sqlx::Executor`]s and [`sqlx::Acquire`]s:
///
/// - [`RouterError::Query`]: the database's own error, unchanged.
/// - No usable node ([`RouterError::NoPrimary`], [`RouterError::NoReplica`],
///   [`RouterError::NotReplayed`], [`RouterError::NoNodes`], [`RouterError::Discovery`]): an
///   `Io` error of kind `NotConnected` (no connection could be had, as when a pool cannot reach
///   its host), so [`is_failover_error`] and [`crate::Router::idempotent`] treat it as
///   worth retrying.
/// - Bad URLs, options, environment or secrets: [`sqlx::Error::Configuration`].
///
/// In every case but `Query` the `RouterError` is inside: `io.into_inner()` or
/// `source.downcast::<RouterError>()` gets it back.
impl From<RouterError> for sqlx::Error {
    fn from(e: RouterError) -> sqlx::Error {
        match e {
            RouterError::Query { source, .. } => source,
            e @ (RouterError::InvalidUrl { .. }
            | RouterError::MissingEnv { .. }
            | RouterError::InvalidOption { .. }
            | RouterError::Secret(_)) => sqlx::Error::Configuration(Box::new(e)),
            other => sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::NotConnected, other)),
        }
    }
}

/// SQLSTATE of "cannot execute ... in a read-only transaction": the node is (now) a standby.
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";

/// True when `e` says the node we talked to is no longer a usable primary: it became read-only
/// (25006), shut down (57P01..57P03), or the connection broke. Such an error triggers
/// rediscovery; the call itself is only retried when the caller marked it idempotent.
pub fn is_failover_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                code == READ_ONLY_SQL_TRANSACTION
                    || code == "57P01" // admin_shutdown
                    || code == "57P02" // crash_shutdown
                    || code == "57P03" // cannot_connect_now (starting up, shutting down)
                    || code.starts_with("08") // connection_exception class
            }
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_errors_round_trip_through_sqlx_io() {
        let e = sqlx::Error::from(RouterError::NoPrimary {
            nodes: "a:1".into(),
            waited: Duration::from_secs(1),
        });
        assert!(is_failover_error(&e));
        let sqlx::Error::Io(io) = e else {
            panic!("not io")
        };
        let inner = io.into_inner().unwrap().downcast::<RouterError>().unwrap();
        assert!(matches!(*inner, RouterError::NoPrimary { .. }));
    }

    #[test]
    fn configuration_errors_become_sqlx_configuration_errors_and_are_not_retried() {
        fn f() -> sqlx::Result<()> {
            Err(RouterError::InvalidOption {
                option: "max_connections",
                problem: "must be at least 1".into(),
            })?;
            Ok(())
        }
        let e = f().unwrap_err();
        assert!(!is_failover_error(&e));
        let sqlx::Error::Configuration(inner) = e else {
            panic!("not configuration: {e:?}")
        };
        assert!(inner.to_string().contains("max_connections"));
        assert!(inner.downcast::<RouterError>().is_ok());
    }
}
