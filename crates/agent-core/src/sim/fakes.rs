//! The seams over the simulated world: [`SimDcs`], [`SimPg`], [`SimPeers`], [`SimWatchdog`],
//! [`SimClock`]. Every call of a frozen agent waits at its [`Gate`] (a SIGSTOP stops the
//! process wherever it is); a dead agent's calls never return.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgha_config::PghaConfig;
use pgha_postgres::{Lsn, StopMode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::pg::Data;
use super::world::{AgentState, Link, WorldRef};
use crate::dcs::{
    ClusterView, Dcs, DynamicConfig, LeaderInfo, LeaderStatus, LeaseId, MemberRole, MemberState,
    PgState, SwitchoverRequest, SyncState,
};
use crate::inputs::{Local, StandbyRow};
use crate::ports::{Peers, PgNode, PromiseStore, Target, WallClock, Watchdog};
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

// ---------------------------------------------------------------- DCS

/// One agent's (or operator's) DCS client.
#[derive(Debug, Clone)]
pub struct SimDcs {
    pub h: Handle,
    pub timeout: Duration,
    pub ttl: Duration,
}

impl SimDcs {
    /// Runs `f` at the DCS after the request's trip there, answers after the trip back; a
    /// partition or an outage costs the full timeout (or is refused at once).
    async fn op<T: Send>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut super::world::World, Instant) -> T + Send,
    ) -> Result<T> {
        self.h.gate.pass().await;
        let (there, back, down) = {
            let mut w = self.h.lock();
            let slow = w.net.dcs_slow;
            let (a, b) = match slow {
                Some(max) => {
                    let m = max.as_millis() as u64;
                    (w.delay(1, m), w.delay(1, m))
                }
                None => (w.delay(1, 3), w.delay(1, 3)),
            };
            let down = if w.net.dcs_cut.contains(&self.h.me) {
                Some(false)
            } else {
                w.net.dcs_down
            };
            (a, b, down)
        };
        let timeout = self.timeout;
        let ms = timeout.as_millis() as u64;
        match down {
            Some(true) => {
                self.h.pause(Duration::from_millis(1)).await;
                return Err(CoreError::Dcs {
                    op: name,
                    source: "connection refused".into(),
                });
            }
            Some(false) => {
                self.h.pause(timeout).await;
                return Err(CoreError::DcsTimeout { op: name, ms });
            }
            None => {}
        }
        let world = self.h.world.clone();
        let fut = async move {
            tokio::time::sleep(there).await;
            let r = {
                let mut w = match world.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let now = Instant::now();
                if w.dcs.expire(now) {
                    w.dcs.notify();
                }
                f(&mut w, now)
            };
            tokio::time::sleep(back).await;
            r
        };
        let r = tokio::time::timeout(timeout, fut).await;
        self.h.gate.pass().await;
        r.map_err(|_| CoreError::DcsTimeout { op: name, ms })
    }
}

#[async_trait]
impl Dcs for SimDcs {
    async fn grant_session(&self) -> Result<LeaseId> {
        let ttl = self.ttl;
        self.op("lease grant", move |w, now| w.dcs.grant(now, ttl))
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool> {
        let ttl = self.ttl;
        self.op("lease keep-alive", move |w, now| {
            match w.dcs.leases.get_mut(&lease) {
                Some(exp) => {
                    *exp = now + ttl;
                    true
                }
                None => false,
            }
        })
        .await
    }

    async fn view(&self) -> Result<ClusterView> {
        self.op("get cluster", |w, _| w.dcs.view()).await
    }

    async fn publish_member(&self, lease: LeaseId, member: &MemberState) -> Result<()> {
        let m = member.clone();
        self.op("publish member", move |w, _| {
            if w.dcs.lease_alive(lease) {
                w.dcs.members.insert(m.name.clone(), (m, lease));
                Ok(())
            } else {
                Err(CoreError::simulated("publish member", "lease not found"))
            }
        })
        .await?
    }

    async fn try_acquire_leader(&self, lease: LeaseId) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("acquire leader", move |w, now| {
            if w.dcs.leader.is_some() || !w.dcs.lease_alive(lease) {
                return false;
            }
            w.dcs.set_leader(&me, lease);
            w.log(now, &me, "DCS: took the leader key");
            w.dcs.notify();
            true
        })
        .await
    }

