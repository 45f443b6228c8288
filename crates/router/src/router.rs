//! [`Router`] and [`RouterBuilder`]: build from URLs, the environment, a pgha.toml or any
//! [`Discovery`]; hand out the writer and reader handles; follow failovers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use pgha_config::PghaConfig;
use pgha_postgres::Lsn;

use crate::agent_members::AgentMembers;
use crate::discovery::{no_nodes, AppCredentials, Discovery, StaticMembers};
use crate::error::is_failover_error;
use crate::handles::{Reader, ReplayedReader, WriteToken, Writer};
use crate::metrics::RouterMetrics;
use crate::node::NodeStatus;
use crate::shared::{health_task, Shared};
use crate::{Result, RouterError, RouterOptions};

/// An HA-aware read/write router over sqlx pools, one pool per PostgreSQL node.
///
/// Cheap to clone (one `Arc`); all clones share pools and health. A background task probes
/// every node each `health_interval` and at once when a call fails in a way that says the
/// primary moved; it stops when the last clone is dropped, [`Router::close`] is called, or the
/// [`CancellationToken`] given to the builder is cancelled.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pgha_router::Router;
///
/// let router = Router::connect(
///     "postgres://app:secret@db1:5432,db2:5432,db3:5432/app?target_session_attrs=read-write",
/// )
/// .await?;
/// sqlx::query("INSERT INTO items (name) VALUES ($1)")
///     .bind("pen")
///     .execute(router.writer())
///     .await?;
/// let token = router.write_token().await?;
/// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
///     .fetch_one(&router.reader_after(token))  // sees the insert
///     .await?;
/// let m: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
///     .fetch_one(router.reader())  // any replica within the lag bound
///     .await?;
/// # let _ = (n, m);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Router {
    shared: Arc<Shared>,
    writer: Writer,
    reader: Reader,
}

/// Builds a [`Router`]: one member source, options, an optional shutdown token.
#[derive(Debug, Default)]
pub struct RouterBuilder {
    discovery: Option<Result<Arc<dyn Discovery>>>,
    options: RouterOptions,
    cancel: Option<CancellationToken>,
}

impl RouterBuilder {
    /// Members from a libpq-style multi-host URL.
    pub fn url(mut self, url: &str) -> Self {
        self.discovery = Some(StaticMembers::from_url(url).map(|d| Arc::new(d) as _));
        self
    }

    /// Members from a write URL and an optional read URL (each may list several hosts).
    pub fn urls(mut self, write: &str, read: Option<&str>) -> Self {
        self.discovery = Some(StaticMembers::from_url_pair(write, read).map(|d| Arc::new(d) as _));
        self
    }

    /// Members from `DATABASE_URL` and, when set, `DATABASE_READ_URL`.
    pub fn from_env(mut self) -> Self {
        self.discovery = Some(match std::env::var("DATABASE_URL") {
            Ok(w) => {
                let r = std::env::var("DATABASE_READ_URL").ok();
                StaticMembers::from_url_pair(&w, r.as_deref()).map(|d| Arc::new(d) as _)
            }
            Err(_) => Err(RouterError::MissingEnv {
                name: "DATABASE_URL".into(),
            }),
        });
        self
    }

    /// Members from a pgha.toml's `[[nodes]]`, as `app`, else as the `[router]` section's
    /// user, else as the superuser. A `[router]` section also sets the options (call
    /// [`Self::options`] afterwards to override them).
    pub fn config(mut self, config: &PghaConfig, app: Option<&AppCredentials>) -> Self {
        self.discovery = Some(StaticMembers::from_config(config, app).map(|d| Arc::new(d) as _));
        if let Some(r) = &config.router {
            self.options = RouterOptions::from_section(r);
        }
        self
    }

    /// Members from the failover agents' `/cluster` endpoint (the agents of a pgha.toml's
    /// `[[nodes]]`), so nodes added to the cluster are used without a restart; credentials and
    /// options as in [`Self::config`].
    pub fn agents(mut self, config: &PghaConfig, app: Option<&AppCredentials>) -> Self {
        self.discovery = Some(AgentMembers::from_config(config, app).map(|d| Arc::new(d) as _));
        if let Some(r) = &config.router {
            self.options = RouterOptions::from_section(r);
        }
        self
    }

    /// Members from any source (e.g. [`AgentMembers::new`] with agent addresses).
    pub fn discovery(mut self, d: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(Ok(d));
        self
    }

    pub fn options(mut self, options: RouterOptions) -> Self {
        self.options = options;
        self
    }

    /// Stops the health task when cancelled (graceful shutdown of the embedding service).
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Checks the options, runs a first health round and starts the health task. Succeeds
    /// even when no node answers yet (a service may start during an outage); calls then wait
    /// up to `failover_wait`.
    pub async fn build(self) -> Result<Router> {
        self.options.validate()?;
        let discovery = self.discovery.ok_or(RouterError::InvalidOption {
            option: "discovery",
            problem: "no member source: call url(), urls(), from_env(), config() or discovery()"
                .into(),
        })??;
        let shared = Arc::new(Shared::new(
            self.options,
            discovery.clone(),
            self.cancel.unwrap_or_default(),
        ));
        shared.refresh_members().await?;
        if shared.view().nodes.is_empty() {
            return Err(no_nodes(discovery.as_ref()));
        }
        shared.health_round().await;
        if shared.primary().is_none() {
            tracing::warn!(source = %discovery.describe(), "router started without a reachable primary");
        }
        tokio::spawn(health_task(
            Arc::downgrade(&shared),
            shared.round_wanted.clone(),
        ));
        Ok(Router {
            writer: Writer {
                shared: shared.clone(),
            },
            reader: Reader {
                shared: shared.clone(),
            },
            shared,
        })
    }
}

