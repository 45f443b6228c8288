//! Following the primary: observe the cluster through a [`LeaderSource`], and on every change of
//! the [`Topology`] re-render both files and RELOAD PgBouncer.
//!
//! [`PollingLeaderSource`] asks every node (pg_is_in_recovery, via `ClusterStatus`) each
//! `pooling.poll_interval`; a DCS watch from the failover agent can implement the same trait.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use pgha_config::PghaConfig;

use crate::console::run_once;
use crate::{
    fetch_scram_secrets, install, userlist_roles, ConsoleTarget, RenderedConfig, Result, Topology,
};

/// Where the follower learns who the primary is. The seam a DCS-watch implementation plugs into.
#[async_trait]
pub trait LeaderSource: Send {
    /// Waits for the next observation and returns it: the topology, or `Err` when none can be
    /// named right now (no single primary, nodes unreachable). The first call returns at once.
    async fn next(&mut self) -> Result<Topology>;
}

/// Polls every node each `interval`; while no single primary answers (a failover under way),
/// five times as often, so a promoted replica is picked up soon after it becomes writable.
#[derive(Debug)]
pub struct PollingLeaderSource {
    config: PghaConfig,
    interval: Duration,
    last: Option<Instant>,
    searching: bool,
}

impl PollingLeaderSource {
    pub fn new(config: PghaConfig, interval: Duration) -> Self {
        PollingLeaderSource {
            config,
            interval,
            last: None,
            searching: false,
        }
    }
}

#[async_trait]
impl LeaderSource for PollingLeaderSource {
    async fn next(&mut self) -> Result<Topology> {
        if let Some(last) = self.last {
            let wait = if self.searching {
                (self.interval / 5).max(Duration::from_millis(20))
            } else {
                self.interval
            };
            tokio::time::sleep_until((last + wait).into()).await;
        }
        self.last = Some(Instant::now());
        let observed = Topology::collect(&self.config).await;
        self.searching = matches!(observed, Err(crate::PoolingError::NoPrimary { .. }));
        observed
    }
}

/// What one step of the follower did (logged, and returned for tests and the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    /// Nothing changed.
    Unchanged,
    /// Files rewritten and PgBouncer reloaded for this topology.
    Applied(Topology),
    /// Files rewritten, but RELOAD failed (PgBouncer down?); retried on the next observation.
    WrittenNotReloaded { topology: Topology, error: String },
    /// No topology could be observed; PgBouncer keeps its current configuration.
    NoTopology { error: String },
}

/// The follower's state: what was last applied.
#[derive(Debug)]
pub struct Follower {
    config: PghaConfig,
    console: ConsoleTarget,
    applied: Option<Topology>,
    /// The files PgBouncer was last reloaded with, and when the secrets were last read.
    installed: Option<(RenderedConfig, Instant)>,
}

impl Follower {
    pub fn new(config: PghaConfig, console: ConsoleTarget) -> Self {
        Follower {
            config,
            console,
            applied: None,
            installed: None,
        }
    }

    /// The topology PgBouncer was last reloaded with.
    pub fn applied(&self) -> Option<&Topology> {
        self.applied.as_ref()
    }

