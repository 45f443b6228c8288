//! Permanent logical slots (`replication.logical_slots`, Patroni's `slots` of type logical).
//! The leader creates them and publishes their `confirmed_flush_lsn` in `status`; a replica
//! that may lead keeps a copy: taken from the leader (its state file, with a restart: a
//! standby of PostgreSQL 15 cannot create one), then advanced to the leader's position, never
//! past what it replayed. Promoted, it has each slot at a position no later than what
//! consumers confirmed: they may see changes twice, never miss one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgha_postgres::Lsn;

use super::{Ctx, Decision};
use crate::action::{Action, Job};
use crate::dcs::{ClusterView, LeaderInfo};
use crate::inputs::Inputs;
use crate::memory::Ahead;

/// We replayed up to `at`.
fn replayed(inp: &Inputs, at: Lsn) -> bool {
    inp.local.replay_lsn.is_some_and(|r| r >= at)
}

/// A copy restarts the replica: not more often than this.
pub(crate) const COPY_BACKOFF: Duration = Duration::from_secs(30);

/// How many fresh statuses of the leader (it publishes one a loop, none while it runs a job)
/// may show its slot behind our copy, over at least as many loops, before the copy counts as
/// another slot (a former primary's own, from before a failover: past the fork it would skip
/// the new timeline's changes) and is copied anew. A fresh copy can be ahead of the status
/// written before it was read; the leader's slot never moves back, so a status written after
/// the copy is at or past it.
const AHEAD_LOOPS: u32 = 3;

/// On our primary: creates the configured slots it lacks.
pub(super) fn on_primary(ctx: &Ctx, d: &mut Decision, inp: &Inputs) {
    if !ctx.cfg.replication.slots || inp.local.in_recovery() || inp.local.slots.is_none() {
        return;
    }
    // One a tick: each may wait out its statement budget (open write transactions), and
    // the budgets of several would add up past the lease.
    if let Some(spec) = ctx
        .cfg
        .replication
        .logical_slots
        .iter()
        .find(|spec| !inp.local.logical_slots.iter().any(|s| s.name == spec.name))
    {
        d.act(Action::CreateLogicalSlot {
            name: spec.name.clone(),
            database: spec.database.clone(),
            plugin: spec.plugin.clone(),
        });
    }
}

/// The leader's `status.slots`: where each configured slot's consumer confirmed.
pub(super) fn positions(ctx: &Ctx, inp: &Inputs) -> BTreeMap<String, Lsn> {
    ctx.cfg
        .replication
        .logical_slots
        .iter()
        .filter_map(|spec| {
            let s = inp.local.logical_slots.iter().find(|s| is_spec(s, spec))?;
            Some((spec.name.clone(), s.confirmed_flush?))
        })
        .collect()
}

pub(super) fn is_spec(s: &crate::inputs::LogicalSlot, spec: &pgha_config::LogicalSlotSpec) -> bool {
    s.name == spec.name
        && s.database.as_deref() == Some(spec.database.as_str())
        && s.plugin.as_deref() == Some(spec.plugin.as_str())
}

/// On a streaming replica: advances its copies to the leader's positions; copies the ones it
/// lacks (or holds of another slot) from the leader. Nodes that never lead keep none (a copy
/// holds back the primary's catalog rows through hot_standby_feedback).
pub(super) fn on_replica(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &LeaderInfo,
) {
    let specs = &ctx.cfg.replication.logical_slots;
    if specs.is_empty() || !ctx.cfg.replication.slots || ctx.me.failover_rank() == 0 {
        return;
    }
    if inp.local.slots.is_none() {
        // pg_replication_slots was not read this tick: no slot seen is not "no copy" (a
        // copy restarts PostgreSQL and replaces an advanced copy with an older state).
        return;
    }
    let Some(st) = view.status.as_ref().filter(|s| s.leader == leader.name) else {
        return;
    };
    let now = inp.now;
    let mut copy = Vec::new();
    let mut ahead = BTreeSet::new();
    for spec in specs {
        let Some(&at) = st.slots.get(&spec.name) else {
            continue; // the leader has not made it yet
        };
        let ours = inp.local.logical_slots.iter().find(|s| s.name == spec.name);
        match ours.filter(|s| is_spec(s, spec)) {
            // Missing, or another slot of that name: copied, but only once we replayed up to
            // the leader's position (a copy ahead of our replay would, promoted, skip what
            // the new timeline writes between the two).
            None => {
                if replayed(inp, at) {
                    copy.push(spec.name.clone());
                }
            }
            Some(s) => {
                let conf = s.confirmed_flush.unwrap_or_default();
                if conf > at {
                    ahead.insert(spec.name.clone());
                    let fresh = || Ahead {
                        leader: st.leader.clone(),
                        since: now,
                        status_ms: st.updated_ms,
                        statuses: 0,
                    };
                    let a = d
                        .next
                        .logical_ahead
                        .entry(spec.name.clone())
                        .or_insert_with(fresh);
                    if a.leader != st.leader {
                        *a = fresh();
                    }
                    if st.updated_ms > a.status_ms {
                        a.status_ms = st.updated_ms;
                        a.statuses += 1;
                    }
                    if a.statuses >= AHEAD_LOOPS
                        && now.duration_since(a.since) >= ctx.t.loop_wait * AHEAD_LOOPS
                        && replayed(inp, at)
                    {
                        copy.push(spec.name.clone());
                    }
                    continue;
                }
                let Some(replayed) = inp.local.replay_lsn else {
                    continue; // nothing says how far an advance may go
                };
                let to = replayed.min(at);
                if to > conf {
                    d.act(Action::AdvanceSlot {
                        name: spec.name.clone(),
                        database: spec.database.clone(),
                        to,
                    });
                }
            }
        }
    }
    d.next.logical_ahead.retain(|n, _| ahead.contains(n));
    if copy.is_empty()
        || d.next.job.is_some()
        || d.next
            .timers
            .logical_copied
            .is_some_and(|t| now.duration_since(t) < COPY_BACKOFF)
    {
        return;
    }
    d.because(format!(
        "follower of {}: copying logical slots {} from it (restarts PostgreSQL)",
        leader.name,
        copy.join(", ")
    ));
    if d.spawn(
        ctx,
        now,
        Job::CopyLogicalSlots {
            from: leader.name.clone(),
            names: copy,
        },
    ) {
        d.next.timers.logical_copied = Some(now);
        d.next.logical_ahead.clear();
    }
}
