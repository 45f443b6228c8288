//! Deterministic simulation: 3–5 real agent loops ([`crate::run::Agent`], the real decision
//! core and executor) over fakes of every seam, on the runtime's virtual clock, with faults
//! drawn from a seed. The invariants are checked after every 20 ms step of the world:
//!
//! - never two nodes that accept writes at the same instant, and no commit acknowledged by a
//!   node that does not hold a valid leader lease;
//! - sync mode: a node that starts taking writes holds every acknowledged commit;
//! - no two promotions create the same timeline; no data dir is re-cloned (the last resort);
//! - liveness: within [`Scenario::primary_bound`] after the last fault healed there is a
//!   writable primary holding the lease, and within [`Scenario::all_bound`] every node runs,
//!   the leader writable and every other node streaming.
//!
//! A seed replays exactly: same scenario, same trace (each decision's reason included).

mod fakes;
mod pg;
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
pub use world::{AgentState, Link, NodeSim, World, WorldRef};

use crate::decide::Ctx;
use crate::exec::Effects;
use crate::run::Agent;
use crate::shared::Shared;

/// What a run may be told beyond its seed.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The supervisor ignores every deadline (shows what the watchdog prevents).
    pub no_watchdog: bool,
    /// Print the trace as it happens.
    pub echo: bool,
    /// Only these fault kinds (names, comma-separated), for focused runs.
    pub only: Option<String>,
}

/// One fault, as drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// SIGSTOP of a node's agent (its PostgreSQL and supervisor keep running).
    FreezeAgent { node: Pick, dur: Duration },
    /// SIGKILL of a node's agent (its PostgreSQL dies with it), restarted after a delay.
    CrashAgent { node: Pick, restart_after: Duration },
    /// The postmaster dies; the agent lives.
    CrashPg { node: Pick },
    /// Promotions take this long while the fault lasts.
    SlowPromotion { delay: Duration, dur: Duration },
    /// Starts take this long while the fault lasts.
    SlowStart { delay: Duration, dur: Duration },
    /// The node cannot reach the DCS (packets dropped).
    DcsCut { node: Pick, dur: Duration },
    /// The node cannot reach any other node, nor they it (dropped), but reaches the DCS.
    PeersCut { node: Pick, dur: Duration },
    /// Both.
    Isolate { node: Pick, dur: Duration },
    /// Every DCS member is down: refused at once, or silent.
    DcsDown { refuse: bool, dur: Duration },
    /// DCS requests are delayed up to `max` each way (late answers, late writes).
    DcsSlow { max: Duration, dur: Duration },
    /// Connections from one replica to the primary's ports are refused (reset).
    RefuseToPrimary { dur: Duration },
    /// A synchronous standby's WAL receiver is cut (sync standby churn).
    ReceiverCut { node: Pick, dur: Duration },
    /// An operator asks for a planned switchover (or a manual failover) to a replica.
    Switchover { failover: bool },
}

/// Which node a fault hits: decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Primary,
    Replica,
    Any,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::FreezeAgent { .. } => "freeze-agent",
            Fault::CrashAgent { .. } => "crash-agent",
            Fault::CrashPg { .. } => "crash-pg",
            Fault::SlowPromotion { .. } => "slow-promotion",
            Fault::SlowStart { .. } => "slow-start",
            Fault::DcsCut { .. } => "dcs-cut",
            Fault::PeersCut { .. } => "peers-cut",
            Fault::Isolate { .. } => "isolate",
            Fault::DcsDown { .. } => "dcs-down",
            Fault::DcsSlow { .. } => "dcs-slow",
            Fault::RefuseToPrimary { .. } => "refuse-to-primary",
            Fault::ReceiverCut { .. } => "receiver-cut",
            Fault::Switchover { .. } => "switchover",
        }
    }

    fn duration(&self) -> Duration {
        match self {
            Fault::FreezeAgent { dur, .. }
            | Fault::SlowPromotion { dur, .. }
            | Fault::SlowStart { dur, .. }
            | Fault::DcsCut { dur, .. }
            | Fault::PeersCut { dur, .. }
            | Fault::Isolate { dur, .. }
            | Fault::DcsDown { dur, .. }
            | Fault::DcsSlow { dur, .. }
            | Fault::RefuseToPrimary { dur }
            | Fault::ReceiverCut { dur, .. } => *dur,
            Fault::CrashAgent { restart_after, .. } => *restart_after,
            Fault::CrashPg { .. } | Fault::Switchover { .. } => Duration::ZERO,
        }
    }
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: usize,
    pub sync: bool,
    pub failsafe: bool,
    pub fast_dead: bool,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub dcs_timeout: Duration,
    /// (start, fault), by start.
    pub faults: Vec<(Duration, Fault)>,
}

