//! The simulated world: a DCS with etcd's lease semantics, the nodes' PostgreSQL, a network
//! between them, clients writing to every writable node, and the checker of the invariants.
//! Everything advances on the runtime's virtual clock, under one lock, from one seeded RNG.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pg::{Pg, Rec};
use crate::dcs::{
    ClusterView, DynamicConfig, LeaderInfo, LeaderStatus, LeaseId, MemberState, SwitchoverRequest,
    SyncState,
};
use crate::shared::Shared;

/// The world, shared by every fake.
pub type WorldRef = Arc<std::sync::Mutex<World>>;

/// How a connection from one node to another fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Packets vanish: the caller waits for its timeout.
    Drop,
    /// Connection refused (a reset), at once.
    Refuse,
}

/// The agent process of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Alive,
    Frozen,
    Dead,
}

#[derive(Debug)]
pub struct NodeSim {
    pub pg: Pg,
    pub agent: AgentState,
    /// The supervisor kills PostgreSQL at this deadline.
    pub watchdog: Option<Instant>,
    /// The agent's shared state (its API answers failsafe from it).
    pub shared: Option<Arc<Shared>>,
}

/// The DCS: keys with revisions, leases with expiry.
#[derive(Debug, Default)]
pub struct Dcs {
    pub revision: i64,
    next_lease: i64,
    /// Each lease's expiry and the TTL it was granted with.
    pub leases: BTreeMap<LeaseId, (Instant, Duration)>,
    /// (holder, lease, mod revision)
    pub leader: Option<(String, LeaseId, i64)>,
    pub members: BTreeMap<String, (MemberState, LeaseId)>,
    pub status: Option<LeaderStatus>,
    pub config: DynamicConfig,
    pub config_revision: i64,
    pub switchover: Option<SwitchoverRequest>,
    pub sync: Option<SyncState>,
    /// The `sync` key's mod revision (0: absent).
    pub sync_revision: i64,
    /// The highest timeline allocated to a promotion.
    pub timeline: i64,
    pub history: Vec<crate::dcs::HistoryEntry>,
    /// The `initialize` key and the lease it sits on (None once done).
    pub initialize: Option<(crate::dcs::Initialize, Option<LeaseId>)>,
    pub watchers: Vec<(String, mpsc::Sender<()>)>,
}

impl Dcs {
    fn bump(&mut self) -> i64 {
        self.revision += 1;
        self.revision
    }

    pub fn grant(&mut self, now: Instant, ttl: Duration) -> LeaseId {
        self.next_lease += 1;
        self.leases.insert(self.next_lease, (now + ttl, ttl));
        self.next_lease
    }

    pub fn lease_alive(&self, lease: LeaseId) -> bool {
        self.leases.contains_key(&lease)
    }

    /// Expired leases go, with every key on them. True when the leader key went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (exp, _))| *exp <= now)
            .map(|(l, _)| *l)
            .collect();
        let mut leader_gone = false;
        for l in gone {
            leader_gone |= self.drop_lease(l);
        }
        leader_gone
    }

    /// Revokes `lease` and its keys; true when the leader key was on it.
    pub fn drop_lease(&mut self, lease: LeaseId) -> bool {
        self.leases.remove(&lease);
        self.members.retain(|_, (_, l)| *l != lease);
        if self
            .initialize
            .as_ref()
            .is_some_and(|(_, l)| *l == Some(lease))
        {
            self.initialize = None;
            self.bump();
        }
        if self.leader.as_ref().is_some_and(|(_, l, _)| *l == lease) {
            self.leader = None;
            self.bump();
            return true;
        }
        false
    }

    pub fn view(&self) -> ClusterView {
        ClusterView {
            leader: self.leader.as_ref().map(|(n, l, r)| LeaderInfo {
                name: n.clone(),
                lease: *l,
                revision: *r,
            }),
            members: self
                .members
                .iter()
                .map(|(k, (m, _))| (k.clone(), m.clone()))
                .collect(),
            status: self.status.clone(),
            config: self.config.clone(),
            config_revision: self.config_revision,
            switchover: self.switchover.clone(),
            sync: self.sync.clone(),
            sync_revision: self.sync_revision,
            history: self.history.clone(),
            initialize: self
                .initialize
                .as_ref()
                .map(|(i, l)| crate::dcs::Initialize {
                    lease: *l,
                    ..i.clone()
                }),
        }
    }

    pub fn set_leader(&mut self, name: &str, lease: LeaseId) {
        let r = self.bump();
        self.leader = Some((name.to_string(), lease, r));
    }

    /// Wakes every watcher (a decision-relevant key changed).
    pub fn notify(&mut self) {
        self.watchers.retain(|(_, tx)| !tx.is_closed());
        for (_, tx) in &self.watchers {
            let _ = tx.try_send(());
        }
    }
}