    async fn take_over_leader(&self, lease: LeaseId, revision: i64) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("take over leader", move |w, now| {
            let ok = w
                .dcs
                .leader
                .as_ref()
                .is_some_and(|(n, _, r)| *n == me && *r == revision)
                && w.dcs.lease_alive(lease);
            if ok {
                w.dcs.set_leader(&me, lease);
                w.log(now, &me, "DCS: took over the leader key with a new lease");
                w.dcs.notify();
            }
            ok
        })
        .await
    }

    async fn release_leader(&self, lease: LeaseId) -> Result<bool> {
        let me = self.h.me.clone();
        self.op("release leader", move |w, now| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if ours {
                w.dcs.leader = None;
                w.dcs.revision += 1;
                w.log(now, &me, "DCS: released the leader key");
                w.dcs.notify();
            }
            ours
        })
        .await
    }

    async fn revoke_leader(&self, leader: &LeaderInfo) -> Result<bool> {
        let l = leader.clone();
        let me = self.h.me.clone();
        self.op("delete dead leader", move |w, now| {
            let same = w
                .dcs
                .leader
                .as_ref()
                .is_some_and(|(_, _, r)| *r == l.revision);
            if same {
                w.dcs.leader = None;
                w.dcs.revision += 1;
                w.dcs.drop_lease(l.lease);
                w.log(now, &me, format!("DCS: revoked {}'s lease", l.name));
                if let Some(n) = w.nodes.get(&l.name).filter(|n| n.pg.running) {
                    // The fast path's evidence (resets from every observer, a stale member
                    // key) was wrong: a documented limitation, not a violation.
                    let boot = n.pg.boot;
                    w.checker.misjudged.insert((l.name.clone(), boot));
                    w.log(
                        now,
                        "CHECK",
                        format!(
                            "LIMITATION: the fast path revoked {} while its PostgreSQL ran",
                            l.name
                        ),
                    );
                    w.checker
                        .limitations
                        .push(format!("fast path revoked live leader {}", l.name));
                }
                w.dcs.notify();
            }
            same
        })
        .await
    }

    async fn put_status(&self, lease: LeaseId, status: &LeaderStatus) -> Result<bool> {
        let s = status.clone();
        self.op("put status", move |w, _| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if ours {
                w.dcs.status = Some(s);
            }
            ours
        })
        .await
    }

    async fn put_config(&self, config: &DynamicConfig, revision: i64) -> Result<bool> {
        let c = config.clone();
        self.op("put config", move |w, _| {
            if w.dcs.config_revision != revision {
                return false;
            }
            w.dcs.revision += 1;
            w.dcs.config_revision = w.dcs.revision;
            w.dcs.config = c;
            w.dcs.notify();
            true
        })
        .await
    }

    async fn put_switchover(&self, request: &SwitchoverRequest) -> Result<()> {
        let r = request.clone();
        self.op("put switchover", move |w, _| {
            w.dcs.switchover = Some(r);
            w.dcs.notify();
        })
        .await
    }

    async fn clear_switchover(&self) -> Result<()> {
        self.op("clear switchover", |w, _| w.dcs.switchover = None)
            .await
    }

    async fn put_sync(&self, lease: LeaseId, sync: &SyncState) -> Result<bool> {
        let s = sync.clone();
        let me = self.h.me.clone();
        self.op("put sync", move |w, now| {
            let ours = w.dcs.leader.as_ref().is_some_and(|(_, l, _)| *l == lease);
            if ours {
                w.log(now, &me, format!("DCS: /sync = {:?}", s.standbys));
                w.dcs.sync = Some(s);
                w.dcs.notify();
            }
            ours
        })
        .await
    }

    async fn allocate_timeline(&self, at_least: i64) -> Result<i64> {
        self.op("allocate timeline", move |w, _| {
            w.dcs.timeline = (w.dcs.timeline + 1).max(at_least);
            w.dcs.timeline
        })
        .await
    }

    async fn watch(&self) -> Result<mpsc::Receiver<()>> {
        let me = self.h.me.clone();
        self.op("watch", move |w, _| {
            let (tx, rx) = mpsc::channel(16);
            w.dcs.watchers.push((me, tx));
            rx
        })
        .await
    }
}

// ---------------------------------------------------------------- PostgreSQL

/// The node's PostgreSQL, as its agent drives it.
#[derive(Debug, Clone)]
pub struct SimPg {
    pub h: Handle,
}

