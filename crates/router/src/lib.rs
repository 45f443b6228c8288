//! Embeddable HA-aware read/write routing for Rust services over sqlx.
//!
//! sqlx connects to one host; a PostgreSQL cluster has a primary that moves and replicas that
//! lag. A [`Router`] keeps one sqlx pool per node and hands out two handles that work wherever
//! sqlx takes an executor:
//!
//! - [`Router::writer`]: the current primary. When a write fails because the node became
//!   read-only (SQLSTATE 25006) or unreachable, the router probes every node at once and moves
//!   writes to the new primary without a restart. Calls waiting for a connection simply run on
//!   the new primary; a call that failed is returned to the caller unless it was run through
//!   [`Router::idempotent`].
//! - [`Router::reader`]: a replica within the lag bound (bytes and/or seconds), chosen
//!   round-robin, least-lag or at random ([`ReaderPolicy`]); when none qualifies, the primary
//!   or an error ([`Fallback`]).
//! - [`Router::reader_after`]: read-your-writes. [`Router::write_token`] after a commit gives a
//!   [`WriteToken`] (a WAL position); a read with it goes to a replica that replayed that far,
//!   waits for one up to a bound, or goes to the primary ([`ReadYourWrites`]).
//!
//! Members come from a libpq-style multi-host URL, `DATABASE_URL` + `DATABASE_READ_URL`, a
//! pgha.toml, the failover agents' `/cluster` endpoint ([`AgentMembers`], so nodes added to
//! the cluster are picked up without a restart), or any other [`Discovery`]. Roles are never taken from the source: a background health
//! checker asks each node (`pg_is_in_recovery()`, replay LSN against the primary's current
//! LSN) every `health_interval`. [`Router::nodes`] and [`Router::metrics`] expose what it sees.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use pgha_router::{Fallback, ReaderPolicy, Router, RouterOptions};
//!
//! let router = Router::builder()
//!     .from_env() // DATABASE_URL=postgres://app:pw@db1,db2,db3/app
//!     .options(RouterOptions {
//!         reader_policy: ReaderPolicy::LeastLag,
//!         max_lag_bytes: Some(1 << 20),
//!         max_lag: Some(Duration::from_secs(2)),
//!         fallback: Fallback::Primary,
//!         ..RouterOptions::default()
//!     })
//!     .build()
//!     .await?;
//! let mut tx = router.writer().begin().await?;
//! sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
//!     .execute(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! let token = router.write_token().await?;
//! let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1")
//!     .fetch_one(&router.reader_after(token))
//!     .await?;
//! # let _ = balance;
//! // Code written for `&PgPool` (any `sqlx::Acquire`) takes a handle too.
//! use sqlx::Acquire;
//! let mut conn = router.reader().acquire().await?;
//! sqlx::query("SELECT 1").execute(&mut *conn).await?;
//! # Ok(()) }
//! ```

mod agent_members;
mod discovery;
mod error;
mod handles;
#[cfg(feature = "tower")]
pub mod layer;
mod metrics;
mod node;
mod options;
pub mod prometheus;
mod router;
mod shared;
mod stream;
pub mod url;

pub use agent_members::AgentMembers;
pub use discovery::{AppCredentials, Discovery, Member, StaticMembers};
pub use error::{is_failover_error, Result, RouterError, READ_ONLY_SQL_TRANSACTION};
pub use handles::{Reader, ReplayedReader, WriteToken, Writer};
pub use metrics::{MetricsSnapshot, RouterMetrics};
pub use node::{NodeState, NodeStatus, Role};
pub use options::{Fallback, ReadYourWrites, ReaderPolicy, RouterOptions};
pub use router::{Router, RouterBuilder};
pub use tokio_util::sync::CancellationToken;
