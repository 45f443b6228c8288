//! Deterministic simulation: 3–5 real agent loops ([`crate::run::Agent`], the real decision
//! core and executor) over fakes of every seam, on the runtime's virtual clock, with faults
//! drawn from a seed. The invariants are checked after every 20 ms step of the world:
//!
//! - never two nodes that accept writes at the same instant, and no commit acknowledged by a
//!   node that does not hold a valid leader lease;
//! - sync mode: a node that starts taking writes holds every acknowledged commit;
//! - no two promotions create the same timeline; no data dir is re-cloned (the last resort),
//!   but one a pg_rewind left half-rewound when its source died mid-copy (the fake models it);
//! - liveness: within [`Scenario::primary_bound`] after the last fault healed there is a
//!   writable primary holding the lease, and within [`Scenario::all_bound`] every node runs,
//!   the leader writable and every other node streaming.
//!
//! A seed replays exactly: same scenario, same trace (each decision's reason included).

mod fakes;
mod faults;
mod pg;
mod scenario;
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use fakes::{Gate, Handle, SimClock, SimDcs, SimPeers, SimPg, SimWatchdog};
pub use pg::{Data, Pg, Rec};
pub use scenario::{Fault, Pick, Scenario, SimOptions};
pub use world::{AgentState, Link, NodeSim, World, WorldRef};

use faults::Undo;

use crate::decide::Ctx;
use crate::exec::Effects;
use crate::run::Agent;
use crate::shared::Shared;

/// What one seed found.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub promotions: u32,
    pub acked: usize,
    /// Known limitations hit (the fast path misjudging a live leader), not failures.
    pub limitations: Vec<String>,
    /// Steps (time since start) at which no node took writes.
    pub unwritable: Vec<Duration>,
    /// Completed bootstraps of a new cluster (`Scenario::empty`).
    pub bootstraps: u32,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed on a fresh single-threaded runtime with a paused (virtual) clock.
pub fn run(seed: u64, opts: &SimOptions) -> Report {
    run_scenario(Scenario::from_seed(seed, opts), opts)
}

/// Runs a given scenario (hand-written ones test one behaviour).
pub fn run_scenario(scenario: Scenario, opts: &SimOptions) -> Report {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Report {
                scenario,
                violations: vec![format!("no runtime: {e}")],
                trace: Vec::new(),
                promotions: 0,
                acked: 0,
                limitations: Vec::new(),
                unwritable: Vec::new(),
                bootstraps: 0,
            }
        }
    };
    // The agents' own log lines would drown the trace (and cost time): none here.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        // Built inside the runtime: its clock is the paused one the run advances.
        rt.block_on(async { Sim::new(scenario, opts.clone()).run().await })
    })
}

/// One agent process of the simulation.
struct Slot {
    gate: Gate,
    task: tokio::task::JoinHandle<()>,
    _cancel: CancellationToken,
}

struct Sim {
    sc: Scenario,
    opts: SimOptions,
    /// Every node's, the joiner's included.
    cfg: Arc<pgha_config::PghaConfig>,
    /// What the other nodes run with in a joiner seed: `cfg` without the joiner.
    known: Arc<pgha_config::PghaConfig>,
    world: WorldRef,
    slots: BTreeMap<String, Slot>,
    start: Instant,
}

