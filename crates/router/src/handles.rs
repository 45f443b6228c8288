//! The handles queries run through: [`Writer`], [`Reader`] and [`ReplayedReader`], each an sqlx
//! [`Executor`] (`sqlx::query(..).execute(router.writer())`) that picks its node per call, and
//! an sqlx [`Acquire`] (a connection or transaction on the node it picks now), like `&PgPool`.

use std::fmt;
use std::sync::Arc;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Acquire, Describe, Either, Execute, Executor, Postgres, Transaction};

use pgha_postgres::Lsn;

use crate::error::{is_failover_error, READ_ONLY_SQL_TRANSACTION};
use crate::node::Node;
use crate::shared::Shared;
use crate::stream::OwnedStream;
use crate::{Result, RouterError};

/// A position in the primary's WAL that a write reached; a read carrying it sees the write.
/// Get one from [`crate::Router::write_token`] after the write committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteToken(pub Lsn);

impl WriteToken {
    /// The WAL position.
    pub fn lsn(&self) -> Lsn {
        self.0
    }
    /// The later of two tokens (a session that wrote twice needs the second).
    pub fn max(self, other: WriteToken) -> WriteToken {
        std::cmp::max(self, other)
    }
}

impl fmt::Display for WriteToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for WriteToken {
    type Err = pgha_postgres::PgError;
    /// Parses `16/B374D848`, e.g. from a cookie or header carrying the token between requests.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(WriteToken)
    }
}

/// Which node a handle's calls go to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Primary,
    Replica,
    Replayed(Lsn),
}

impl Target {
    async fn acquire(self, shared: &Shared) -> Result<(Arc<Node>, PoolConnection<Postgres>)> {
        match self {
            Target::Primary => shared.acquire_primary().await,
            Target::Replica => shared.acquire_reader().await,
            // `reader_for(None)`: an ordinary read.
            Target::Replayed(lsn) if lsn == Lsn::ZERO => shared.acquire_reader().await,
            Target::Replayed(lsn) => shared.acquire_replayed(lsn).await,
        }
    }
}

/// Writes and transactions: always the current primary. A failure that says the primary moved
/// (SQLSTATE 25006, a broken connection) takes the node out at once and starts rediscovery;
/// the failed call is returned to the caller, who may retry it with
/// [`crate::Router::idempotent`]. Waiting for a connection never sends the query, so a write
/// issued during a failover waits (up to `failover_wait`) and runs once on the new primary.
#[derive(Clone)]
pub struct Writer {
    pub(crate) shared: Arc<Shared>,
}

/// Reads: a replica within the lag bound, per the reader policy, else the fallback.
#[derive(Clone)]
pub struct Reader {
    pub(crate) shared: Arc<Shared>,
}

/// Reads that must see a write: a replica that replayed the token's LSN, else (after
/// `read_your_writes.wait`) the fallback. From [`crate::Router::reader_after`].
#[derive(Clone)]
pub struct ReplayedReader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lsn: Lsn,
}