/// The network.
#[derive(Debug, Default)]
pub struct Net {
    /// (from, to) -> link; absent: up.
    pub links: BTreeMap<(String, String), Link>,
    /// Nodes cut off from the DCS.
    pub dcs_cut: BTreeSet<String>,
    /// The whole DCS is down: Some(true) refuses at once, Some(false) drops.
    pub dcs_down: Option<bool>,
    /// DCS requests take up to this long each way.
    pub dcs_slow: Option<Duration>,
}

impl Net {
    pub fn link(&self, from: &str, to: &str) -> Link {
        if from == to || self.links.is_empty() {
            return Link::Up;
        }
        self.links
            .iter()
            .find(|((f, t), _)| f == from && t == to)
            .map_or(Link::Up, |(_, l)| *l)
    }

    /// A TCP conversation from `from` to `to` works.
    pub fn both_up(&self, from: &str, to: &str) -> bool {
        self.link(from, to) == Link::Up && self.link(to, from) != Link::Drop
    }
}

/// The safety and liveness rules, checked as the world moves.
#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<String>,
    /// Commits acknowledged under sync (those no failover may lose).
    pub acked: BTreeSet<u64>,
    /// Every acknowledged commit.
    pub acks: usize,
    pub acked_by: BTreeMap<u64, String>,
    /// Timeline -> node whose promotion created it.
    pub timelines: BTreeMap<i64, String>,
    /// The cluster's mode (the scenario's, then as `SwitchMode` set it): sync or quorum,
    /// and which of the two.
    pub sync_mode: bool,
    pub quorum: bool,
    /// The mode was switched at runtime: commits count as acknowledged under sync only while
    /// the `sync` key exists or the primary waited for a standby.
    pub mode_switched: bool,
    pub promotions: u32,
    pub reclones: u32,
    /// Completed bootstraps of a new cluster.
    pub bootstraps: u32,
    pub two_writable_steps: u32,
    pub first_writable_after_heal: Option<Instant>,
    /// Violation keys already reported.
    pub seen: BTreeSet<String>,
    /// (node, start) whose lease the fast path revoked while its PostgreSQL ran.
    pub misjudged: BTreeSet<(String, u64)>,
    /// Known limitations the run ran into (reported, not failed).
    pub limitations: Vec<String>,
    /// Steps (time since start) at which no node took writes.
    pub unwritable: Vec<Duration>,
    /// The node only its own pgha.toml lists (`Scenario::joiner`).
    pub joiner: Option<String>,
}

/// Everything.
#[derive(Debug)]
pub struct World {
    pub rng: StdRng,
    pub start: Instant,
    pub ttl: Duration,
    pub dcs: Dcs,
    pub nodes: BTreeMap<String, NodeSim>,
    pub net: Net,
    pub checker: Checker,
    pub trace: Vec<String>,
    pub next_commit: u64,
    /// Promotion and start delays (a fault makes them outlast the TTL).
    pub slow_promotion: Option<Duration>,
    pub slow_start: Option<Duration>,
    /// Print the trace as it grows (debugging one seed).
    pub echo: bool,
    /// Each node's recorded failsafe promise (wall ms): survives agent restarts.
    pub promise_store: BTreeMap<String, u64>,
    /// The nodes' names, in order (kept apart so a step need not collect them).
    pub names: Vec<String>,
    /// Failsafe promises: who promised `leader` not to take the lease, until when.
    pub promises: BTreeMap<String, (String, Instant)>,
}