impl SimPg {
    fn addr(&self, node: &str) -> Option<String> {
        self.h.cfg.node(node).map(|n| n.address())
    }

    fn local(&self, now: Instant) -> Local {
        let w = self.h.lock();
        let me = &self.h.me;
        let pg = &w.nodes[me].pg;
        let disk = match &pg.data {
            None => MemberRole::Uninitialized,
            Some(d) if d.standby_signal => MemberRole::Replica,
            Some(_) => MemberRole::Primary,
        };
        let mut o = Local::stopped(disk);
        let Some(d) = &pg.data else { return o };
        if !pg.running {
            o.timeline = Some(d.control_tli);
            o.lsn = Some(lsn(d.lsn()));
            return o;
        }
        o.pg_state = PgState::Running;
        if !pg.ready(now) {
            return o;
        }
        o.reachable = true;
        o.lsn = Some(lsn(d.lsn()));
        o.replay_lsn = o.lsn;
        if d.standby_signal {
            o.role = MemberRole::Replica;
            // As PostgreSQL reports it: the received timeline while the receiver runs, else
            // the last checkpoint's.
            o.timeline = Some(pg.received_tli.unwrap_or(d.control_tli));
            o.streaming = pg.streaming_from.is_some();
            o.upstream = pg.streaming_from.as_deref().and_then(|u| self.addr(u));
        } else {
            o.role = MemberRole::Primary;
            o.timeline = Some(d.tli);
            o.checkpoint_timeline = Some(d.control_tli);
            o.sync_names = Some(pg.sync_raw.clone());
            o.standbys = w
                .nodes
                .iter()
                .filter(|(_, x)| x.pg.streaming_from.as_deref() == Some(me.as_str()))
                .map(|(n, x)| StandbyRow {
                    name: n.clone(),
                    streaming: true,
                    flush_lsn: x.pg.data.as_ref().map(|d| lsn(d.lsn())),
                })
                .collect();
        }
        if self.h.cfg.replication.slots {
            o.slots = Some(
                pg.slots
                    .iter()
                    .map(|s| {
                        let active = w
                            .nodes
                            .get(s)
                            .is_some_and(|x| x.pg.streaming_from.as_deref() == Some(me.as_str()));
                        (s.clone(), active)
                    })
                    .collect(),
            );
        }
        o
    }

    /// Starts with what is on disk (after `prepare` changed it); waits until it accepts
    /// connections, like `pg_ctl start -w`.
    async fn boot(&self, prepare: impl FnOnce(&mut Data) -> Result<()>) -> Result<()> {
        self.h.latency(1, 3).await;
        let (boot, delay) = {
            let mut w = self.h.lock();
            let now = Instant::now();
            let slow = w.slow_start;
            let delay = match slow {
                Some(d) => d,
                None => w.delay(50, 300),
            };
            let me = self.h.me.clone();
            let pg = w.pg(&me);
            if pg.running {
                return Ok(());
            }
            let d = pg
                .data
                .as_mut()
                .ok_or_else(|| CoreError::simulated("start", "no data directory"))?;
            if let Some(why) = &d.broken {
                return Err(CoreError::simulated("start", why.clone()));
            }
            prepare(d)?;
            pg.running = true;
            pg.boot += 1;
            pg.ready_at = Some(now + delay);
            let boot = pg.boot;
            let role = if pg.in_recovery() {
                "replica"
            } else {
                "primary"
            };
            w.log(
                now,
                &me,
                format!("PostgreSQL starting as {role} (ready in {delay:?})"),
            );
            (boot, delay)
        };
        self.h.pause(delay).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        let now = Instant::now();
        let pg = w.pg(&me);
        if !pg.running || pg.boot != boot {
            return Err(CoreError::simulated(
                "start",
                "the server exited while starting",
            ));
        }
        if !pg.in_recovery() {
            // Crash recovery of a primary ends with a checkpoint.
            if let Some(d) = pg.data.as_mut() {
                d.control_tli = d.tli;
            }
            w.became_writable(now, &me);
        }
        Ok(())
    }

    fn set_upstream(&self, upstream: Option<String>) {
        let me = self.h.me.clone();
        self.h.lock().pg(&me).upstream = upstream;
    }
}

