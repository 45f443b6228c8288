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

/// Async mode on a running primary: PostgreSQL waits for no standby and `sync` goes, in an
/// order that keeps every commit acknowledged while a standby was waited for on every node
/// the election may promote: `sync` names this leader alone, then PostgreSQL stops waiting,
/// then (a later tick, once PostgreSQL reads back no names) `sync` is deleted. While it
/// exists it restricts every election, in either mode ([`crate::election::Rules::sync`]).
pub(super) fn unsync(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let me = ctx.name();
    d.next.pending_sync = None;
    if settle_sync(d, view, me) {
        return;
    }
    // Unknown (the query failed): nothing is deleted on a guess.
    let Some(ssn) = inp.local.sync_names.as_deref() else {
        return;
    };
    if !ssn.is_empty() {
        let alone = view
            .sync
            .as_ref()
            .is_some_and(|s| s.leader == me && s.standbys.is_empty());
        if view.sync.is_some() && !alone {
            d.act(put_sync(view, me, vec![]));
        }
        d.act(Action::SetSyncNames {
            value: String::new(),
        });
        d.because("leader: async mode: PostgreSQL stops waiting for synchronous standbys");
        return;
    }
    if view.sync.is_some() {
        d.act(Action::DeleteSync {
            revision: view.sync_revision,
        });
        d.because("leader: async mode: deleting the sync key");
    }
}

/// Sync mode, or async while `/sync` still exists (a switch to async the last leader did not
/// finish): it restricts the election until this leader deletes it, so a primary that may
/// acknowledge commits (promoted, started) must first be the one it names.
pub(super) fn sync_rules(ctx: &Ctx, view: &ClusterView) -> bool {
    ctx.cfg.replication.mode.waits() || view.sync.is_some()
}

/// A node that may become a synchronous standby: promotable and willing (`nosync`,
/// `sync_priority = 0`, `nofailover`, `failover_priority = 0` may not).
pub(super) fn may_be_sync(ctx: &Ctx, n: &str) -> bool {
    ctx.cfg.node(n).is_some_and(|c| c.sync_rank() > 0)
}

/// Strict mode with no synchronous standby: `FIRST 1` of the nodes that may become one (not
/// `nosync`, `sync_priority = 0`, `nofailover`, `failover_priority = 0`; all other nodes if
/// none may), so commits wait instead of being acknowledged alone.
pub(super) fn strict_hold(ctx: &Ctx) -> String {
    let others = ctx.others();
    let willing: Vec<String> = others
        .iter()
        .filter(|n| may_be_sync(ctx, n))
        .cloned()
        .collect();
    sync_names_for(
        1,
        if willing.is_empty() {
            &others
        } else {
            &willing
        },
    )
}

/// A `/sync` write of an earlier tick may still land (its request failed): while the key is
/// still at the revision that write was conditioned on, write it again as this tick read it
/// (or naming this leader alone, if absent), so the late one can no longer land (the
/// revision moves), before anything else changes. Without this a late write could name a
/// standby PostgreSQL stopped waiting for meanwhile, or delete the key once PostgreSQL waits
/// again. True when this tick's sync plan ends here.
pub(super) fn settle_sync(d: &mut Decision, view: &ClusterView, me: &str) -> bool {
    match d.next.sync_in_doubt {
        Some(r) if r == view.sync_revision => {
            let again = match &view.sync {
                Some(s) => Action::PutSync {
                    sync: s.clone(),
                    revision: r,
                },
                None => put_sync(view, me, vec![]),
            };
            d.act(again);
            d.next.pending_sync = None;
            d.because("leader: settling a /sync write that may still land");
            true
        }
        Some(_) => {
            d.next.sync_in_doubt = None;
            false
        }
        None => false,
    }
}

/// The write of `/sync` naming `standbys` for `leader`, conditional on the key being as this
/// tick's view read it.
pub(super) fn put_sync(view: &ClusterView, leader: &str, standbys: Vec<String>) -> Action {
    Action::PutSync {
        sync: SyncState {
            leader: leader.into(),
            standbys,
            quorum: None,
        },
        revision: view.sync_revision,
    }
}

