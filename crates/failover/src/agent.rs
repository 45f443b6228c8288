//! The agent of one node: the decision core's loop ([`pgha_agent_core::run::Agent`]) over the
//! real effects: etcd, the local PostgreSQL as this process's supervised child, the peers.
//!
//! Safety rules (docs/FAILOVER.md explains them and names the tests):
//! - PostgreSQL runs as this process's child and dies with it ([`SupervisedInstance`]), so a
//!   killed agent never leaves a writable primary behind.
//! - PostgreSQL starts as a primary only while this agent holds the leader key.
//! - A leader that cannot renew its lease stops PostgreSQL before the lease can expire for the
//!   others, unless failsafe is on and every replica confirms the DCS is down for it too.
//! - Releasing the lease always stops PostgreSQL first.

use std::sync::Arc;
use std::time::Duration;

use pgha_agent_core::exec::Effects;
use pgha_agent_core::ports::Watchdog;
use pgha_agent_core::Ctx;
use pgha_config::PghaConfig;
use pgha_postgres::{LocalInstance, SupervisedInstance};

pub use pgha_agent_core::run::Agent;
pub use pgha_agent_core::shared::{Shared, Snapshot};

use crate::dcs::Dcs;
use crate::node::LocalNode;
use crate::peers::NetPeers;
use crate::{FailoverError, Result};

/// The supervisor's deadline, moved by the decision core ([`Watchdog`]): the core's
/// deadline (the agent's monotonic clock) becomes one on CLOCK_BOOTTIME, which counts a
/// suspended machine too.
#[derive(Debug)]
pub struct SupervisorWatchdog {
    pg: SupervisedInstance,
}

impl Watchdog for SupervisorWatchdog {
    fn arm(&self, deadline: Option<tokio::time::Instant>) -> pgha_agent_core::Result<()> {
        let boot = deadline.map(|d| {
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            pgha_postgres::supervisor::boottime() + left
        });
        self.pg.set_deadline(boot)?;
        Ok(())
    }
}

/// The failsafe promise in a file beside the data dir: a restarted agent keeps it.
#[derive(Debug)]
struct FilePromise {
    path: std::path::PathBuf,
    /// How long a promise lasts: what an unreadable file is taken to promise from now.
    quarantine: Duration,
}

impl pgha_agent_core::ports::PromiseStore for FilePromise {
    fn save(&self, until_ms: u64) -> pgha_agent_core::Result<()> {
        pgha_postgres::files::write_atomic(
            &self.path,
            until_ms.to_string().as_bytes(),
            0o600,
            None,
        )?;
        Ok(())
    }

    fn load(&self) -> Option<u64> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(self.unreadable(&e.to_string())),
        };
        match text.trim().parse() {
            Ok(until) => Some(until),
            Err(e) => Some(self.unreadable(&format!("{e} (content {:?})", text.trim()))),
        }
    }
}

impl FilePromise {
    /// A promise we cannot read may be one we made: keep a whole one from now.
    fn unreadable(&self, why: &str) -> u64 {
        tracing::error!(
            path = %self.path.display(),
            "failsafe promise unreadable: {why}; not taking the lease for {:?}",
            self.quarantine
        );
        pgha_agent_core::now_ms() + self.quarantine.as_millis() as u64
    }
}

/// The agent of `node` and the state it shares with its API. `supervisor`: the executable
/// that runs the supervisor process (`pgha-agent` itself); without one PostgreSQL only dies
/// with the agent and no deadline is enforced. `first`: how a bootstrap makes the first
/// primary ([`crate::first::Initdb`] unless `bootstrap.method` says otherwise).
pub fn build(
    cfg: Arc<PghaConfig>,
    node: &str,
    dcs: Arc<dyn Dcs>,
    supervisor: Option<std::path::PathBuf>,
    first: Arc<dyn crate::first::FirstPrimary>,
) -> Result<(Agent, Arc<Shared>)> {
    let ctx = Ctx::new(cfg.clone(), node).ok_or_else(|| FailoverError::UnknownNode(node.into()))?;
    let local = LocalInstance::from_config(&cfg, &ctx.me)?.with_timeout(Duration::from_secs(60));
    let mut supervised = SupervisedInstance::new(local);
    if let Some(s) = supervisor {
        supervised = supervised.with_supervisor(s);
    }
    let watchdog = Arc::new(SupervisorWatchdog {
        pg: supervised.clone(),
    });
    let pg = Arc::new(
        LocalNode::new(
            cfg.clone(),
            ctx.me.clone(),
            supervised,
            ctx.t.promote_timeout,
        )
        .with_first_primary(first),
    );
    let peers = Arc::new(NetPeers::new(cfg.clone(), ctx.t.dead_probe_timeout)?);
    let clock: Arc<dyn pgha_agent_core::ports::WallClock> =
        Arc::new(pgha_agent_core::ports::SystemClock);
    let promises = Arc::new(FilePromise {
        path: ctx
            .me
            .run_dir()
            .join(format!("{}.failsafe-promise", ctx.me.name)),
        quarantine: ctx.t.failsafe_quarantine,
    });
    let (shared, events) = Shared::new(ctx.t.failsafe_quarantine, promises, clock.clone());
    let fx = Effects {
        dcs,
        pg,
        peers,
        watchdog,
        clock,
    };
    Ok((Agent::new(ctx, fx, shared.clone(), events), shared))
}
