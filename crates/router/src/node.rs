//! One node as the router sees it: its pool, its probe connection, its last known health.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use pgha_postgres::Lsn;

use crate::discovery::Member;
use crate::RouterOptions;

/// A node's role as it reports it (`pg_is_in_recovery()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// How the router treats a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not probed yet.
    Unknown,
    /// Reachable; a replica in this state is within the lag bound and serves reads.
    Up,
    /// A replica past the lag bound: it serves no reads until it catches up.
    Lagging,
    /// Unreachable, or its probe failed or timed out.
    Down,
}

/// A node's health at the last probe, for status pages and metrics exporters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub state: NodeState,
    pub role: Option<Role>,
    /// True for the node writes go to.
    pub is_writer: bool,
    /// Primary: its current WAL LSN; replica: its replay LSN.
    pub lsn: Option<Lsn>,
    /// Replica: bytes behind the primary.
    pub lag_bytes: Option<u64>,
    /// Replica: time behind (age of the last replayed transaction while behind; 0 when caught up).
    pub lag: Option<Duration>,
    /// Primary: its timeline.
    pub timeline: Option<u64>,
    /// Time since the last successful probe.
    pub last_ok: Option<Duration>,
    pub consecutive_failures: u64,
    /// Why the last probe failed.
    pub last_error: Option<String>,
    /// Connections open in this node's pool and how many of them are idle.
    pub pool_size: u32,
    pub pool_idle: usize,
}

/// An acquire in progress on a node (see [`Node::stuck`]).
pub(crate) struct Waiting<'a>(&'a Node);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.acquiring.fetch_sub(1, Relaxed);
        self.0.acquired.fetch_add(1, Relaxed);
    }
}

const ROLE_UNKNOWN: u8 = 0;
const ROLE_PRIMARY: u8 = 1;
const ROLE_REPLICA: u8 = 2;
const STATE_UNKNOWN: u8 = 0;
const STATE_UP: u8 = 1;
const STATE_LAGGING: u8 = 2;
const STATE_DOWN: u8 = 3;

/// What one probe found.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct Probe {
    pub in_recovery: bool,
    pub lsn: Option<Lsn>,
    pub replay_age_seconds: Option<f64>,
    pub timeline: Option<i64>,
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery() AS in_recovery, \
    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn, \
    CASE WHEN pg_is_in_recovery() \
         THEN EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END AS replay_age_seconds, \
    CASE WHEN pg_is_in_recovery() THEN NULL \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END AS timeline";

/// `Debug` shows the node's state, never its connect options (they hold the password).
pub(crate) struct Node {
    pub name: String,
    pub address: String,
    pub pool: PgPool,
    probe_options: PgConnectOptions,
    probe_conn: tokio::sync::Mutex<Option<PgConnection>>,
    role: AtomicU8,
    state: AtomicU8,
    /// Replays only move forward on a replica, so token reads may raise it (fetch_max) between
    /// probes; probes overwrite it.
    lsn: AtomicU64,
    has_lsn: AtomicBool,
    lag_bytes: AtomicU64,
    lag_micros: AtomicU64,
    timeline: AtomicU64,
    failures: AtomicU64,
    /// Acquires waiting on this node's pool, acquires finished, and the finished count the
    /// watchdog saw last: waiting acquires and none finished for a whole tick = suspect.
    acquiring: AtomicU64,
    acquired: AtomicU64,
    acquired_seen: AtomicU64,
    last_ok: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("role", &self.role())
            .field("state", &self.state())
            .field("lsn", &self.lsn.load(Relaxed))
            .field("lag_bytes", &self.lag_bytes.load(Relaxed))
            .field("failures", &self.failures.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) fn new(m: &Member, opts: &RouterOptions) -> Node {
        let options = m
            .options()
            .clone()
            .application_name(&opts.application_name)
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .min_connections(opts.min_connections)
            // The router gives up on its own (failover_wait) and switches nodes before that;
            // the pool must not give up first.
            .acquire_timeout(opts.failover_wait.max(Duration::from_secs(1)))
            .connect_lazy_with(options.clone());
        Node {
            name: m.name.clone(),
            address: m.address.clone(),
            pool,
            probe_options: options.application_name(&format!("{} health", opts.application_name)),
            probe_conn: tokio::sync::Mutex::new(None),
            role: AtomicU8::new(ROLE_UNKNOWN),
            state: AtomicU8::new(STATE_UNKNOWN),
            lsn: AtomicU64::new(0),
            has_lsn: AtomicBool::new(false),
            lag_bytes: AtomicU64::new(0),
            lag_micros: AtomicU64::new(0),
            timeline: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            acquiring: AtomicU64::new(0),
            acquired: AtomicU64::new(0),
            acquired_seen: AtomicU64::new(0),
            last_ok: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Counts an acquire as waiting until the guard drops.
    pub(crate) fn waiting(&self) -> Waiting<'_> {
        self.acquiring.fetch_add(1, Relaxed);
        Waiting(self)
    }

    /// True when acquires have been waiting and none finished since the last call: the node
    /// may be gone while sqlx's pool silently retries refused connections.
    pub(crate) fn stuck(&self) -> bool {
        let done = self.acquired.load(Relaxed);
        let before = self.acquired_seen.swap(done, Relaxed);
        self.acquiring.load(Relaxed) > 0 && done == before
    }

    /// Same connection target (used to keep a node's pool across rediscoveries).
    pub(crate) fn same_member(&self, m: &Member) -> bool {
        self.name == m.name && self.address == m.address
    }

    /// Asks the node for its role and position on the probe connection, reconnecting when
    /// needed, all within `timeout`.
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<Probe, String> {
        let mut guard = self.probe_conn.lock().await;
        let res = tokio::time::timeout(timeout, async {
            if guard.is_none() {
                *guard = Some(
                    self.probe_options
                        .connect()
                        .await
                        .map_err(|e| format!("connect: {e}"))?,
                );
            }
            let conn = guard.as_mut().ok_or("no probe connection")?;
            sqlx::query_as::<_, Probe>(PROBE_SQL)
                .fetch_one(conn)
                .await
                .map_err(|e| format!("probe query: {e}"))
        })
        .await
        .unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}")));
        if res.is_err() {
            if let Some(c) = guard.take() {
                // Best effort: the server may be gone already.
                let _ = tokio::time::timeout(Duration::from_millis(100), c.close()).await;
            }
        }
        res
    }