impl Scenario {
    pub fn from_seed(seed: u64, opts: &SimOptions) -> Self {
        let mut r = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_fa17);
        let nodes = *[3usize, 3, 3, 4, 5].get(r.random_range(0..5)).unwrap_or(&3);
        let fast = r.random_bool(0.5);
        let (ttl, loop_wait, dcs_timeout) = if fast {
            (
                Duration::from_secs(3),
                Duration::from_millis(250),
                Duration::from_millis(500),
            )
        } else {
            (
                Duration::from_secs(8),
                Duration::from_millis(500),
                Duration::from_secs(1),
            )
        };
        let n = r.random_range(1..=4);
        let mut faults = Vec::new();
        for _ in 0..n {
            let start = Duration::from_millis(r.random_range(3_000..30_000));
            // `--only` may name no drawn kind (e.g. only `switchover`): a bounded search.
            let f = (0..1_000).map(|_| draw_fault(&mut r, ttl)).find(|f| {
                opts.only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|k| k.trim() == f.name()))
            });
            if let Some(f) = f {
                faults.push((start, f));
            }
        }
        // Drawn from a stream of its own, so adding it left every other fault of a seed as it
        // was (the seeds that found bugs keep their faults).
        let mut r2 = StdRng::seed_from_u64(seed ^ 0x0053_7717_c40e);
        if r2.random_bool(0.25)
            && opts
                .only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|k| k.trim() == "switchover"))
        {
            let start = Duration::from_millis(r2.random_range(3_000..30_000));
            faults.push((
                start,
                Fault::Switchover {
                    failover: r2.random_bool(0.3),
                },
            ));
        }
        faults.sort_by_key(|(s, _)| *s);
        Scenario {
            seed,
            nodes,
            sync: r.random_bool(0.5),
            failsafe: r.random_bool(0.7),
            fast_dead: r.random_bool(0.7),
            ttl,
            loop_wait,
            dcs_timeout,
            faults,
        }
    }

    /// The last fault ends (everything is healed then).
    pub fn heal_at(&self) -> Duration {
        self.faults
            .iter()
            .map(|(s, f)| *s + f.duration())
            .max()
            .unwrap_or(Duration::from_secs(3))
    }

    /// A writable primary holding the lease exists within this after the heal.
    pub fn primary_bound(&self) -> Duration {
        self.ttl * 3 + Duration::from_secs(10)
    }

    /// Every node runs, streaming from the leader, within this after the heal.
    pub fn all_bound(&self) -> Duration {
        self.ttl * 3 + Duration::from_secs(20)
    }

    fn toml(&self) -> String {
        let mut s = format!(
            "[cluster]\nname = \"sim\"\n[replication]\npassword = {{ env = \"PGHA_SIM_UNUSED\" }}\nmode = \"{}\"\n\
             [dcs]\netcd = [\"http://127.0.0.1:1\"]\nrequest_timeout = \"{}ms\"\n\
             [failover]\nttl = \"{}s\"\nloop_wait = \"{}ms\"\nfailsafe = {}\nfast_dead_detection = {}\npostgres_restart_timeout = \"1s\"\n",
            if self.sync { "sync" } else { "async" },
            self.dcs_timeout.as_millis(),
            self.ttl.as_secs(),
            self.loop_wait.as_millis(),
            self.failsafe,
            self.fast_dead,
        );
        for i in 1..=self.nodes {
            s.push_str(&format!(
                "[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.{i}\"\nport = 5432\ndata_dir = \"/sim/node{i}\"\nagent_address = \"127.0.0.{i}:8008\"\n"
            ));
        }
        s
    }

    pub fn describe(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(s, f)| format!("{:.1}s {f:?}", s.as_secs_f64()))
            .collect();
        format!(
            "seed {}: {} nodes, {}, ttl {:?}, loop_wait {:?}, failsafe {}, fast path {}; faults: {}",
            self.seed,
            self.nodes,
            if self.sync { "sync" } else { "async" },
            self.ttl,
            self.loop_wait,
            self.failsafe,
            self.fast_dead,
            faults.join("; ")
        )
    }
}

fn pick(r: &mut StdRng) -> Pick {
    match r.random_range(0..10) {
        0..=5 => Pick::Primary,
        6..=8 => Pick::Replica,
        _ => Pick::Any,
    }
}