impl World {
    pub fn log(&mut self, now: Instant, who: &str, what: impl AsRef<str>) {
        let t = now.duration_since(self.start).as_secs_f64();
        let line = format!("[{t:9.3}] {who:>6}: {}", what.as_ref());
        if self.echo {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    /// A violation, recorded once per `key` (a rule and a node): the first occurrence says it.
    pub fn violation_once(&mut self, now: Instant, key: String, what: String) {
        if self.checker.seen.insert(key) {
            self.violation(now, what);
        }
    }

    pub fn violation(&mut self, now: Instant, what: String) {
        self.log(now, "CHECK", format!("VIOLATION: {what}"));
        self.checker.violations.push(format!(
            "t={:.3}s: {what}",
            now.duration_since(self.start).as_secs_f64()
        ));
    }

    pub fn pg(&mut self, node: &str) -> &mut Pg {
        &mut self
            .nodes
            .get_mut(node)
            .expect("the simulator only names its own nodes") // see message
            .pg
    }

    pub fn node(&self, node: &str) -> Option<&NodeSim> {
        self.nodes.get(node)
    }

    pub fn delay(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo_ms..=hi_ms))
    }

    /// The node holds the leader key on a live lease.
    pub fn holds_lease(&self, node: &str) -> bool {
        self.dcs
            .leader
            .as_ref()
            .is_some_and(|(n, l, _)| n == node && self.dcs.lease_alive(*l))
    }

    /// Every other node promised `node` (failsafe) not to take the lease: it may keep taking
    /// writes without a lease the DCS can confirm.
    pub fn failsafe_covers(&self, node: &str, now: Instant) -> bool {
        // A node outside the failsafe topology the DCS holds may not be elected
        // (`election::Rules::failsafe`): its promise is not needed.
        let topology = crate::election::Rules::failsafe_topology(self.dcs.status.as_ref());
        let needed = |n: &String| topology.is_none_or(|t| t.contains_key(n));
        self.nodes
            .keys()
            .filter(|n| *n != node && needed(n))
            .all(|n| {
                self.promises
                    .get(n)
                    .is_some_and(|(l, until)| l == node && *until > now)
            })
    }

    /// One step of the world at `now`.
    pub fn step(&mut self, now: Instant) {
        if self.dcs.expire(now) {
            self.log(now, "dcs", "leader lease expired");
            self.dcs.notify();
        }
        let names = std::mem::take(&mut self.names);
        for n in &names {
            self.pg_events(now, n);
        }
        self.replicate(now, &names);
        self.write(now, &names);
        self.check(now, &names);
        self.names = names;
    }

