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

/// No supervisor deadline (PostgreSQL dies with the agent only).
#[derive(Debug)]
pub struct NoWatchdog;

impl Watchdog for NoWatchdog {
    fn arm(&self, _deadline: Option<tokio::time::Instant>) -> pgha_agent_core::Result<()> {
        Ok(())
    }
}

/// The agent of `node` and the state it shares with its API.
pub fn build(cfg: Arc<PghaConfig>, node: &str, dcs: Arc<dyn Dcs>) -> Result<(Agent, Arc<Shared>)> {
    let ctx = Ctx::new(cfg.clone(), node).ok_or_else(|| FailoverError::UnknownNode(node.into()))?;
    let local = LocalInstance::from_config(&cfg, &ctx.me)?.with_timeout(Duration::from_secs(60));
    let pg = Arc::new(LocalNode::new(
        cfg.clone(),
        ctx.me.clone(),
        SupervisedInstance::new(local),
    ));
    let peers = Arc::new(NetPeers::new(cfg.clone())?);
    let (shared, events) = Shared::new(ctx.t.failsafe_quarantine);
    let fx = Effects {
        dcs,
        pg,
        peers,
        watchdog: Arc::new(NoWatchdog),
        clock: Arc::new(pgha_agent_core::ports::SystemClock),
    };
    Ok((Agent::new(ctx, fx, shared.clone(), events), shared))
}