fn draw_fault(r: &mut StdRng, ttl: Duration) -> Fault {
    let ms = |r: &mut StdRng, lo: f64, hi: f64| {
        Duration::from_millis(r.random_range(
            (ttl.as_millis() as f64 * lo) as u64..=(ttl.as_millis() as f64 * hi) as u64,
        ))
    };
    match r.random_range(0..12) {
        0 => Fault::FreezeAgent {
            node: pick(r),
            dur: ms(r, 0.3, 4.0),
        },
        1 => Fault::CrashAgent {
            node: pick(r),
            restart_after: Duration::from_millis(r.random_range(100..3000)),
        },
        2 => Fault::CrashPg { node: pick(r) },
        3 => Fault::SlowPromotion {
            delay: ms(r, 0.5, 3.0),
            dur: ms(r, 2.0, 6.0),
        },
        4 => Fault::SlowStart {
            delay: ms(r, 0.5, 3.0),
            dur: ms(r, 2.0, 6.0),
        },
        5 => Fault::DcsCut {
            node: pick(r),
            dur: ms(r, 0.3, 4.0),
        },
        6 => Fault::PeersCut {
            node: pick(r),
            dur: ms(r, 0.3, 4.0),
        },
        7 => Fault::Isolate {
            node: pick(r),
            dur: ms(r, 0.3, 4.0),
        },
        8 => Fault::DcsDown {
            refuse: r.random_bool(0.5),
            dur: ms(r, 0.3, 4.0),
        },
        9 => Fault::DcsSlow {
            max: ms(r, 0.05, 0.4),
            dur: ms(r, 0.5, 4.0),
        },
        10 => Fault::RefuseToPrimary {
            dur: ms(r, 0.5, 4.0),
        },
        _ => Fault::ReceiverCut {
            node: Pick::Replica,
            dur: ms(r, 0.3, 4.0),
        },
    }
}

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
    cfg: Arc<pgha_config::PghaConfig>,
    world: WorldRef,
    slots: BTreeMap<String, Slot>,
    start: Instant,
}