    /// Promotions, checkpoints and supervisor deadlines that fall due.
    fn pg_events(&mut self, now: Instant, n: &str) {
        let node = self.nodes.get_mut(n).expect("own node"); // see message
        if let Some(dl) = node.watchdog {
            if dl <= now && node.pg.running && !node.pg.unsupervised {
                node.pg.down();
                node.watchdog = None;
                self.log(now, n, "supervisor deadline passed: PostgreSQL killed");
                return;
            }
        }
        let pg = &mut node.pg;
        if pg.promote_at.is_some_and(|p| p <= now) && pg.running {
            pg.promote_at = None;
            let floor = pg.timeline_floor.take().unwrap_or(0);
            let tli = {
                let d = pg.data.as_mut().expect("promoted with data"); // see message
                d.standby_signal = false;
                d.tli = d.tli.max(floor) + 1;
                d.tli
            };
            pg.upstream = None;
            pg.streaming_from = None;
            pg.received_tli = None;
            let ckpt = self.rng.random_range(500..20_000);
            let pg = self.pg(n);
            pg.checkpoint_at = Some(now + Duration::from_millis(ckpt));
            self.checker.promotions += 1;
            self.log(now, n, format!("PostgreSQL promoted: timeline {tli}"));
            if let Some(other) = self.checker.timelines.get(&tli).cloned() {
                self.violation(
                    now,
                    format!("{n} promoted to timeline {tli}, which {other} created too"),
                );
            } else {
                self.checker.timelines.insert(tli, n.to_string());
            }
            self.became_writable(now, n);
        }
        let pg = self.pg(n);
        if pg.checkpoint_at.is_some_and(|c| c <= now) {
            pg.checkpoint_at = None;
            if let Some(d) = pg.data.as_mut() {
                d.control_tli = d.tli;
            }
        }
    }

    /// The leader deleted the `sync` key: in async mode, what was acknowledged before may be
    /// lost from now on, as in any async cluster; in sync mode (a leader that never ran its
    /// PostgreSQL as primary put back an absent key) every acknowledged commit stays owed.
    pub fn sync_deleted(&mut self) {
        if !self.checker.sync_mode {
            self.checker.acked.clear();
            self.checker.acked_by.clear();
        }
    }

