//! Permanent physical slots (`replication.permanent_slots`) on replicas, as Patroni 11+ keeps
//! them: the leader publishes each one's `restart_lsn` in `status`; a replica that may lead
//! holds the slot too, moved up to the leader's position (never past what it replayed). Once
//! promoted it keeps the WAL the slot's consumer (a standby site, pg_receivewal) still needs
//! from when it took over, instead of making the slot afresh at its own position.

use std::collections::BTreeMap;

use pgha_postgres::Lsn;

use super::{Ctx, Decision};
use crate::action::Action;
use crate::dcs::{ClusterView, LeaderInfo};
use crate::inputs::Inputs;

/// The leader's `status.slots` entries for its permanent physical slots: their `restart_lsn`.
pub(super) fn positions(ctx: &Ctx, inp: &Inputs) -> BTreeMap<String, Lsn> {
    let r = &ctx.cfg.replication;
    if !r.slots {
        return BTreeMap::new();
    }
    r.permanent_slots
        .iter()
        .filter_map(|n| Some((n.clone(), *inp.local.slot_restart.get(n)?)))
        .collect()
}

/// On a streaming replica: one that may lead creates the permanent slots the leader has and
/// it lacks, and advances its own to the leader's position. A slot someone streams through
/// from us (active) is theirs to move; one ahead of the leader's stays (a slot cannot move
/// back); one PostgreSQL invalidated (no `restart_lsn`: `max_slot_wal_keep_size`) is dropped
/// and made again. A node that never leads drops its idle copies (they would hold WAL).
pub(super) fn on_replica(
    ctx: &Ctx,
    d: &mut Decision,
    inp: &Inputs,
    view: &ClusterView,
    leader: &LeaderInfo,
) {
    let r = &ctx.cfg.replication;
    if r.permanent_slots.is_empty() || !r.slots || d.next.job.is_some() {
        return; // (a job may be stopping PostgreSQL: nothing to do there this tick)
    }
    if ctx.standby_source(view).is_some() {
        return; // a standby cluster's leader holds no permanent slot either
    }
    let Some(slots) = &inp.local.slots else {
        return; // not read this tick
    };
    let idle = |name: &String| slots.iter().any(|(n, active)| n == name && !*active);
    if ctx.me.failover_rank() == 0 {
        for name in r.permanent_slots.iter().filter(|n| idle(n)) {
            d.act(Action::DropSlot { name: name.clone() });
        }
        return;
    }
    let Some(st) = view.status.as_ref().filter(|s| s.leader == leader.name) else {
        return;
    };
    let Some(replayed) = inp.local.replay_lsn else {
        return; // nothing says how far an advance may go
    };
    for name in &r.permanent_slots {
        let Some(&at) = st.slots.get(name) else {
            continue; // the leader has not made it yet
        };
        match slots.iter().find(|(n, _)| n == name) {
            None => d.act(Action::CreateSlot { name: name.clone() }),
            Some((_, true)) => {}
            Some((_, false)) => {
                let Some(&cur) = inp.local.slot_restart.get(name) else {
                    d.act(Action::DropSlot { name: name.clone() });
                    continue;
                };
                let to = replayed.min(at);
                if to > cur {
                    d.act(Action::AdvanceSlot {
                        name: name.clone(),
                        database: ctx.cfg.postgres.database.clone(),
                        to,
                    });
                }
            }
        }
    }
}