impl Sim {
    fn new(sc: Scenario, opts: SimOptions) -> Self {
        let cfg = pgha_config::load_from_str(&sc.toml(), "simulation")
            .map(Arc::new)
            .unwrap_or_else(|e| panic!("simulation config is invalid: {e}")); // a bug here, not input
        let known = if sc.joiner {
            let mut k = (*cfg).clone();
            k.nodes.pop();
            Arc::new(k)
        } else {
            cfg.clone()
        };
        let start = Instant::now();
        let mut nodes = BTreeMap::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            let mut data = Data::new();
            let mut pg = Pg::default();
            if i > 0 {
                data.standby_signal = true;
                pg.upstream = Some("node1".into());
            }
            if !sc.empty {
                pg.data = Some(data);
            }
            nodes.insert(
                n.name.clone(),
                NodeSim {
                    pg,
                    agent: AgentState::Dead,
                    watchdog: None,
                    shared: None,
                },
            );
        }
        let world = World {
            rng: StdRng::seed_from_u64(sc.seed),
            start,
            ttl: sc.ttl,
            dcs: Default::default(),
            nodes,
            net: Default::default(),
            checker: world::Checker {
                sync_mode: sc.sync,
                quorum: sc.quorum,
                joiner: sc
                    .joiner
                    .then(|| cfg.nodes.last().map(|n| n.name.clone()))
                    .flatten(),
                ..Default::default()
            },
            trace: Vec::new(),
            next_commit: 0,
            slow_promotion: None,
            slow_start: None,
            echo: opts.echo,
            names: cfg.nodes.iter().map(|n| n.name.clone()).collect(),
            promise_store: BTreeMap::new(),
            promises: BTreeMap::new(),
        };
        Sim {
            sc,
            opts,
            cfg,
            known,
            world: Arc::new(std::sync::Mutex::new(world)),
            slots: BTreeMap::new(),
            start,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        match self.world.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn start_agent(&mut self, name: &str) {
        if self.slots.contains_key(name) {
            // Two crash faults on one node overlapped: its agent was started again already.
            // A real second agent refuses to start (`ops::ensure_sole_agent`); the sim had
            // let both run, each with its own jobs (seed 85654: two re-clones at once).
            let mut w = self.lock();
            w.log(
                Instant::now(),
                name,
                "agent already running: not started twice",
            );
            return;
        }
        let cfg = if self.joiner().as_deref() == Some(name) {
            self.cfg.clone()
        } else {
            self.known.clone()
        };
        let Some(ctx) = Ctx::new(cfg.clone(), name) else {
            return;
        };
        let gate = Gate::new();
        let h = Handle {
            world: self.world.clone(),
            me: name.to_string(),
            gate: gate.clone(),
            cfg,
        };
        let clock = Arc::new(SimClock { start: self.start });
        let (shared, events) = Shared::new(
            ctx.t.failsafe_quarantine,
            Arc::new(fakes::SimPromises { h: h.clone() }),
            clock.clone(),
        );
        {
            let mut w = self.lock();
            let now = Instant::now();
            w.log(now, name, "agent started");
            if let Some(n) = w.nodes.get_mut(name) {
                n.agent = AgentState::Alive;
                n.shared = Some(shared.clone());
            }
        }
        let fx = Effects {
            dcs: Arc::new(SimDcs {
                h: h.clone(),
                timeout_ms: Arc::new(std::sync::atomic::AtomicU64::new(
                    ctx.t.dcs_timeout.as_millis() as u64,
                )),
            }),
            pg: Arc::new(SimPg { h: h.clone() }),
            peers: Arc::new(SimPeers { h: h.clone() }),
            watchdog: Arc::new(SimWatchdog {
                h: h.clone(),
                ignore: self.opts.no_watchdog,
            }),
            clock,
        };
        let mut agent = Agent::new(ctx, fx, shared, events);
        let world = self.world.clone();
        let me = name.to_string();
        let mut last = String::new();
        agent.observe_with(move |_inp, d| {
            let notable = d.actions.iter().any(|a| {
                matches!(
                    a,
                    crate::action::Action::Fence { .. }
                        | crate::action::Action::Spawn { .. }
                        | crate::action::Action::AcquireLeader { .. }
                        | crate::action::Action::TakeOverLeader { .. }
                        | crate::action::Action::ReleaseLeader { .. }
                        | crate::action::Action::RevokeLeader(_)
                        | crate::action::Action::GrantSession { .. }
                        | crate::action::Action::RotateSession { .. }
                )
            });
            if d.reason != last || notable {
                last = d.reason.clone();
                let mut w = match world.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                w.log(
                    Instant::now(),
                    &me,
                    format!("decide: {} [{:?}]", d.reason, d.next.role),
                );
            }
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(agent.run(cancel.clone()));
        self.slots.insert(
            name.to_string(),
            Slot {
                gate,
                task,
                _cancel: cancel,
            },
        );
    }

    /// SIGKILL of the agent: its PostgreSQL dies with it (the supervisor), unless pg_ctl
    /// started it.
    fn kill_agent(&mut self, name: &str) {
        if let Some(s) = self.slots.remove(name) {
            s.gate.set(AgentState::Dead);
            s.task.abort();
        }
        let mut w = self.lock();
        let now = Instant::now();
        let mut orphan = false;
        if let Some(n) = w.nodes.get_mut(name) {
            n.agent = AgentState::Dead;
            n.shared = None;
            n.watchdog = None;
            // A server pg_ctl started (a bootstrap's) is no child of the agent's supervisor.
            orphan = n.pg.unsupervised && n.pg.running;
            if !orphan {
                n.pg.down();
            }
        }
        w.log(
            now,
            name,
            if orphan {
                "FAULT: agent killed (its bootstrap's server, started by pg_ctl, runs on)"
            } else {
                "FAULT: agent killed (its PostgreSQL with it)"
            },
        );
    }

    fn set_agent(&mut self, name: &str, s: AgentState) {
        if let Some(slot) = self.slots.get(name) {
            slot.gate.set(s);
        }
        let mut w = self.lock();
        if let Some(n) = w.nodes.get_mut(name) {
            if n.agent != AgentState::Dead {
                n.agent = s;
            }
        }
    }

    /// The node a fault hits, now.
    /// The node only its own pgha.toml lists (`Scenario::joiner`).
    fn joiner(&self) -> Option<String> {
        self.lock().checker.joiner.clone()
    }

    fn resolve(&self, p: Pick) -> String {
        let mut w = self.lock();
        let now = Instant::now();
        let names: Vec<String> = w.nodes.keys().cloned().collect();
        let primary = names.iter().find(|n| w.nodes[*n].pg.writable(now)).cloned();
        let replicas: Vec<String> = names
            .iter()
            .filter(|n| Some(*n) != primary.as_ref())
            .cloned()
            .collect();
        let any = names[w.rng.random_range(0..names.len())].clone();
        match p {
            Pick::Primary => primary.unwrap_or(any),
            Pick::Replica if !replicas.is_empty() => {
                replicas[w.rng.random_range(0..replicas.len())].clone()
            }
            _ => any,
        }
    }

    fn cut_peers(&self, node: &str, link: world::Link) {
        let mut w = self.lock();
        let others: Vec<String> = w.nodes.keys().filter(|n| *n != node).cloned().collect();
        for o in others {
            w.net.links.insert((node.to_string(), o.clone()), link);
            w.net.links.insert((o, node.to_string()), link);
        }
    }

    async fn run(mut self) -> Report {
        let names: Vec<String> = self.cfg.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            self.start_agent(n);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let step = Duration::from_millis(20);
        let heal = self.sc.heal_at();
        let primary_by = heal + self.sc.primary_bound();
        let end = heal + self.sc.all_bound();
        let mut pending: Vec<(Duration, Fault)> = self.sc.faults.clone();
        pending.reverse();
        let mut undos: Vec<(Duration, Undo)> = Vec::new();
        let mut primary_seen_after_heal = false;
        let mut settled_steps = 0u32;
        loop {
            tokio::time::sleep(step).await;
            let now = Instant::now();
            let t = now.duration_since(self.start);
            while pending.last().is_some_and(|(s, _)| *s <= t) {
                let Some((s, f)) = pending.pop() else { break };
                if let Some(u) = self.begin(&f) {
                    undos.push((s + f.duration(), u));
                }
            }
            undos.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
            while undos.last().is_some_and(|(at, _)| *at <= t) {
                let Some((_, u)) = undos.pop() else { break };
                self.end(u);
            }
            let mut w = self.lock();
            w.step(now);
            if t >= heal && !primary_seen_after_heal {
                primary_seen_after_heal = names
                    .iter()
                    .any(|n| w.nodes[n].pg.writable(now) && w.holds_lease(n));
                if !primary_seen_after_heal && t >= primary_by {
                    w.violation(
                        now,
                        format!(
                            "liveness: no writable primary holding the lease within {:?} after the faults healed",
                            self.sc.primary_bound()
                        ),
                    );
                    primary_seen_after_heal = true;
                }
            }
            // Healed and whole again (and held for a moment): the run has shown what it can.
            if t >= heal + self.sc.max_ttl()
                && primary_seen_after_heal
                && settled(&w, now, &names).is_none()
            {
                settled_steps += 1;
                if settled_steps >= 50 {
                    break;
                }
            } else {
                settled_steps = 0;
            }
            if t >= end {
                let bad = settled(&w, now, &names);
                if let Some(why) = bad {
                    w.violation(
                        now,
                        format!(
                            "liveness: {:?} after the faults healed, {why}",
                            self.sc.all_bound()
                        ),
                    );
                }
                break;
            }
        }
        for (_, s) in std::mem::take(&mut self.slots) {
            s.gate.set(AgentState::Dead);
            s.task.abort();
        }
        let mut w = self.lock();
        // Each agent's Shared holds its promise store, which holds the world: without this
        // cycle cut every run's world (trace and all) stayed in memory (100,000 seeds took
        // 24 GiB and were OOM-killed).
        for n in w.nodes.values_mut() {
            n.shared = None;
        }
        Report {
            scenario: self.sc.clone(),
            violations: std::mem::take(&mut w.checker.violations),
            trace: std::mem::take(&mut w.trace),
            promotions: w.checker.promotions,
            acked: w.checker.acks,
            limitations: std::mem::take(&mut w.checker.limitations),
            unwritable: std::mem::take(&mut w.checker.unwritable),
            bootstraps: w.checker.bootstraps,
        }
    }
}

/// None when the cluster is whole: one writable leader, every other node streaming.
fn settled(w: &World, now: Instant, names: &[String]) -> Option<String> {
    let writable: Vec<&String> = names
        .iter()
        .filter(|n| w.nodes[*n].pg.writable(now))
        .collect();
    if writable.len() != 1 {
        return Some(format!("{} writable nodes", writable.len()));
    }
    if w.checker.joiner.as_ref() == Some(writable[0]) {
        // The others do not follow a leader their pgha.toml lacks ("not in our config"):
        // the operator's rollout is not finished. It may lead only with failsafe off.
        return None;
    }
    let mut lagging = Vec::new();
    for n in names {
        let pg = &w.nodes[n].pg;
        if n != writable[0] && pg.streaming_from.is_none() {
            lagging.push(format!(
                "{n} (running {}, in recovery {}, upstream {:?})",
                pg.running,
                pg.in_recovery(),
                pg.upstream
            ));
        }
    }
    if !lagging.is_empty() {
        return Some(format!("not streaming: {}", lagging.join(", ")));
    }
    // Every node runs with the cluster settings the DCS holds.
    let want = w
        .dcs
        .config
        .settings
        .as_ref()
        .and_then(|s| pgha_config::DynamicSettings::from_json(s).ok())
        .and_then(|s| s.parameters);
    if let Some(want) = want {
        let stale: Vec<&String> = names
            .iter()
            .filter(|n| w.nodes[*n].pg.conf != want)
            .collect();
        if !stale.is_empty() {
            return Some(format!("cluster settings not applied on {stale:?}"));
        }
    }
    None
}

/// Runs `seeds`; returns the failing reports and the number run.
pub fn run_many(seeds: impl Iterator<Item = u64>, opts: &SimOptions) -> (Vec<Report>, usize) {
    let (failed, n, _) = run_many_counting(seeds, opts);
    (failed, n)
}

/// [`run_many`], also returning the seeds that hit a known limitation.
pub fn run_many_counting(
    seeds: impl Iterator<Item = u64>,
    opts: &SimOptions,
) -> (Vec<Report>, usize, Vec<u64>) {
    let mut failed = Vec::new();
    let mut limited = Vec::new();
    let mut n = 0;
    for s in seeds {
        n += 1;
        let r = run(s, opts);
        if !r.limitations.is_empty() {
            limited.push(s);
        }
        if !r.ok() {
            failed.push(r);
        }
    }
    (failed, n, limited)
}

#[cfg(test)]
mod tests;