#[async_trait]
impl PgNode for SimPg {
    async fn observe(&self, _details: bool) -> Local {
        self.h.latency(1, 2).await;
        self.local(Instant::now())
    }

    async fn start(&self, target: &Target) -> Result<()> {
        let t = target.clone();
        let up = match &t {
            Target::Replica { upstream } => Some(upstream.clone()),
            _ => None,
        };
        if let Target::StandbyLeader = t {
            return Err(CoreError::simulated(
                "start",
                "no standby clusters in the simulator",
            ));
        }
        let me = self.h.me.clone();
        {
            let mut w = self.h.lock();
            if w.pg(&me).running {
                return Ok(());
            }
        }
        self.set_upstream(up);
        self.boot(move |d| {
            d.standby_signal = matches!(t, Target::Replica { .. });
            Ok(())
        })
        .await
    }

    async fn restart(&self) -> Result<()> {
        self.boot(|_| Ok(())).await
    }

    async fn stop(&self, mode: StopMode) -> Result<()> {
        self.h.latency(5, 30).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        let me = self.h.me.clone();
        if !w.pg(&me).running {
            return Ok(());
        }
        if mode != StopMode::Immediate && !w.pg(&me).in_recovery() {
            // The shutdown checkpoint streams to the connected standbys.
            let wal = w.pg(&me).data.as_ref().map(|d| (d.wal.clone(), d.tli));
            let names: Vec<String> = w.nodes.keys().cloned().collect();
            for n in names {
                if w.nodes[&n].pg.streaming_from.as_deref() == Some(me.as_str()) {
                    if let (Some((wal, tli)), Some(d)) = (wal.clone(), w.pg(&n).data.as_mut()) {
                        d.wal = wal;
                        d.tli = tli;
                    }
                }
            }
        }
        w.pg(&me).down();
        w.log(now, &me, format!("PostgreSQL stopped ({mode:?})"));
        Ok(())
    }

    async fn fence(&self) -> Result<()> {
        self.stop(StopMode::Immediate).await
    }

