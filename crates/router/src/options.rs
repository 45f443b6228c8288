//! How the router picks nodes, how fresh a replica must be, and how often it checks.

use std::time::Duration;

/// Which qualifying replica serves a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReaderPolicy {
    /// Each read goes to the next qualifying replica in turn.
    #[default]
    RoundRobin,
    /// The qualifying replica with the fewest bytes of lag (ties: the first in node order).
    LeastLag,
    /// A qualifying replica chosen at random.
    Random,
}

/// What a read does when no replica qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// Read from the primary instead.
    #[default]
    Primary,
    /// Return an error ([`crate::RouterError::NoReplica`] / [`crate::RouterError::NotReplayed`]).
    Error,
}

/// How a read carrying a [`crate::WriteToken`] finds a node that has the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadYourWrites {
    /// How long to wait for a qualifying replica to replay up to the token (0: check once).
    pub wait: Duration,
    /// What to do when none did within `wait`.
    pub then: Fallback,
}

impl Default for ReadYourWrites {
    fn default() -> Self {
        ReadYourWrites {
            wait: Duration::from_millis(100),
            then: Fallback::Primary,
        }
    }
}

/// Everything tunable about a [`crate::Router`]; `Default` is a sane start.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Which replica serves a read.
    pub reader_policy: ReaderPolicy,
    /// A replica more than this many bytes behind the primary serves no reads (None: no bound).
    pub max_lag_bytes: Option<u64>,
    /// A replica more than this far behind in time serves no reads (None: no bound). Measured as
    /// the age of its last replayed transaction while it is behind in bytes, 0 when caught up.
    pub max_lag: Option<Duration>,
    /// When no replica qualifies for a read.
    pub fallback: Fallback,
    /// Reads with a [`crate::WriteToken`].
    pub read_your_writes: ReadYourWrites,
    /// Time between health rounds (role, LSN, lag of every node).
    pub health_interval: Duration,
    /// Bound on one node's health probe (connect + query).
    pub check_timeout: Duration,
    /// Watchdog period: when acquires on a node are waiting and none finished for this long,
    /// the router probes every node at once (a dead host makes sqlx's pool retry connecting
    /// silently until its acquire timeout).
    pub suspect_after: Duration,
    /// How long a write waits for a (new) primary before it fails with
    /// [`crate::RouterError::NoPrimary`].
    pub failover_wait: Duration,
    /// Connections per node pool.
    pub max_connections: u32,
    /// Idle connections kept per node pool.
    pub min_connections: u32,
    /// `application_name` of the router's connections.
    pub application_name: String,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            reader_policy: ReaderPolicy::RoundRobin,
            max_lag_bytes: Some(16 << 20),
            max_lag: Some(Duration::from_secs(10)),
            fallback: Fallback::Primary,
            read_your_writes: ReadYourWrites::default(),
            health_interval: Duration::from_millis(500),
            check_timeout: Duration::from_secs(2),
            suspect_after: Duration::from_millis(100),
            failover_wait: Duration::from_secs(30),
            max_connections: 10,
            min_connections: 0,
            application_name: "pgha-router".into(),
        }
    }
}

impl RouterOptions {
    /// The options a pgha.toml `[router]` section sets; the rest stay at their defaults.
    pub fn from_section(r: &pgha_config::RouterSection) -> RouterOptions {
        RouterOptions {
            reader_policy: match r.reader_policy {
                pgha_config::RouterReaderPolicy::RoundRobin => ReaderPolicy::RoundRobin,
                pgha_config::RouterReaderPolicy::LeastLag => ReaderPolicy::LeastLag,
                pgha_config::RouterReaderPolicy::Random => ReaderPolicy::Random,
            },
            max_lag_bytes: r.max_lag_bytes.map(|b| b.bytes()),
            max_lag: r.max_lag,
            fallback: match r.fallback {
                pgha_config::RouterFallback::Primary => Fallback::Primary,
                pgha_config::RouterFallback::Error => Fallback::Error,
            },
            read_your_writes: ReadYourWrites {
                wait: r.read_your_writes_wait,
                ..ReadYourWrites::default()
            },
            health_interval: r.health_interval,
            failover_wait: r.failover_wait,
            max_connections: r.max_connections,
            ..RouterOptions::default()
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |option: &'static str, problem: &str| {
            Err(crate::RouterError::InvalidOption {
                option,
                problem: problem.into(),
            })
        };
        if self.health_interval.is_zero() {
            return bad("health_interval", "must be longer than 0");
        }
        if self.check_timeout.is_zero() {
            return bad("check_timeout", "must be longer than 0");
        }
        if self.suspect_after.is_zero() {
            return bad("suspect_after", "must be longer than 0");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.min_connections > self.max_connections {
            return bad("min_connections", "must not exceed max_connections");
        }
        Ok(())
    }

    /// The lag bound as text, for messages.
    pub(crate) fn bound_text(&self) -> String {
        match (self.max_lag_bytes, self.max_lag) {
            (Some(b), Some(t)) => format!("{b} bytes, {t:?}"),
            (Some(b), None) => format!("{b} bytes"),
            (None, Some(t)) => format!("{t:?}"),
            (None, None) => "none".into(),
        }
    }
}