impl Router {
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// A router over the hosts of a multi-host URL, with default options.
    pub async fn connect(url: &str) -> Result<Router> {
        Router::builder().url(url).build().await
    }

    /// A router from `DATABASE_URL` (+ `DATABASE_READ_URL`), with default options.
    pub async fn from_env() -> Result<Router> {
        Router::builder().from_env().build().await
    }

    /// Writes and transactions go here: `sqlx::query(..).execute(router.writer())`.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Reads that may be slightly stale (within the lag bound) go here.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Reads that must see the write `token` stands for: `.fetch_one(&router.reader_after(t))`.
    pub fn reader_after(&self, token: WriteToken) -> ReplayedReader {
        ReplayedReader {
            shared: self.shared.clone(),
            lsn: token.0,
        }
    }

    /// Reads with an optional token (a request that may or may not carry one).
    pub fn reader_for(&self, token: Option<WriteToken>) -> ReplayedReader {
        self.reader_after(token.unwrap_or(WriteToken(Lsn::ZERO)))
    }

    /// A token covering every write committed before this call: the primary's WAL insert
    /// position, read after the commit returned. Any commit that returned before is at or
    /// below it (its commit record was inserted before), so a replica whose replay LSN reached
    /// it has the write. It may cover later writes of others too, which costs at most a wait.
    pub async fn write_token(&self) -> Result<WriteToken> {
        let (node, mut conn) = self.shared.acquire_primary().await?;
        let lsn: Lsn = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()")
            .fetch_one(&mut *conn)
            .await
            .map_err(|source| {
                if is_failover_error(&source) {
                    self.shared.suspect(&node, &source);
                }
                RouterError::Query {
                    node: node.name.clone(),
                    source,
                }
            })?;
        Ok(WriteToken(lsn))
    }

    /// Runs `f` and, when it fails because the primary moved (25006, a broken connection),
    /// waits for the router to find the new primary and runs it again, up to `failover_wait`.
    /// Only for calls that are safe to repeat: a failed call may have committed.
    ///
    /// ```no_run
    /// # async fn demo(router: pgha_router::Router) -> Result<(), sqlx::Error> {
    /// router
    ///     .idempotent(|| {
    ///         sqlx::query("INSERT INTO seen (id) VALUES (42) ON CONFLICT DO NOTHING")
    ///             .execute(router.writer())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn idempotent<T, F, Fut>(&self, mut f: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.shared.opts.failover_wait;
        let mut pause = Duration::from_millis(10);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_failover_error(&e) && tokio::time::Instant::now() < deadline => {
                    RouterMetrics::inc(&self.shared.metrics.retries);
                    tracing::debug!(error = %e, "retrying idempotent call after a failover error");
                    // The next call waits for a primary inside acquire; a growing pause keeps a
                    // node that still claims the seat from turning this into a busy loop.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every node's health at the last probe.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let view = self.shared.view();
        view.nodes
            .iter()
            .map(|n| {
                let w = view.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, n));
                n.status(w)
            })
            .collect()
    }

    /// The sqlx pool of the node that is primary now, for tools that take a `&PgPool` (or any
    /// [`sqlx::Acquire`]) and run once, such as migrations:
    /// `migrator.run(&router.primary_pool()?)`. The pool stays bound to that node: after a
    /// failover its connections fail (25006 or refused) instead of following the primary, so
    /// ask again for each task, and prefer [`Router::writer`] (also an `Acquire`) for
    /// anything long-lived. Fails with [`RouterError::NoPrimary`] when no node is primary at
    /// the moment (it does not wait: see [`Router::writer`] for calls that do).
    pub fn primary_pool(&self) -> Result<sqlx::PgPool> {
        match self.shared.primary() {
            Some(node) => Ok(node.pool.clone()),
            None => Err(self.shared.no_primary_now()),
        }
    }

    /// The counters of [`Router::metrics`] and the per-node state of [`Router::nodes`] in the
    /// Prometheus text format (`pgha_router_*`), for the service's own `/metrics` route; serve
    /// it with [`crate::prometheus::CONTENT_TYPE`].
    pub fn prometheus(&self) -> String {
        crate::prometheus::render(&self.metrics().snapshot(), &self.nodes())
    }

    /// Name of the node writes go to now.
    pub fn primary_name(&self) -> Option<String> {
        self.shared.primary().map(|p| p.name.clone())
    }

    /// Counters since start.
    pub fn metrics(&self) -> &RouterMetrics {
        &self.shared.metrics
    }

    /// The options in force.
    pub fn options(&self) -> &RouterOptions {
        &self.shared.opts
    }

    /// Runs a health round now and returns when it is done (tests, admin endpoints).
    pub async fn refresh(&self) {
        self.shared.health_round().await;
    }

    /// Stops the health task and closes every pool (waits for checked-out connections).
    pub async fn close(&self) {
        self.shared.cancel.cancel();
        for n in self.shared.view().nodes.iter() {
            n.pool.close().await;
        }
    }
}
