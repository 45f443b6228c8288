//! The node's simulated PostgreSQL, as its agent drives it.

use std::time::Duration;

use async_trait::async_trait;
use pgha_postgres::{Lsn, StopMode};
use tokio::time::Instant;

use super::{lsn, Handle};
use crate::dcs::{MemberRole, PgState};
use crate::inputs::{Local, StandbyRow};
use crate::ports::{PgNode, Target};
use crate::sim::pg::{Data, BOOTSTRAP_MADE, HALF_MADE};
use crate::{CoreError, Result};

/// `Data::broken` of a target whose pg_rewind lost its source mid-copy: half-rewound; no later
/// rewind and no start mends it, only a re-clone (pg_rewind's docs). Seen for real in
/// `cargo xtask faults --scenario double-failover`.
const HALF_REWOUND: &str = "half-rewound: pg_rewind lost its source mid-copy";

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
            Some(d) if d.is_half_made() => MemberRole::Uninitialized,
            Some(d) if d.standby_signal => MemberRole::Replica,
            Some(_) => MemberRole::Primary,
        };
        let mut o = Local::stopped(disk);
        let Some(d) = &pg.data else { return o };
        if d.is_half_made() {
            // An interrupted bootstrap's dir (LocalNode::observe); its server, if it runs, is
            // on a private port.
            if pg.running {
                o.pg_state = PgState::Running;
            }
            o.bootstrap_made = d.broken.as_deref() == Some(BOOTSTRAP_MADE);
            return o;
        }
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
        o.pending_restart = pg.pending_restart();
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
            pg.active = pg.conf.clone();
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

    async fn apply_config(&self, cfg: std::sync::Arc<pgha_config::PghaConfig>) -> Result<bool> {
        self.h.latency(1, 3).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        if w.pg(&me).conf == cfg.postgres.parameters {
            return Ok(false);
        }
        w.pg(&me).write_conf(&cfg.postgres.parameters);
        let now = Instant::now();
        w.log(
            now,
            &me,
            format!("pgha.conf parameters now {:?}", cfg.postgres.parameters),
        );
        Ok(true)
    }

    async fn rewind(&self, source: &str) -> Result<()> {
        self.h.latency(1, 3).await;
        let me = self.h.me.clone();
        let d = {
            // pg_rewind connects to the source first, then copies for a while.
            let mut w = self.h.lock();
            source_data(&w, "pg_rewind", &me, source, Instant::now())?;
            if w.pg(&me).running {
                return Err(CoreError::simulated("pg_rewind", "target is running"));
            }
            if let Some(td) = w.pg(&me).data.as_ref() {
                if td.broken.as_deref() == Some(HALF_REWOUND) {
                    return Err(CoreError::simulated(
                        "pg_rewind",
                        "could not open file \"pg_wal/000000010000000000000006\": No such file or directory",
                    ));
                }
            }
            w.delay(50, 500)
        };
        self.h.pause(d).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        let sd = match source_data(&w, "pg_rewind", &me, source, now) {
            Ok(sd) => sd,
            Err(_) => {
                // The source went away mid-copy: the target is half-rewound.
                if let Some(td) = w.pg(&me).data.as_mut() {
                    td.broken = Some(HALF_REWOUND.into());
                }
                w.log(
                    now,
                    &me,
                    format!("pg_rewind from {source}: source lost mid-copy"),
                );
                return Err(CoreError::simulated(
                    "pg_rewind",
                    "unexpected result while fetching remote files: server closed the connection unexpectedly",
                ));
            }
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

    async fn bootstrap(&self) -> Result<()> {
        self.h.latency(1, 3).await;
        let me = self.h.me.clone();
        let d = {
            let mut w = self.h.lock();
            if w.pg(&me).running {
                w.pg(&me).down();
            }
            let now = Instant::now();
            w.log(now, &me, "bootstrap: initdb");
            w.pg(&me).data = Some(Data {
                broken: Some(HALF_MADE.into()),
                ..Data::new()
            });
            // The first primary runs on a private port while it is made (the restore's
            // recovery, the replication role): an agent killed now leaves it running.
            let pg = w.pg(&me);
            pg.running = true;
            pg.unsupervised = true;
            pg.ready_at = Some(now);
            w.delay(300, 1500)
        };
        self.h.pause(d).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        w.pg(&me).down();
        if let Some(d) = w.pg(&me).data.as_mut() {
            d.broken = Some(BOOTSTRAP_MADE.into());
        }
        w.log(
            now,
            &me,
            "bootstrap: initdb done, half-made until committed",
        );
        Ok(())
    }

    async fn finish_bootstrap(&self) -> Result<()> {
        self.h.latency(1, 3).await;
        let me = self.h.me.clone();
        let mut w = self.h.lock();
        let now = Instant::now();
        let others: Vec<String> = w
            .nodes
            .iter()
            .filter(|(n, x)| **n != me && x.pg.data.as_ref().is_some_and(|d| !d.is_half_made()))
            .map(|(n, _)| n.clone())
            .collect();
        if !others.is_empty() {
            w.violation(
                now,
                format!("{me} bootstrapped a second cluster while {others:?} had data"),
            );
        }
        w.checker.bootstraps += 1;
        w.pg(&me).data = Some(Data::new());
        w.log(now, &me, "bootstrap done (stopped)");
        Ok(())
    }

    async fn clone_replica(&self, source: &str, move_aside: bool) -> Result<()> {
        self.h.latency(1, 3).await;
        let d = self.h.lock().delay(200, 1000);
        self.h.pause(d).await;
        let mut w = self.h.lock();
        let now = Instant::now();
        let me = self.h.me.clone();
        let sd = source_data(&w, "pg_basebackup", &me, source, now)?;
        let half_made = w.pg(&me).data.as_ref().is_some_and(|d| d.is_half_made());
        if half_made && w.pg(&me).running {
            // LocalNode::clear_half_made stops an interrupted bootstrap's server first.
            w.pg(&me).down();
        }
        let half_rewound = w
            .pg(&me)
            .data
            .as_ref()
            .is_some_and(|d| d.broken.as_deref() == Some(HALF_REWOUND));
        if move_aside && half_rewound {
            w.log(now, &me, "re-clone of a half-rewound data dir");
        } else if move_aside {
            w.checker.reclones += 1;
            w.violation(
                now,
                format!("{me} re-cloned its data dir from {source} (the last resort)"),
            );
        } else if w.pg(&me).data.as_ref().is_some_and(|d| !d.is_half_made()) {
            // (A half-made bootstrap's dir is moved aside: nobody needs it.)
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

    async fn create_logical_slot(&self, _name: &str, _db: &str, _plugin: &str) -> Result<()> {
        Err(CoreError::simulated(
            "create logical slot",
            "no logical slots in the simulator",
        ))
    }

    async fn advance_slot(&self, _name: &str, _db: &str, _to: Lsn) -> Result<Lsn> {
        Err(CoreError::simulated(
            "advance slot",
            "no logical slots in the simulator",
        ))
    }

    async fn copy_logical_slots(&self, _source: &str, _names: &[String]) -> Result<Vec<String>> {
        Err(CoreError::simulated(
            "copy logical slots",
            "no logical slots in the simulator",
        ))
    }

    async fn checkpoint_lsn(&self) -> Result<Lsn> {
        self.h.latency(1, 2).await;
        let mut w = self.h.lock();
        let me = self.h.me.clone();
        Ok(lsn(w.pg(&me).data.as_ref().map_or(0, |d| d.lsn())))
    }
}

/// What a copy from `source` (pg_rewind, pg_basebackup) reads: its data, if we reach it and it
/// runs.
fn source_data(
    w: &crate::sim::world::World,
    tool: &'static str,
    me: &str,
    source: &str,
    now: Instant,
) -> Result<Data> {
    // libpq's words, as the real tools print them (the agent tells a source it could not
    // reach from a rewind that ran: `decide::rewind_damaged`).
    if !w.net.both_up(me, source) {
        return Err(CoreError::simulated(
            tool,
            format!("connection to server at \"{source}\", port 5432 failed: timeout expired"),
        ));
    }
    let src = &w.nodes[source].pg;
    src.data.clone().filter(|_| src.ready(now)).ok_or_else(|| {
        CoreError::simulated(
            tool,
            format!("connection to server at \"{source}\", port 5432 failed: Connection refused"),
        )
    })
}