macro_rules! handle_common {
    ($t:ty, $name:literal, $target:expr) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($name).finish_non_exhaustive()
            }
        }

        impl $t {
            /// A pooled connection on the node this handle routes to now (for several
            /// statements on one session). Hold it briefly: it pins that node.
            pub async fn acquire(&self) -> Result<PoolConnection<Postgres>> {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                target.acquire(&self.shared).await.map(|(_, c)| c)
            }

            /// Begins a transaction on the node this handle routes to now.
            pub async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                begin_on(&self.shared, target).await
            }
        }

        /// As `&PgPool` is: generic code taking `impl Acquire<'c, Database = Postgres>` takes
        /// the handle too. Errors as [`sqlx::Error`] (see `From<RouterError>`).
        impl<'c> Acquire<'c> for &'_ $t {
            type Database = Postgres;
            type Connection = PoolConnection<Postgres>;

            fn acquire(self) -> BoxFuture<'c, Result<PoolConnection<Postgres>, sqlx::Error>> {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = self.shared.clone();
                Box::pin(async move {
                    target
                        .acquire(&shared)
                        .await
                        .map(|(_, c)| c)
                        .map_err(sqlx::Error::from)
                })
            }

            fn begin(self) -> BoxFuture<'c, Result<Transaction<'c, Postgres>, sqlx::Error>> {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = self.shared.clone();
                Box::pin(async move { begin_on(&shared, target).await.map_err(sqlx::Error::from) })
            }
        }

        impl<'c> Executor<'c> for &'c $t {
            type Database = Postgres;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
            where
                'c: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = &*self.shared;
                Box::pin(OwnedStream::new(move |y| async move {
                    let (node, mut conn) =
                        target.acquire(shared).await.map_err(sqlx::Error::from)?;
                    let mut s = (&mut *conn).fetch_many(query);
                    while let Some(v) = s
                        .try_next()
                        .await
                        .map_err(|e| on_error(shared, target, &node, e))?
                    {
                        y.send(v).await;
                    }
                    Ok(())
                }))
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
            where
                'c: 'e,
                E: 'q + Execute<'q, Postgres>,
            {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = &*self.shared;
                Box::pin(async move {
                    let (node, mut conn) =
                        target.acquire(shared).await.map_err(sqlx::Error::from)?;
                    (&mut *conn)
                        .fetch_optional(query)
                        .await
                        .map_err(|e| on_error(shared, target, &node, e))
                })
            }

            fn prepare_with<'e, 'q: 'e>(
                self,
                sql: &'q str,
                parameters: &'e [PgTypeInfo],
            ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
            where
                'c: 'e,
            {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = &*self.shared;
                Box::pin(async move {
                    let (node, mut conn) =
                        target.acquire(shared).await.map_err(sqlx::Error::from)?;
                    (&mut *conn)
                        .prepare_with(sql, parameters)
                        .await
                        .map_err(|e| on_error(shared, target, &node, e))
                })
            }

            fn describe<'e, 'q: 'e>(
                self,
                sql: &'q str,
            ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
            where
                'c: 'e,
            {
                #[allow(clippy::redundant_closure_call)]
                let target = ($target)(self);
                let shared = &*self.shared;
                Box::pin(async move {
                    let (node, mut conn) =
                        target.acquire(shared).await.map_err(sqlx::Error::from)?;
                    (&mut *conn)
                        .describe(sql)
                        .await
                        .map_err(|e| on_error(shared, target, &node, e))
                })
            }
        }
    };
}

handle_common!(Writer, "Writer", |_: &Writer| Target::Primary);
handle_common!(Reader, "Reader", |_: &Reader| Target::Replica);
handle_common!(ReplayedReader, "ReplayedReader", |r: &ReplayedReader| {
    Target::Replayed(r.lsn)
});

/// A transaction on a connection from `target`; a failed `BEGIN` is noted like a failed query.
async fn begin_on(shared: &Shared, target: Target) -> Result<Transaction<'static, Postgres>> {
    let (node, conn) = target.acquire(shared).await?;
    Transaction::begin(conn, None)
        .await
        .map_err(|e| on_error(shared, target, &node, e))
        .map_err(|source| RouterError::Query {
            node: node.name.clone(),
            source,
        })
}

/// Notes a failure that says the node moved or went away; returns the error unchanged.
/// On a read, 25006 is the caller writing through a reader, not a node problem.
fn on_error(shared: &Shared, target: Target, node: &Arc<Node>, e: sqlx::Error) -> sqlx::Error {
    let read_only = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some(READ_ONLY_SQL_TRANSACTION));
    let moved = match target {
        Target::Primary => is_failover_error(&e),
        Target::Replica | Target::Replayed(_) => is_failover_error(&e) && !read_only,
    };
    if moved {
        shared.suspect(node, &e);
    }
    e
}
