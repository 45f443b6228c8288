//! A run's scenario: cluster shape, timings and faults, all drawn from a seed (or written by
//! hand for a test).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a run may be told beyond its seed.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The supervisor ignores every deadline (shows what the watchdog prevents).
    pub no_watchdog: bool,
    /// Print the trace as it happens.
    pub echo: bool,
    /// Only these fault kinds (names, comma-separated), for focused runs.
    pub only: Option<String>,
    /// Every seed starts on empty data dirs: the agents bootstrap the cluster under the faults.
    pub empty: bool,
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
    /// Every node but one loses the DCS (dropped): the joiner when the seed has one, else
    /// a replica. The leader's failsafe round must not be confirmed by nodes that cannot
    /// see the one node that can still take the lease.
    DcsCutAllBut { dur: Duration },
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
    /// An operator edits the cluster settings in the DCS (`pgha edit-config`): a reloadable
    /// parameter, and with `restart` one that needs a restart.
    EditConfig { restart: bool },
    /// An operator asks a node's agent to restart PostgreSQL (`POST /restart`).
    RestartRequest { node: Pick },
    /// An operator changes the failover timings in the DCS (`pgha edit-config --set ttl=..`):
    /// every agent moves to a lease of the new TTL while the other faults run.
    EditTimings {
        ttl: Duration,
        loop_wait: Duration,
        retry: Duration,
        /// Also switch `failsafe_mode` to this.
        failsafe: Option<bool>,
    },
    /// An operator switches `synchronous_mode` in the DCS (`pgha edit-config --set
    /// synchronous_mode=..`): from async to sync (to quorum if `flavour`), from sync or quorum
    /// to async (to the other of the two if `flavour`).
    SwitchMode { flavour: bool },
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
            Fault::DcsCutAllBut { .. } => "dcs-cut-but-one",
            Fault::DcsDown { .. } => "dcs-down",
            Fault::DcsSlow { .. } => "dcs-slow",
            Fault::RefuseToPrimary { .. } => "refuse-to-primary",
            Fault::ReceiverCut { .. } => "receiver-cut",
            Fault::Switchover { .. } => "switchover",
            Fault::EditConfig { .. } => "edit-config",
            Fault::RestartRequest { .. } => "restart-request",
            Fault::EditTimings { .. } => "edit-timings",
            Fault::SwitchMode { .. } => "switch-mode",
        }
    }

    pub(crate) fn duration(&self) -> Duration {
        match self {
            Fault::FreezeAgent { dur, .. }
            | Fault::SlowPromotion { dur, .. }
            | Fault::SlowStart { dur, .. }
            | Fault::DcsCut { dur, .. }
            | Fault::PeersCut { dur, .. }
            | Fault::Isolate { dur, .. }
            | Fault::DcsCutAllBut { dur }
            | Fault::DcsDown { dur, .. }
            | Fault::DcsSlow { dur, .. }
            | Fault::RefuseToPrimary { dur }
            | Fault::ReceiverCut { dur, .. } => *dur,
            Fault::CrashAgent { restart_after, .. } => *restart_after,
            Fault::CrashPg { .. }
            | Fault::Switchover { .. }
            | Fault::EditConfig { .. }
            | Fault::EditTimings { .. }
            | Fault::SwitchMode { .. }
            | Fault::RestartRequest { .. } => Duration::ZERO,
        }
    }
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: usize,
    pub sync: bool,
    /// Sync mode is quorum commit (`ANY k`) rather than `FIRST n`.
    pub quorum: bool,
    pub failsafe: bool,
    pub fast_dead: bool,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub dcs_timeout: Duration,
    /// (start, fault), by start.
    pub faults: Vec<(Duration, Fault)>,
    /// Every data dir starts empty: the agents bootstrap the cluster.
    pub empty: bool,
    /// Per node (node1 first): `failover_priority` and `sync_priority` other than the
    /// default, never 0 (a node that may not lead would make liveness a matter of luck).
    pub priorities: Vec<Option<(u32, u32)>>,
    /// Sync mode: `replication.sync_standbys` (1 or 2) and `failover.sync_strict`.
    pub sync_standbys: u32,
    pub strict: bool,
    /// Sync mode: `failover.maximum_lag_on_syncnode` in bytes (a WAL record is 100).
    pub max_sync_lag: Option<u64>,
    /// The last node is in its own pgha.toml only: added to the cluster while the others
    /// still run with the old node list (an operator's rollout), so no leader's failsafe
    /// round asks it. Never with `empty` (it could bootstrap a cluster the others ignore).
    pub joiner: bool,
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
        // Operator actions: each drawn from a stream of its own, so adding one left every
        // other fault of a seed as it was (the seeds that found bugs keep their faults).
        let mut own = |salt: u64, p: f64, kind: &str, make: fn(&mut StdRng) -> Fault| {
            let mut r = StdRng::seed_from_u64(seed ^ salt);
            if r.random_bool(p)
                && opts
                    .only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|k| k.trim() == kind))
            {
                let start = Duration::from_millis(r.random_range(3_000..30_000));
                faults.push((start, make(&mut r)));
            }
        };
        own(0x0053_7717_c40e, 0.25, "switchover", |r| {
            Fault::Switchover {
                failover: r.random_bool(0.3),
            }
        });
        own(0x00ed_17c0_f16e, 0.25, "edit-config", |r| {
            Fault::EditConfig {
                restart: r.random_bool(0.5),
            }
        });
        own(0x0005_7a27_0e57, 0.2, "restart-request", |r| {
            Fault::RestartRequest { node: pick(r) }
        });
        own(0x0071_3e5c_a1e0, 0.25, "edit-timings", |r| {
            let ttl =
                Duration::from_secs(*[3u64, 5, 8, 12].get(r.random_range(0..4)).unwrap_or(&8));
            let fits = |d: &Duration| *d * 4 <= ttl;
            let waits: Vec<Duration> = [250u64, 500, 1000, 2000]
                .map(Duration::from_millis)
                .into_iter()
                .filter(fits)
                .collect();
            let retries: Vec<Duration> = [500u64, 1000]
                .map(Duration::from_millis)
                .into_iter()
                .filter(fits)
                .collect();
            Fault::EditTimings {
                ttl,
                loop_wait: waits[r.random_range(0..waits.len())],
                retry: retries[r.random_range(0..retries.len())],
                failsafe: r.random_bool(0.3).then(|| r.random_bool(0.5)),
            }
        });
        // A switch in a quarter of the seeds, and a second one (back, or the first of a
        // seed without one) in 2.5 % (independent draws).
        own(0x0051_7c4d_0de5, 0.25, "switch-mode", |r| {
            Fault::SwitchMode {
                flavour: r.random_bool(0.4),
            }
        });
        own(0x0051_7c4d_0de6, 0.025, "switch-mode", |r| {
            Fault::SwitchMode {
                flavour: r.random_bool(0.4),
            }
        });
        faults.sort_by_key(|(s, _)| *s);
        // Own stream: the other draws stay as they were.
        let mut pr = StdRng::seed_from_u64(seed ^ 0x0070_1e5a_c0de);
        let priorities = (0..nodes)
            .map(|_| {
                pr.random_bool(0.3)
                    .then(|| (pr.random_range(1..=3), pr.random_range(1..=3)))
            })
            .collect();
        let quorum = StdRng::seed_from_u64(seed ^ 0x0000_a11c_0a75).random_bool(0.4);
        let mut sr = StdRng::seed_from_u64(seed ^ 0x0005_7c00_0b1e);
        let sync_standbys = if sr.random_bool(0.3) { 2 } else { 1 };
        let strict = sr.random_bool(0.3);
        let max_sync_lag =
            sr.random_bool(0.3)
                .then(|| if sr.random_bool(0.5) { 2_000 } else { 20_000 });
        // Own streams: the other draws stay as they were.
        let joiner = !opts.empty && StdRng::seed_from_u64(seed ^ 0x0000_d01e_05ed).random_bool(0.1);
        let mut jr = StdRng::seed_from_u64(seed ^ 0x00c7_a11b_0071);
        let p_cut = if joiner { 0.6 } else { 0.05 };
        if jr.random_bool(p_cut)
            && opts
                .only
                .as_deref()
                .is_none_or(|o| o.split(',').any(|k| k.trim() == "dcs-cut-but-one"))
        {
            let start = Duration::from_millis(jr.random_range(3_000..30_000));
            let dur = Duration::from_millis(
                jr.random_range(ttl.as_millis() as u64..=ttl.as_millis() as u64 * 4),
            );
            faults.push((start, Fault::DcsCutAllBut { dur }));
            faults.sort_by_key(|(s, _)| *s);
        }
        Scenario {
            seed,
            nodes,
            sync: r.random_bool(0.5),
            quorum,
            failsafe: r.random_bool(0.7),
            fast_dead: r.random_bool(0.7),
            ttl,
            loop_wait,
            dcs_timeout,
            faults,
            empty: opts.empty,
            priorities,
            sync_standbys,
            strict,
            max_sync_lag,
            joiner,
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

    /// The longest TTL the run has: pgha.toml's or an edited one.
    pub fn max_ttl(&self) -> Duration {
        self.faults
            .iter()
            .filter_map(|(_, f)| match f {
                Fault::EditTimings { ttl, .. } => Some(*ttl),
                _ => None,
            })
            .fold(self.ttl, Duration::max)
    }

    /// A writable primary holding the lease exists within this after the heal.
    pub fn primary_bound(&self) -> Duration {
        self.max_ttl() * 3 + Duration::from_secs(10)
    }

    /// Every node runs, streaming from the leader, within this after the heal.
    pub fn all_bound(&self) -> Duration {
        self.max_ttl() * 3 + Duration::from_secs(20)
    }

    pub(crate) fn toml(&self) -> String {
        let mut s = format!(
            "[cluster]\nname = \"sim\"\n[replication]\npassword = {{ env = \"PGHA_SIM_UNUSED\" }}\nmode = {}\n\
             [dcs]\netcd = [\"http://127.0.0.1:1\"]\nrequest_timeout = \"{}ms\"\n\
             [failover]\nttl = \"{}s\"\nloop_wait = \"{}ms\"\nfailsafe = {}\nfast_dead_detection = {}\npostgres_restart_timeout = \"1s\"\nsync_strict = {}\n",
            if self.sync {
                format!(
                    "\"{}\"\nsync_standbys = {}",
                    if self.quorum { "quorum" } else { "sync" },
                    self.sync_standbys
                )
            } else {
                "\"async\"".into()
            },
            self.dcs_timeout.as_millis(),
            self.ttl.as_secs(),
            self.loop_wait.as_millis(),
            self.failsafe,
            self.fast_dead,
            self.sync && self.strict,
        );
        if let Some(b) = self.max_sync_lag.filter(|_| self.sync) {
            s.push_str(&format!("maximum_lag_on_syncnode = \"{b}B\"\n"));
        }
        for i in 1..=self.nodes {
            s.push_str(&format!(
                "[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.{i}\"\nport = 5432\ndata_dir = \"/sim/node{i}\"\nagent_address = \"127.0.0.{i}:8008\"\n"
            ));
            if let Some(Some((f, y))) = self.priorities.get(i - 1) {
                s.push_str(&format!("failover_priority = {f}\nsync_priority = {y}\n"));
            }
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
            "seed {}: {} nodes{}, {}, ttl {:?}, loop_wait {:?}, failsafe {}, fast path {}, priorities {:?}; faults: {}",
            self.seed,
            self.nodes,
            if self.joiner {
                format!(" (node{} in its own pgha.toml only)", self.nodes)
            } else {
                String::new()
            },
            if self.sync {
                format!(
                    "{} {}{}{}",
                    if self.quorum { "quorum" } else { "sync" },
                    self.sync_standbys,
                    if self.strict { " strict" } else { "" },
                    self.max_sync_lag
                        .map_or(String::new(), |b| format!(" max-sync-lag {b}B"))
                )
            } else {
                "async".into()
            },
            self.ttl,
            self.loop_wait,
            self.failsafe,
            self.fast_dead,
            self.priorities,
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