impl Sim {
    fn new(sc: Scenario, opts: SimOptions) -> Self {
        let cfg = pgha_config::load_from_str(&sc.toml(), "simulation")
            .map(Arc::new)
            .unwrap_or_else(|e| panic!("simulation config is invalid: {e}")); // a bug here, not input
        let start = Instant::now();
        let mut nodes = BTreeMap::new();
        for (i, n) in cfg.nodes.iter().enumerate() {
            let mut data = Data::new();
            let mut pg = Pg::default();
            if i > 0 {
                data.standby_signal = true;
                pg.upstream = Some("node1".into());
            }
            pg.data = Some(data);
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
        let Some(ctx) = Ctx::new(self.cfg.clone(), name) else {
            return;
        };
        let gate = Gate::new();
        let h = Handle {
            world: self.world.clone(),
            me: name.to_string(),
            gate: gate.clone(),
            cfg: self.cfg.clone(),
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
                timeout: self.sc.dcs_timeout,
                ttl: self.sc.ttl,
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
                        | crate::action::Action::GrantSession
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

    /// SIGKILL of the agent: its PostgreSQL dies with it (the supervisor).
    fn kill_agent(&mut self, name: &str) {
        if let Some(s) = self.slots.remove(name) {
            s.gate.set(AgentState::Dead);
            s.task.abort();
        }
        let mut w = self.lock();
        let now = Instant::now();
        if let Some(n) = w.nodes.get_mut(name) {
            n.agent = AgentState::Dead;
            n.shared = None;
            n.watchdog = None;
            n.pg.down();
        }
        w.log(now, name, "FAULT: agent killed (its PostgreSQL with it)");
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

    /// Starts `f`; returns what ends it (None: nothing to undo).
    fn begin(&mut self, f: &Fault) -> Option<Undo> {
        let now = Instant::now();
        let log = |s: &Sim, what: String| {
            let mut w = s.lock();
            w.log(now, "FAULT", what);
        };
        match f {
            Fault::FreezeAgent { node, .. } => {
                let n = self.resolve(*node);
                log(self, format!("{n}'s agent frozen (SIGSTOP)"));
                self.set_agent(&n, AgentState::Frozen);
                Some(Undo::Thaw(n))
            }
            Fault::CrashAgent { node, .. } => {
                let n = self.resolve(*node);
                self.kill_agent(&n);
                Some(Undo::Restart(n))
            }
            Fault::CrashPg { node } => {
                let n = self.resolve(*node);
                log(self, format!("{n}'s postmaster killed"));
                self.lock().pg(&n).down();
                None
            }
            Fault::SlowPromotion { delay, .. } => {
                log(self, format!("promotions take {delay:?}"));
                self.lock().slow_promotion = Some(*delay);
                Some(Undo::Speed)
            }
            Fault::SlowStart { delay, .. } => {
                log(self, format!("starts take {delay:?}"));
                self.lock().slow_start = Some(*delay);
                Some(Undo::Speed)
            }
            Fault::DcsCut { node, .. } => {
                let n = self.resolve(*node);
                log(self, format!("{n} cut off from the DCS"));
                self.lock().net.dcs_cut.insert(n.clone());
                Some(Undo::Net)
            }
            Fault::PeersCut { node, .. } => {
                let n = self.resolve(*node);
                log(self, format!("{n} cut off from its peers"));
                self.cut_peers(&n, world::Link::Drop);
                Some(Undo::Net)
            }
            Fault::Isolate { node, .. } => {
                let n = self.resolve(*node);
                log(self, format!("{n} isolated (no DCS, no peers)"));
                self.cut_peers(&n, world::Link::Drop);
                self.lock().net.dcs_cut.insert(n);
                Some(Undo::Net)
            }
            Fault::DcsDown { refuse, .. } => {
                log(self, format!("the DCS is down (refusing: {refuse})"));
                self.lock().net.dcs_down = Some(*refuse);
                Some(Undo::Net)
            }
            Fault::DcsSlow { max, .. } => {
                log(self, format!("DCS requests delayed up to {max:?} each way"));
                self.lock().net.dcs_slow = Some(*max);
                Some(Undo::Net)
            }
            Fault::RefuseToPrimary { .. } => {
                let p = self.resolve(Pick::Primary);
                let r = self.resolve(Pick::Replica);
                if p == r {
                    return None;
                }
                log(self, format!("{r}'s connections to {p} are refused"));
                self.lock().net.links.insert((r, p), world::Link::Refuse);
                Some(Undo::Net)
            }
            Fault::ReceiverCut { node, .. } => {
                let n = self.resolve(*node);
                log(self, format!("{n}'s WAL receiver cut"));
                self.lock().pg(&n).receiver_cut = true;
                Some(Undo::Receiver(n))
            }
            Fault::Switchover { failover } => {
                let mut w = self.lock();
                // As `pgha switchover` checks it: a leader, and a target that streams.
                let (leader, _, _) = w.dcs.leader.clone()?;
                let targets: Vec<String> = w
                    .names
                    .iter()
                    .filter(|n| **n != leader && w.nodes[*n].pg.streaming_from.is_some())
                    .cloned()
                    .collect();
                if targets.is_empty() {
                    return None;
                }
                let to = targets[w.rng.random_range(0..targets.len())].clone();
                let wall = 1_800_000_000_000 + now.duration_since(self.start).as_millis() as u64;
                w.dcs.switchover = Some(crate::dcs::SwitchoverRequest {
                    kind: if *failover {
                        crate::dcs::RequestKind::Failover
                    } else {
                        crate::dcs::RequestKind::Switchover
                    },
                    from: Some(leader.clone()),
                    to: to.clone(),
                    at_ms: None,
                    requested_ms: wall,
                });
                w.dcs.notify();
                w.log(
                    now,
                    "FAULT",
                    format!(
                        "operator: {} from {leader} to {to}",
                        if *failover { "failover" } else { "switchover" }
                    ),
                );
                None
            }
        }
    }

    fn end(&mut self, u: Undo) {
        let now = Instant::now();
        match u {
            Undo::Thaw(n) => {
                self.lock()
                    .log(now, "FAULT", format!("{n}'s agent thawed (SIGCONT)"));
                self.set_agent(&n, AgentState::Alive);
            }
            Undo::Restart(n) => self.start_agent(&n),
            Undo::Speed => {
                let mut w = self.lock();
                w.slow_promotion = None;
                w.slow_start = None;
            }
            Undo::Net => {
                let mut w = self.lock();
                if w.net.dcs_down.is_some() {
                    // etcd's new leader extends every lease by its TTL after an outage.
                    let ttl = w.ttl;
                    for exp in w.dcs.leases.values_mut() {
                        *exp = now + ttl;
                    }
                }
                w.net = Default::default();
                w.log(now, "FAULT", "network healed");
            }
            Undo::Receiver(n) => self.lock().pg(&n).receiver_cut = false,
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
            if t >= heal + self.sc.ttl
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
        let w = self.lock();
        Report {
            scenario: self.sc.clone(),
            violations: w.checker.violations.clone(),
            trace: w.trace.clone(),
            promotions: w.checker.promotions,
            acked: w.checker.acked.len(),
            limitations: w.checker.limitations.clone(),
            unwritable: w.checker.unwritable.clone(),
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
    (!lagging.is_empty()).then(|| format!("not streaming: {}", lagging.join(", ")))
}

enum Undo {
    Thaw(String),
    Restart(String),
    Speed,
    Net,
    Receiver(String),
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