    async fn promote(&self, timeline_floor: Option<i64>) -> Result<()> {
        self.h.latency(1, 3).await;
        let boot = {
            let mut w = self.h.lock();
            let now = Instant::now();
            let me = self.h.me.clone();
            let slow = w.slow_promotion;
            let delay = match slow {
                Some(d) => d,
                None => w.delay(20, 200),
            };
            let pg = w.pg(&me);
            if !pg.ready(now) || !pg.in_recovery() {
                return Err(CoreError::simulated("promote", "not a running standby"));
            }
            if pg.promote_at.is_none() {
                pg.promote_at = Some(now + delay);
                pg.timeline_floor = timeline_floor;
                w.log(now, &me, format!("pg_promote (completes in {delay:?})"));
            }
            w.pg(&me).boot
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.h.pause(Duration::from_millis(5)).await;
            let mut w = self.h.lock();
            let me = self.h.me.clone();
            let pg = w.pg(&me);
            if !pg.running || pg.boot != boot {
                return Err(CoreError::simulated("promote", "the server went down"));
            }
            if !pg.in_recovery() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CoreError::Timeout {
                    what: "promotion",
                    ms: 60_000,
                });
            }
        }
    }

    async fn checkpoint(&self) -> Result<()> {
        self.h.latency(10, 100).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        let pg = w.pg(&me);
        match pg.data.as_mut() {
            Some(d) if pg.running => {
                d.control_tli = d.tli;
                Ok(())
            }
            _ => Err(CoreError::simulated("checkpoint", "not running")),
        }
    }

    async fn set_sync_names(&self, value: &str) -> Result<Lsn> {
        self.h.latency(1, 3).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        let now = Instant::now();
        let pg = w.pg(&me);
        if !pg.ready(now) {
            return Err(CoreError::simulated("ALTER SYSTEM", "not running"));
        }
        pg.set_sync(value);
        let l = lsn(pg.data.as_ref().map_or(0, |d| d.lsn()));
        w.log(now, &me, format!("synchronous_standby_names = '{value}'"));
        Ok(l)
    }

    async fn point_at(&self, target: &Target) -> Result<bool> {
        self.h.latency(1, 3).await;
        let up = match target {
            Target::Replica { upstream } => Some(upstream.clone()),
            _ => None,
        };
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        let pg = w.pg(&me);
        if !pg.running {
            return Err(CoreError::simulated("reload", "not running"));
        }
        if pg.upstream == up {
            return Ok(false);
        }
        pg.upstream = up.clone();
        let now = Instant::now();
        w.log(now, &me, format!("pgha-node.conf now streams from {up:?}"));
        Ok(true)
    }

    async fn rewind(&self, source: &str) -> Result<()> {
        self.h.latency(1, 3).await;
        let d = self.h.lock().delay(50, 500);
        self.h.pause(d).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        let me = self.h.me.clone();
        if !w.net.both_up(&me, source) {
            return Err(CoreError::simulated(
                "pg_rewind",
                format!("{source} unreachable"),
            ));
        }
        let src = &w.nodes[source].pg;
        let Some(sd) = src.data.clone().filter(|_| src.ready(now)) else {
            return Err(CoreError::simulated(
                "pg_rewind",
                format!("{source} is not running"),
            ));
        };
        if w.pg(&me).running {
            return Err(CoreError::simulated("pg_rewind", "target is running"));
        }
        let Some(td) = w.pg(&me).data.as_mut() else {
            return Err(CoreError::simulated("pg_rewind", "no data directory"));
        };
        if sd.control_tli == td.tli {
            // pg_rewind compares the source's control-file timeline with the target's (for a
            // standby target: the timeline it replayed up to, minRecoveryPointTLI).
            w.log(
                now,
                &me,
                format!("pg_rewind from {source}: no rewind required"),
            );
            return Ok(());
        }
        td.wal = sd.wal.clone();
        // The target's control file gets the source's timeline as pg_rewind read it.
        td.tli = sd.control_tli;
        td.control_tli = sd.control_tli;
        td.broken = (sd.control_tli != sd.tli).then(|| {
            format!(
                "requested timeline {} does not contain minimum recovery point on timeline {}",
                sd.tli, sd.control_tli
            )
        });
        w.log(now, &me, format!("pg_rewind from {source}: done"));
        Ok(())
    }

    async fn clone_replica(&self, source: &str, move_aside: bool) -> Result<()> {
        self.h.latency(1, 3).await;
        let d = self.h.lock().delay(200, 1000);
        self.h.pause(d).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        let me = self.h.me.clone();
        if !w.net.both_up(&me, source) {
            return Err(CoreError::simulated(
                "pg_basebackup",
                format!("{source} unreachable"),
            ));
        }
        let src = &w.nodes[source].pg;
        let Some(sd) = src.data.clone().filter(|_| src.ready(now)) else {
            return Err(CoreError::simulated(
                "pg_basebackup",
                format!("{source} is not running"),
            ));
        };
        if move_aside {
            w.checker.reclones += 1;
            w.violation(
                now,
                format!("{me} re-cloned its data dir from {source} (the last resort)"),
            );
        } else if w.pg(&me).data.is_some() {
            return Err(CoreError::simulated(
                "pg_basebackup",
                "data directory not empty",
            ));
        }
        w.pg(&me).data = Some(Data {
            wal: sd.wal.clone(),
            tli: sd.tli,
            standby_signal: true,
            control_tli: sd.tli,
            broken: None,
        });
        w.log(now, &me, format!("cloned from {source}"));
        Ok(())
    }

    async fn clone_standby_leader(&self) -> Result<()> {
        Err(CoreError::simulated(
            "clone",
            "no standby clusters in the simulator",
        ))
    }

    async fn create_slot(&self, name: &str) -> Result<()> {
        self.h.latency(1, 2).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        let pg = w.pg(&me);
        if !pg.running {
            return Err(CoreError::simulated("create slot", "not running"));
        }
        pg.slots.insert(name.into());
        Ok(())
    }

    async fn drop_slot(&self, name: &str) -> Result<()> {
        self.h.latency(1, 2).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        w.pg(&me).slots.remove(name);
        Ok(())
    }

    async fn checkpoint_lsn(&self) -> Result<Lsn> {
        self.h.latency(1, 2).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        Ok(lsn(w.pg(&me).data.as_ref().map_or(0, |d| d.lsn())))
    }
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

    async fn ask_failsafe(&self, node: &str, leader: &str) -> Result<()> {
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
                s.confirm_failsafe(leader)
                    .map_err(|e| CoreError::peer(node, "failsafe", e))?;
                let mut w = self.h.lock();
                let until = Instant::now() + w.ttl + Duration::from_secs(1);
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
