//! The seams over the simulated world: [`SimDcs`], [`SimPg`], [`SimPeers`], [`SimWatchdog`],
//! [`SimClock`]. Every call of a frozen agent waits at its [`Gate`] (a SIGSTOP stops the
//! process wherever it is); a dead agent's calls never return.

mod dcs;
mod node;

pub use dcs::SimDcs;
pub use node::SimPg;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgha_config::PghaConfig;
use pgha_postgres::Lsn;
use tokio::sync::watch;
use tokio::time::Instant;

use super::world::{AgentState, Link, WorldRef};
use crate::ports::{Peers, PromiseStore, WallClock, Watchdog};
use crate::{CoreError, Result};

/// Where an agent process is: running, stopped (SIGSTOP), or gone.
#[derive(Debug, Clone)]
pub struct Gate(watch::Sender<AgentState>);

impl Gate {
    pub fn new() -> Self {
        Gate(watch::Sender::new(AgentState::Alive))
    }

    pub fn set(&self, s: AgentState) {
        self.0.send_replace(s);
    }

    pub fn state(&self) -> AgentState {
        *self.0.borrow()
    }

    /// Returns while the process runs; waits while it is frozen; never, once it is dead.
    pub async fn pass(&self) {
        let mut rx = self.0.subscribe();
        loop {
            let now = *rx.borrow_and_update();
            match now {
                AgentState::Alive => return,
                AgentState::Dead => std::future::pending::<()>().await,
                AgentState::Frozen => {}
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// What one agent instance's fakes share.
#[derive(Debug, Clone)]
pub struct Handle {
    pub world: WorldRef,
    pub me: String,
    pub gate: Gate,
    pub cfg: Arc<PghaConfig>,
}

impl Handle {
    fn lock(&self) -> std::sync::MutexGuard<'_, super::world::World> {
        match self.world.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d).await;
        self.gate.pass().await;
    }

    async fn latency(&self, lo: u64, hi: u64) {
        self.gate.pass().await;
        let d = self.lock().delay(lo, hi);
        self.pause(d).await;
    }
}

/// LSNs of the fake: 100 bytes per record above 1/0.
pub fn lsn(records: u64) -> Lsn {
    Lsn(0x1_000_000 + records * 100)
}

// ---------------------------------------------------------------- peers

/// The other nodes, through the simulated network.
#[derive(Debug, Clone)]
pub struct SimPeers {
    pub h: Handle,
}

impl SimPeers {
    /// The link to `node`; a dropped one costs `timeout` first.
    async fn reach(&self, node: &str, timeout: Duration) -> Link {
        self.h.latency(1, 2).await;
        let l = {
            let w = self.h.lock();
            match w.net.link(&self.h.me, node) {
                Link::Up if w.net.link(node, &self.h.me) == Link::Drop => Link::Drop,
                l => l,
            }
        };
        if l == Link::Drop {
            self.h.pause(timeout).await;
        }
        l
    }
}

#[async_trait]
impl Peers for SimPeers {
    async fn refused(&self, node: &str) -> bool {
        if self.reach(node, Duration::from_millis(300)).await != Link::Up {
            return self.h.lock().net.link(&self.h.me, node) == Link::Refuse;
        }
        let w = self.h.lock();
        let Some(n) = w.node(node) else { return false };
        !n.pg.running && n.agent == AgentState::Dead
    }

    async fn position(&self, node: &str) -> Option<Lsn> {
        if self.reach(node, Duration::from_millis(300)).await != Link::Up {
            return None;
        }
        let w = self.h.lock();
        let pg = &w.node(node)?.pg;
        (pg.ready(Instant::now()) && pg.in_recovery())
            .then(|| lsn(pg.data.as_ref().map_or(0, |d| d.lsn())))
    }

    async fn create_slot_on(&self, node: &str, slot: &str) -> Result<()> {
        if self.reach(node, Duration::from_secs(1)).await != Link::Up {
            return Err(CoreError::peer(node, "create slot", "unreachable"));
        }
        let mut w = self.h.lock();
        let now = Instant::now();
        if !w.nodes.get(node).is_some_and(|n| n.pg.ready(now)) {
            return Err(CoreError::peer(node, "create slot", "connection refused"));
        }
        w.pg(node).slots.insert(slot.into());
        Ok(())
    }

    async fn received_lsn(&self, node: &str) -> Result<Option<Lsn>> {
        if self.reach(node, Duration::from_secs(1)).await != Link::Up {
            return Err(CoreError::peer(node, "received position", "unreachable"));
        }
        let w = self.h.lock();
        let pg = &w.nodes[node].pg;
        if !pg.ready(Instant::now()) {
            return Err(CoreError::peer(
                node,
                "received position",
                "connection refused",
            ));
        }
        Ok(pg.data.as_ref().map(|d| lsn(d.lsn())))
    }

    async fn ask_failsafe(&self, node: &str, leader: &str, promise: Duration) -> Result<()> {
        let timeout = Duration::from_millis(500);
        if self.reach(node, timeout).await != Link::Up {
            return Err(CoreError::peer(node, "failsafe", "unreachable"));
        }
        let (state, shared) = {
            let w = self.h.lock();
            let n = &w.nodes[node];
            (n.agent, n.shared.clone())
        };
        match (state, shared) {
            (AgentState::Alive, Some(s)) => {
                let until = s
                    .confirm_failsafe(leader, Some(promise))
                    .map_err(|e| CoreError::peer(node, "failsafe", e))?;
                let mut w = self.h.lock();
                w.promises
                    .insert(node.to_string(), (leader.to_string(), until));
                Ok(())
            }
            (AgentState::Frozen, _) => {
                self.h.pause(timeout).await;
                Err(CoreError::peer(node, "failsafe", "timed out"))
            }
            _ => Err(CoreError::peer(node, "failsafe", "connection refused")),
        }
    }
}

// ---------------------------------------------------------------- supervisor, clock

/// The supervisor of the node's PostgreSQL (a process of its own: a frozen agent does not
/// freeze it).
#[derive(Debug, Clone)]
pub struct SimWatchdog {
    pub h: Handle,
    /// Never kill (a simulation without the supervisor's deadline).
    pub ignore: bool,
}

impl Watchdog for SimWatchdog {
    fn arm(&self, deadline: Option<Instant>) -> Result<()> {
        if self.ignore || self.h.gate.state() == AgentState::Dead {
            return Ok(());
        }
        let me = self.h.me.clone();
        let mut w = self.h.lock();
        if let Some(n) = w.nodes.get_mut(&me) {
            n.watchdog = deadline;
        }
        Ok(())
    }
}

/// The failsafe promise, kept in the world (as on the node's disk).
#[derive(Debug, Clone)]
pub struct SimPromises {
    pub h: Handle,
}

impl PromiseStore for SimPromises {
    fn save(&self, until_ms: u64) -> Result<()> {
        let me = self.h.me.clone();
        self.h.lock().promise_store.insert(me, until_ms);
        Ok(())
    }

    fn load(&self) -> Option<u64> {
        self.h.lock().promise_store.get(&self.h.me).copied()
    }
}

/// Virtual wall clock.
#[derive(Debug, Clone)]
pub struct SimClock {
    pub start: Instant,
}

impl WallClock for SimClock {
    fn now_ms(&self) -> u64 {
        1_800_000_000_000 + Instant::now().duration_since(self.start).as_millis() as u64
    }
}