/// Makes the slots on our PostgreSQL match who streams from us ([`cascade::wanted_slots`]
/// of the nodes whose member key exists or went within `replication.member_slots_ttl`,
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
        // Not checked for a while (another role, a job): what was seen then is stale.
        d.next.unwanted_slots.clear();
        d.next.members_absent.clear();
    }
    d.next.timers.slots_checked = Some(now);
    let me = ctx.name();
    let mut wanted = cascade::wanted_slots(&ctx.cfg, view, me, leader);
    // A node whose member key is gone keeps its slot for `member_slots_ttl` (its WAL would
    // otherwise pile up here for as long as it stays away).
    let ttl = ctx.cfg.replication.member_slots_ttl;
    d.next
        .members_absent
        .retain(|n, _| !view.members.contains_key(n));
    wanted.retain(|n| {
        if view.members.contains_key(n) {
            return true;
        }
        let since = *d.next.members_absent.entry(n.clone()).or_insert(now);
        now.duration_since(since) < ttl
    });
    if leader == me && ctx.standby_source(view).is_none() {
        wanted.extend(ctx.cfg.replication.permanent_slots.iter().cloned());
    }
    d.next
        .unwanted_slots
        .retain(|name, _| slots.iter().any(|(n, _)| n == name));
    d.next.unknown_slots = unknown_slots(ctx, inp, slots);
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

/// The standbys that may be synchronous right now, with their flush positions: streaming from
/// us, promotable and willing (`nosync`, `sync_priority = 0` may not), and no further behind
/// than `maximum_lag_on_syncnode` (a current one is swapped out as when it stops streaming).
pub(super) fn healthy(ctx: &Ctx, inp: &Inputs) -> Vec<(String, pgha_postgres::Lsn)> {
    let others = ctx.others();
    let within = |r: &&crate::inputs::StandbyRow| match (
        ctx.cfg.failover.maximum_lag_on_syncnode,
        inp.local.lsn,
    ) {
        (Some(max), Some(at)) => at.bytes_since(r.flush_lsn.unwrap_or_default()) <= max.bytes(),
        _ => true,
    };
    let mut out: Vec<(String, pgha_postgres::Lsn)> = inp
        .local
        .standbys
        .iter()
        .filter(|r| others.contains(&r.name) && may_be_sync(ctx, &r.name) && r.streaming)
        .filter(within)
        .map(|r| (r.name.clone(), r.flush_lsn.unwrap_or_default()))
        .collect();
    // Two walsenders of one name (an old connection that lingers): one standby, at the
    // lower position.
    out.sort();
    out.dedup_by(|later, first| later.0 == first.0);
    out
}

/// Slots that are neither a node's, nor permanent (`permanent_slots`, `logical_slots` of the
/// same database and plugin), nor matched by `replication.ignore_slots`,
/// sorted: reported, never dropped (an operator's or a tool's; pgha cannot tell).
fn unknown_slots(ctx: &Ctx, inp: &Inputs, physical: &[(String, bool)]) -> Vec<String> {
    use pgha_config::SlotKind;
    let r = &ctx.cfg.replication;
    let ignored = |name: &str, kind, db: Option<&str>, plugin: Option<&str>| {
        r.ignore_slots
            .iter()
            .any(|m| m.matches(name, kind, db, plugin))
    };
    let mut out: Vec<String> = physical
        .iter()
        .map(|(n, _)| n)
        .filter(|n| ctx.cfg.node(n).is_none() && !r.permanent_slots.contains(n))
        .filter(|n| !ignored(n, SlotKind::Physical, None, None))
        .map(|n| format!("physical:{n}"))
        .chain(
            inp.local
                .logical_slots
                .iter()
                .filter(|s| {
                    !r.logical_slots
                        .iter()
                        .any(|spec| super::logical::is_spec(s, spec))
                })
                .filter(|s| {
                    !ignored(
                        &s.name,
                        SlotKind::Logical,
                        s.database.as_deref(),
                        s.plugin.as_deref(),
                    )
                })
                .map(|s| format!("logical:{}", s.name)),
        )
        .collect();
    out.sort();
    out
}