    pub(crate) fn record_ok(
        &self,
        role: Role,
        lsn: Option<Lsn>,
        lag_bytes: u64,
        lag: Duration,
        eligible: bool,
        timeline: Option<i64>,
    ) {
        self.role.store(
            match role {
                Role::Primary => ROLE_PRIMARY,
                Role::Replica => ROLE_REPLICA,
            },
            Relaxed,
        );
        match lsn {
            Some(l) => {
                self.lsn.store(l.0, Relaxed);
                self.has_lsn.store(true, Relaxed);
            }
            None => self.has_lsn.store(false, Relaxed),
        }
        self.lag_bytes.store(lag_bytes, Relaxed);
        self.lag_micros
            .store(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.timeline.store(
            timeline.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
            Relaxed,
        );
        self.failures.store(0, Relaxed);
        if let Ok(mut t) = self.last_ok.lock() {
            *t = Some(Instant::now());
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        let state = if role == Role::Replica && !eligible {
            STATE_LAGGING
        } else {
            STATE_UP
        };
        self.state.store(state, Relaxed);
    }

    pub(crate) fn record_down(&self, error: String) {
        self.state.store(STATE_DOWN, Relaxed);
        self.failures.fetch_add(1, Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }

    /// Takes the node out of reads (and out of the writer seat, see `Shared::suspect`) until
    /// the next probe says otherwise.
    pub(crate) fn suspect(&self, why: String) {
        if self.state.load(Relaxed) != STATE_DOWN {
            self.record_down(why);
        }
    }

    pub(crate) fn role(&self) -> Option<Role> {
        match self.role.load(Relaxed) {
            ROLE_PRIMARY => Some(Role::Primary),
            ROLE_REPLICA => Some(Role::Replica),
            _ => None,
        }
    }

    pub(crate) fn state(&self) -> NodeState {
        match self.state.load(Relaxed) {
            STATE_UP => NodeState::Up,
            STATE_LAGGING => NodeState::Lagging,
            STATE_DOWN => NodeState::Down,
            _ => NodeState::Unknown,
        }
    }

    /// A replica within the lag bound, reachable at the last probe.
    #[inline]
    pub(crate) fn serves_reads(&self) -> bool {
        self.state.load(Relaxed) == STATE_UP && self.role.load(Relaxed) == ROLE_REPLICA
    }

    pub(crate) fn lsn(&self) -> Option<Lsn> {
        self.has_lsn
            .load(Relaxed)
            .then(|| Lsn(self.lsn.load(Relaxed)))
    }

    /// Raises the known replay position after a live check saw `lsn`.
    pub(crate) fn saw_lsn(&self, lsn: Lsn) {
        self.lsn.fetch_max(lsn.0, Relaxed);
        self.has_lsn.store(true, Relaxed);
    }

    pub(crate) fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Relaxed)
    }

    pub(crate) fn status(&self, is_writer: bool) -> NodeStatus {
        let role = self.role();
        let replica = role == Some(Role::Replica);
        let up = !matches!(self.state(), NodeState::Down | NodeState::Unknown);
        NodeStatus {
            name: self.name.clone(),
            address: self.address.clone(),
            state: self.state(),
            role,
            is_writer,
            lsn: self.lsn(),
            lag_bytes: (replica && up).then(|| self.lag_bytes()),
            lag: (replica && up).then(|| Duration::from_micros(self.lag_micros.load(Relaxed))),
            timeline: match self.timeline.load(Relaxed) {
                0 => None,
                t => Some(t),
            },
            last_ok: self
                .last_ok
                .lock()
                .ok()
                .and_then(|t| t.map(|t| t.elapsed())),
            consecutive_failures: self.failures.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            pool_size: self.pool.size(),
            pool_idle: self.pool.num_idle(),
        }
    }
}
