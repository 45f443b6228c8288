//! The simulator's faults: [`Sim::begin`] applies one to the world, [`Sim::end`] undoes it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::world::{self, AgentState, World};
use super::{Fault, Pick, Sim};

impl Sim {
    /// Starts `f`; returns what ends it (None: nothing to undo).
    pub(super) fn begin(&mut self, f: &Fault) -> Option<Undo> {
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
            Fault::DcsCutAllBut { .. } => {
                let keep = match self.joiner() {
                    Some(j) => j,
                    None => self.resolve(Pick::Replica),
                };
                let mut w = self.lock();
                let cut: Vec<String> = w.names.iter().filter(|n| **n != keep).cloned().collect();
                w.log(
                    now,
                    "FAULT",
                    format!(
                        "{} cut off from the DCS; {keep} still reaches it",
                        cut.join(", ")
                    ),
                );
                w.net.dcs_cut.extend(cut);
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
            Fault::RestartRequest { node } => {
                let n = self.resolve(*node);
                let shared = self.lock().nodes.get(&n).and_then(|x| x.shared.clone());
                log(self, format!("operator: restart {n}"));
                if let Some(s) = shared {
                    s.request(crate::inputs::Event::RestartRequested {
                        at_ms: None,
                        pending_only: false,
                    });
                }
                None
            }
            Fault::EditConfig { restart } => {
                let mut w = self.lock();
                let mut params = serde_json::json!({"work_mem": "8MB"});
                if *restart {
                    params["max_connections"] = "200".into();
                }
                // As `pgha edit-config` writes it (the revision check passes: no other writer).
                edit_settings(
                    &mut w,
                    serde_json::json!({
                        "maximum_lag_on_failover": 4 << 20,
                        "postgresql": {"parameters": params},
                    }),
                );
                w.log(now, "FAULT", format!("operator: edit-config {params}"));
                None
            }
            Fault::SwitchMode { flavour } => {
                let mut w = self.lock();
                let c = &mut w.checker;
                match (c.sync_mode, flavour) {
                    (true, true) => c.quorum = !c.quorum,
                    (true, false) => c.sync_mode = false,
                    (false, q) => (c.sync_mode, c.quorum) = (true, *q),
                }
                c.mode_switched = true;
                let mode = match (c.sync_mode, c.quorum) {
                    (false, _) => serde_json::json!(false),
                    (true, false) => serde_json::json!(true),
                    (true, true) => serde_json::json!("quorum"),
                };
                edit_settings(&mut w, serde_json::json!({ "synchronous_mode": mode }));
                w.log(
                    now,
                    "FAULT",
                    format!("operator: edit-config --set synchronous_mode={mode}"),
                );
                None
            }
            Fault::EditTimings {
                ttl,
                loop_wait,
                retry,
                failsafe,
            } => {
                let mut w = self.lock();
                let ms = |d: &Duration| format!("{}ms", d.as_millis());
                let mut patch = serde_json::json!({
                    "ttl": ttl.as_secs(),
                    "loop_wait": ms(loop_wait),
                    "retry_timeout": ms(retry),
                });
                if let Some(f) = failsafe {
                    patch["failsafe_mode"] = serde_json::Value::Bool(*f);
                }
                edit_settings(&mut w, patch.clone());
                w.log(now, "FAULT", format!("operator: edit-config {patch}"));
                None
            }
        }
    }

    pub(super) fn end(&mut self, u: Undo) {
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
                    for (exp, ttl) in w.dcs.leases.values_mut() {
                        *exp = now + *ttl;
                    }
                }
                w.net = Default::default();
                w.log(now, "FAULT", "network healed");
            }
            Undo::Receiver(n) => self.lock().pg(&n).receiver_cut = false,
        }
    }
}

/// Merges `patch` into the DCS settings document (`PATCH /config`) and tells the watchers.
fn edit_settings(w: &mut World, patch: serde_json::Value) {
    let mut doc = w
        .dcs
        .config
        .settings
        .clone()
        .unwrap_or_else(|| serde_json::json!({}));
    pgha_config::dynamic::merge_patch(&mut doc, &patch);
    w.dcs.config.settings = Some(doc);
    w.dcs.revision += 1;
    w.dcs.config_revision = w.dcs.revision;
    w.dcs.notify();
}

pub(super) enum Undo {
    Thaw(String),
    Restart(String),
    Speed,
    Net,
    Receiver(String),
}
