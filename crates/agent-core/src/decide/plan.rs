//! Pure planners the roles share: replication slots and synchronous standbys.

use pgha_postgres::sql::quote_ident;

use super::{Ctx, Decision};
use crate::action::Action;
use crate::cascade;
use crate::dcs::{ClusterView, SyncState};
use crate::inputs::Inputs;
use crate::memory::PendingSync;

/// `FIRST n ("a", "b")`, or empty for no names.
pub fn sync_names_for(n: usize, names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    format!(
        "FIRST {n} ({})",
        names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Makes the slots on our PostgreSQL match who streams from us ([`cascade::wanted_slots`],
/// plus `replication.permanent_slots` on a primary): creates missing ones; drops a slot named
/// after one of our nodes that should not read from us once it stayed inactive for
/// `slot_drop_grace` on checks no more than three `slot_check_every` apart.
pub(super) fn slots(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView, leader: &str) {
    let now = inp.now;
    let t = &ctx.t;
    if !ctx.cfg.replication.slots {
        return;
    }
    let Some(slots) = &inp.local.slots else {
        return;
    };
    if d.next
        .timers
        .slots_checked
        .is_none_or(|c| now.duration_since(c) > t.slot_check_every * 3)
    {
        d.next.unwanted_slots.clear();
    }
    d.next.timers.slots_checked = Some(now);
    let me = ctx.name();
    let mut wanted = cascade::wanted_slots(&ctx.cfg, view, me, leader);
    if leader == me && ctx.standby_source(view).is_none() {
        wanted.extend(ctx.cfg.replication.permanent_slots.iter().cloned());
    }
    d.next
        .unwanted_slots
        .retain(|name, _| slots.iter().any(|(n, _)| n == name));
    for w in &wanted {
        if !slots.iter().any(|(n, _)| n == w) {
            d.act(Action::CreateSlot { name: w.clone() });
        }
    }
    for (name, active) in slots {
        let ours = ctx.cfg.node(name).is_some();
        if !ours || wanted.contains(name) || *active {
            d.next.unwanted_slots.remove(name);
            continue;
        }
        let since = *d.next.unwanted_slots.entry(name.clone()).or_insert(now);
        if now.duration_since(since) >= t.slot_drop_grace {
            d.act(Action::DropSlot { name: name.clone() });
            d.next.unwanted_slots.remove(name);
        }
    }
}

/// Keeps `sync_standbys` streaming standbys synchronous and /sync naming only standbys that
/// hold every acknowledged commit: names are added to /sync only after the standby caught up
/// past the LSN at which PostgreSQL started waiting for it, and removed from /sync before
/// PostgreSQL stops waiting for them.
pub(super) fn sync(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let me = ctx.name();
    let others = ctx.others();
    let eligible =
        |n: &String| others.contains(n) && ctx.cfg.node(n).is_some_and(|c| !c.nofailover);
    let healthy: Vec<(String, pgha_postgres::Lsn)> = inp
        .local
        .standbys
        .iter()
        .filter(|r| eligible(&r.name) && r.streaming)
        .map(|r| (r.name.clone(), r.flush_lsn.unwrap_or_default()))
        .collect();
    let current: Vec<String> = view
        .sync
        .as_ref()
        .filter(|s| s.leader == me)
        .map(|s| s.standbys.clone())
        .unwrap_or_default();
    let want_n = ctx.cfg.replication.sync_standbys.max(1) as usize;
    let strict = ctx.cfg.failover.sync_strict;

    if let Some(p) = d.next.pending_sync.clone() {
        let caught_up = p.since_lsn.is_some_and(|since| {
            p.standbys
                .iter()
                .all(|s| healthy.iter().any(|(n, l)| n == s && *l >= since))
        });
        if caught_up {
            d.act(Action::PutSync(SyncState {
                leader: me.into(),
                standbys: p.standbys.clone(),
            }));
            d.next.pending_sync = None;
        }
        return;
    }

    let mut desired: Vec<String> = current
        .iter()
        .filter(|s| healthy.iter().any(|(n, _)| n == *s))
        .cloned()
        .collect();
    let mut by_progress = healthy.clone();
    by_progress.sort_by_key(|x| std::cmp::Reverse(x.1));
    for (n, _) in by_progress {
        if desired.len() >= want_n {
            break;
        }
        if !desired.contains(&n) {
            desired.push(n);
        }
    }
    desired.sort();
    let mut current_sorted = current.clone();
    current_sorted.sort();
    let ssn_now = inp.local.sync_names.clone().unwrap_or_default();
    let names_for = |names: &[String]| sync_names_for(names.len(), names);
    if desired == current_sorted {
        let want = names_for(&desired);
        if ssn_now != want && !(desired.is_empty() && strict) {
            d.act(Action::SetSyncNames { value: want });
        }
        return;
    }
    let added = desired.iter().any(|x| !current_sorted.contains(x));
    if added {
        // PostgreSQL first, /sync after the new standbys caught up.
        d.act(Action::SetSyncNames {
            value: names_for(&desired),
        });
        d.next.pending_sync = Some(PendingSync {
            standbys: desired,
            since_lsn: None,
            since: inp.now,
        });
    } else if desired.is_empty() && strict {
        // Strict: keep waiting for the old standbys; /sync keeps naming them.
    } else {
        // Only removals: /sync first, PostgreSQL after.
        d.act(Action::PutSync(SyncState {
            leader: me.into(),
            standbys: desired.clone(),
        }));
        d.act(Action::SetSyncNames {
            value: names_for(&desired),
        });
    }
}