/// Keeps `sync_standbys` streaming standbys synchronous and /sync naming only standbys that
/// hold every acknowledged commit. synchronous_standby_names is always `FIRST k (k names)`
/// (every listed standby must confirm each commit), and /sync is always a subset of its names:
/// - a standby is added to synchronous_standby_names first, and to /sync only once it
///   flushed past the WAL position at which PostgreSQL started waiting for it;
/// - a standby leaves /sync first, synchronous_standby_names after;
/// - a change that adds and removes at once removes first (/sync becomes the intersection),
///   then adds;
/// - non-strict: a new standby that disconnects, or has not caught up within
///   `sync_catchup_timeout`, leaves synchronous_standby_names again (commits must not hang).
pub(super) fn sync(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    if inp.local.sync_names.is_none() {
        // The replication rows were not read this tick: "no standby streams" would be a guess
        // that drops every synchronous standby.
        return;
    }
    let me = ctx.name();
    let now = inp.now;
    let sync_rank = |n: &String| ctx.cfg.node(n).map_or(0, |c| c.sync_rank());
    let healthy = healthy(ctx, inp);
    let is_healthy = |n: &String| healthy.iter().any(|(h, _)| h == n);
    if settle_sync(d, view, me) {
        return;
    }
    if view.sync.as_ref().is_none_or(|s| s.leader != me) {
        // Before PostgreSQL waits for a standby (a switch from async mode, or `sync` left by
        // another leader), `sync` names this leader alone: a commit acknowledged from then
        // on is never lost to a node `sync` does not name. A failed write stops the tick.
        d.act(put_sync(view, me, vec![]));
        d.next.pending_sync = None;
        return;
    }
    if d.next
        .pending_sync
        .as_ref()
        .is_some_and(|p| p.acks.is_some())
    {
        // A quorum change (a switch from quorum mode): its catch-up position is not one
        // from which PostgreSQL waited for every standby it names.
        d.next.pending_sync = None;
    }
    if view.sync.as_ref().is_some_and(|s| s.quorum.is_some()) {
        // A quorum `sync` (a switch from quorum mode): its standbys do not each hold every
        // acknowledged commit. `sync` names this leader alone first; standbys are added the
        // `FIRST n` way from there.
        d.act(put_sync(view, me, vec![]));
        d.next.pending_sync = None;
        return;
    }
    let mut current: Vec<String> = view
        .sync
        .as_ref()
        .map(|s| s.standbys.clone())
        .unwrap_or_default();
    current.sort();
    let want_n = ctx.cfg.replication.sync_standbys.max(1) as usize;
    let strict = ctx.cfg.failover.sync_strict;
    let names_for = |names: &[String]| sync_names_for(names.len(), names);

    if let Some(p) = d.next.pending_sync.clone() {
        let ssn_now = inp.local.sync_names.clone().unwrap_or_default();
        if p.since_lsn.is_none() && ssn_now != names_for(&p.standbys) {
            // The change did not reach PostgreSQL (a failed ALTER SYSTEM): again.
            d.act(Action::SetSyncNames {
                value: names_for(&p.standbys),
            });
        }
        let added: Vec<&String> = p.standbys.iter().filter(|s| !current.contains(s)).collect();
        let caught_up = p.since_lsn.is_some_and(|since| {
            p.standbys
                .iter()
                .all(|s| healthy.iter().any(|(n, l)| n == s && *l >= since))
        });
        if caught_up {
            d.act(put_sync(view, me, p.standbys.clone()));
            d.next.pending_sync = None;
            return;
        }
        let gone = added.iter().any(|s| !is_healthy(s));
        let slow = now.duration_since(p.since) > ctx.t.sync_catchup_timeout;
        if !strict && (gone || slow) {
            // Back to what /sync names: commits stop waiting for the newcomer.
            d.act(Action::SetSyncNames {
                value: names_for(&current),
            });
            d.next.pending_sync = None;
        }
        return;
    }

    let mut desired: Vec<String> = current.iter().filter(|s| is_healthy(s)).cloned().collect();
    if strict && desired.is_empty() {
        // Strict: keep waiting for the old standbys; /sync keeps naming them.
        desired = current.clone();
    }
    // Newcomers by `sync_priority`, then progress; the current standbys stay while they stream.
    let mut by_progress = healthy.clone();
    by_progress.sort_by_key(|x| std::cmp::Reverse((sync_rank(&x.0), x.1)));
    for (n, _) in by_progress {
        if desired.len() >= want_n {
            break;
        }
        if !desired.contains(&n) {
            desired.push(n);
        }
    }
    desired.sort();
    let ssn_now = inp.local.sync_names.clone().unwrap_or_default();
    if desired == current {
        let mut want = names_for(&desired);
        if strict && want.is_empty() {
            // Strict with no synchronous standby (after a promotion, or every one gone):
            // commits wait, for any other node, instead of being acknowledged alone. `sync`
            // names only this leader, so one that confirms them is added the usual way.
            want = strict_hold(ctx);
        }
        if ssn_now != want {
            d.act(Action::SetSyncNames { value: want });
        }
        return;
    }
    let keep: Vec<String> = current
        .iter()
        .filter(|s| desired.contains(s))
        .cloned()
        .collect();
    if keep.len() < current.len() {
        // Removals: /sync first, PostgreSQL after.
        d.act(put_sync(view, me, keep.clone()));
    }
    d.act(Action::SetSyncNames {
        value: names_for(&desired),
    });
    if desired.len() > keep.len() {
        // Additions: /sync names them once they caught up.
        d.next.pending_sync = Some(PendingSync {
            standbys: desired,
            acks: None,
            since_lsn: None,
            since: now,
        });
    }
}