    /// The node that starts taking writes holds every commit acknowledged under sync (in
    /// sync mode, or while the `sync` key existed; a deletion of the key in async mode ends
    /// that promise for the commits before it).
    pub fn became_writable(&mut self, now: Instant, n: &str) {
        let Some(d) = self.nodes.get(n).and_then(|x| x.pg.data.as_ref()) else {
            return;
        };
        let have: BTreeSet<u64> = d.wal.iter().map(|r| r.id).collect();
        let missing: Vec<u64> = self
            .checker
            .acked
            .iter()
            .filter(|id| !have.contains(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            let first = missing.iter().take(5).map(|i| {
                format!(
                    "{i} (acked by {})",
                    self.checker.acked_by.get(i).cloned().unwrap_or_default()
                )
            });
            let msg = format!(
                "sync mode: {n} takes writes without {} acknowledged commits: {}",
                missing.len(),
                first.collect::<Vec<_>>().join(", ")
            );
            self.violation(now, msg);
        }
    }

    /// Streaming: each running replica copies what its upstream has, when it can.
    fn replicate(&mut self, now: Instant, names: &[String]) {
        for r in names {
            let (up, ok) = {
                let pg = &self.nodes[r].pg;
                let up = pg.upstream.clone();
                let ok = pg.ready(now)
                    && pg.in_recovery()
                    && pg.promote_at.is_none()
                    && !pg.receiver_cut;
                (up, ok)
            };
            let mut streaming: Option<String> = None;
            if let (true, Some(u)) = (ok, up) {
                let net_ok = self.net.both_up(r, &u);
                let src = self.nodes.get(&u).map(|x| &x.pg);
                if let (true, Some(src)) = (net_ok, src) {
                    if src.ready(now) {
                        if let (Some(sd), Some(rd)) =
                            (src.data.as_ref(), self.nodes[r].pg.data.as_ref())
                        {
                            if rd.is_prefix_of(sd) {
                                streaming = Some(u.clone());
                            }
                        }
                    }
                }
            }
            match streaming {
                Some(u) => {
                    let (tail, tli) = {
                        let sd = self.nodes[&u].pg.data.as_ref().expect("checked above"); // see above
                        let have = self.nodes[r].pg.data.as_ref().map_or(0, |d| d.wal.len());
                        let tail = (have < sd.wal.len()).then(|| sd.wal[have..].to_vec());
                        (tail, sd.tli)
                    };
                    let pg = self.pg(r);
                    if let Some(d) = pg.data.as_mut() {
                        // A replica follows its upstream's history, timeline switches included.
                        if let Some(t) = tail {
                            d.wal.extend_from_slice(&t);
                        }
                        d.tli = tli;
                    }
                    pg.received_tli = Some(tli);
                    if pg.streaming_from.as_deref() != Some(u.as_str()) {
                        pg.streaming_from = Some(u);
                    }
                }
                None => {
                    let pg = self.pg(r);
                    if pg.streaming_from.is_some() {
                        pg.streaming_from = None;
                    }
                    pg.received_tli = None;
                }
            }
        }
    }

    /// Clients commit on every writable node; commits are acknowledged per the node's
    /// synchronous standbys.
    fn write(&mut self, now: Instant, names: &[String]) {
        for n in names {
            if !self.nodes[n].pg.writable(now) {
                continue;
            }
            self.next_commit += 1;
            let id = self.next_commit;
            let pg = self.pg(n);
            let d = pg.data.as_mut().expect("writable has data"); // see message
            d.wal.push(Rec { tli: d.tli, id });
            let pos = d.lsn();
            pg.pending.push((id, pos));
        }
        for n in names {
            let (n_sync, any, list, pending) = {
                let pg = &self.nodes[n].pg;
                if pg.pending.is_empty() {
                    continue;
                }
                (
                    pg.sync_n,
                    pg.sync_any,
                    pg.sync_names.clone(),
                    pg.pending.clone(),
                )
            };
            // The listed standbys that stream from us, with their positions.
            let streaming: Vec<u64> = list
                .iter()
                .filter_map(|s| {
                    let x = &self.nodes.get(s)?.pg;
                    (x.streaming_from.as_deref() == Some(n.as_str()))
                        .then(|| x.data.as_ref().map_or(0, |d| d.lsn()))
                })
                .collect();
            let mut acked = Vec::new();
            let mut left = Vec::new();
            for (id, pos) in pending {
                let ok = if n_sync == 0 {
                    true
                } else if any {
                    // ANY n: any n of them flushed it.
                    streaming.iter().filter(|f| **f >= pos).count() >= n_sync
                } else {
                    // FIRST n: the first n listed standbys that stream from us are
                    // synchronous, and each flushed it.
                    streaming.len() >= n_sync && streaming.iter().take(n_sync).all(|f| *f >= pos)
                };
                if ok {
                    acked.push(id);
                } else {
                    left.push((id, pos));
                }
            }
            self.pg(n).pending = left;
            for id in acked {
                let misjudged = self
                    .checker
                    .misjudged
                    .contains(&(n.clone(), self.nodes[n].pg.boot));
                if !self.holds_lease(n) && !self.failsafe_covers(n, now) && !misjudged {
                    self.violation_once(
                        now,
                        format!("unleased ack {n}"),
                        format!("{n} acknowledged commit {id} without holding a valid leader lease (nor every other node's failsafe promise)"),
                    );
                }
                let under_sync = if self.checker.mode_switched {
                    self.dcs.sync.is_some() || n_sync > 0
                } else {
                    self.checker.sync_mode
                };
                self.checker.acks += 1;
                if under_sync {
                    self.checker.acked.insert(id);
                    self.checker.acked_by.insert(id, n.clone());
                }
            }
        }
    }

    fn check(&mut self, now: Instant, names: &[String]) {
        let writable: Vec<&String> = names
            .iter()
            .filter(|n| self.nodes[*n].pg.writable(now))
            .collect();
        if writable.is_empty() {
            self.checker.unwritable.push(now.duration_since(self.start));
        }
        let misjudged = writable.iter().any(|n| {
            self.checker
                .misjudged
                .contains(&((*n).clone(), self.nodes[*n].pg.boot))
        });
        if writable.len() > 1 && !misjudged {
            self.checker.two_writable_steps += 1;
            let w = writable
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.violation_once(
                now,
                format!("two writable {w}"),
                format!("two nodes accept writes: {w}"),
            );
        }
    }
}