    /// Handles one observation.
    pub async fn step(&mut self, observed: Result<Topology>) -> Result<FollowEvent> {
        let topology = match observed {
            Ok(t) => t,
            Err(e) if e.is_transient() => {
                return Ok(FollowEvent::NoTopology {
                    error: e.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        let refresh = crate::section(&self.config)?.userlist_refresh;
        let same = self.applied.as_ref() == Some(&topology);
        if same
            && self
                .installed
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < refresh)
        {
            return Ok(FollowEvent::Unchanged);
        }
        let rendered = match render_live(&self.config, &topology).await {
            Ok(r) => r,
            Err(e) if e.is_transient() || e.is_fixable_at_runtime() => {
                return Ok(FollowEvent::NoTopology {
                    error: e.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        if same && self.installed.as_ref().map(|(r, _)| r) == Some(&rendered) {
            // Secrets re-read, nothing changed.
            self.installed = Some((rendered, Instant::now()));
            return Ok(FollowEvent::Unchanged);
        }
        install(crate::section(&self.config)?, &rendered)?;
        match run_once(&self.console, "RELOAD").await {
            Ok(()) => {
                self.applied = Some(topology.clone());
                self.installed = Some((rendered, Instant::now()));
                Ok(FollowEvent::Applied(topology))
            }
            Err(e) => Ok(FollowEvent::WrittenNotReloaded {
                topology,
                error: e.to_string(),
            }),
        }
    }
}

/// One-shot: find the primary and replicas now, render, install and RELOAD. What a switchover
/// calls right after the promote, instead of waiting for the next poll.
pub async fn apply(config: &PghaConfig, console: &ConsoleTarget) -> Result<Topology> {
    let topology = Topology::collect(config).await?;
    install(
        crate::section(config)?,
        &render_live(config, &topology).await?,
    )?;
    run_once(console, "RELOAD").await?;
    Ok(topology)
}

/// Both files for `topology`, with the secrets read from pg_authid on its nodes (and
/// `pooling.auth_password` for auth_user): what `render`, `follow` and the local cluster write.
pub async fn render_live(config: &PghaConfig, topology: &Topology) -> Result<RenderedConfig> {
    let pool = crate::section(config)?;
    let users = fetch_scram_secrets(config, topology, &userlist_roles(pool)).await?;
    RenderedConfig::new(config, topology, &users)
}

/// Follows `source` until `shutdown` completes. A role missing or without a SCRAM password is
/// logged and retried (PgBouncer keeps its files); errors retrying cannot fix (no `[pooling]`,
/// a file that cannot be written) end the loop.
pub async fn follow(
    follower: &mut Follower,
    source: &mut dyn LeaderSource,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let mut last_problem: Option<String> = None;
    loop {
        let observed = tokio::select! {
            () = &mut shutdown => return Ok(()),
            o = source.next() => o,
        };
        let t = Instant::now();
        match follower.step(observed).await? {
            FollowEvent::Unchanged => last_problem = None,
            FollowEvent::Applied(topo) => {
                last_problem = None;
                tracing::info!(
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    "PgBouncer reloaded: {}",
                    topo.describe()
                );
            }
            FollowEvent::WrittenNotReloaded { topology, error } => {
                if last_problem.as_deref() != Some(error.as_str()) {
                    tracing::warn!(
                        "files written for {} but RELOAD failed (retrying): {error}",
                        topology.describe()
                    );
                }
                last_problem = Some(error);
            }
            FollowEvent::NoTopology { error } => {
                if last_problem.as_deref() != Some(error.as_str()) {
                    tracing::warn!("keeping PgBouncer's configuration: {error}");
                }
                last_problem = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::PoolingError;

    /// A source that reports what the test queued, like a DCS watch would.
    struct Queued(Vec<Result<Topology>>);

    #[async_trait]
    impl LeaderSource for Queued {
        async fn next(&mut self) -> Result<Topology> {
            self.0.remove(0)
        }
    }

    fn config() -> PghaConfig {
        pgha_config::load_from_str(
            "[cluster]\nname = \"t\"\n[pooling]\n[[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\ndata_dir = \"/d\"\n",
            "t",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn no_primary_keeps_the_config_and_permanent_errors_stop() {
        let c = config();
        let console = ConsoleTarget::from_config(&c).unwrap();
        let mut f = Follower::new(c, console);
        let mut src = Queued(vec![
            Err(PoolingError::NoPrimary {
                writable: vec!["a".into(), "b".into()],
                unreachable: vec![],
            }),
            Err(PoolingError::NoPoolingSection),
        ]);
        let ev = f.step(src.next().await).await.unwrap();
        assert!(
            matches!(&ev, FollowEvent::NoTopology { error } if error.contains("writable: [\"a\", \"b\"]")),
            "{ev:?}"
        );
        assert!(f.applied().is_none());
        let err = f.step(src.next().await).await.unwrap_err();
        assert!(matches!(err, PoolingError::NoPoolingSection), "{err}");
    }
}
