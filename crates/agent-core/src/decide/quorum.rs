//! Quorum commit (`synchronous_mode = quorum`, Patroni 4's): PostgreSQL waits for
//! `ANY k (set)` and `sync` records a claim the election can check: any `quorum` of its
//! standbys include one that holds every acknowledged commit
//! ([`crate::election::quorum_check`]).
//!
//! The claim must hold for every commit acknowledged so far, under every
//! synchronous_standby_names the primary ever had. Writing it as (standbys V, holders h: at
//! least h of V hold every acknowledged commit), one change from (V, h) to a target
//! `ANY k (S)` goes in three steps:
//! 1. `sync` becomes (V ∪ S', min(h, k')): true of the commits acknowledged so far (h of V)
//!    and of those PostgreSQL acknowledges once it waits for k of S, where S' is the part of S
//!    that streamed from this leader and k' = k − |S ∖ S'| (strict mode may wait for nodes
//!    that never did; they are never named);
//! 2. synchronous_standby_names becomes `ANY k (S)`;
//! 3. once k' of S' flushed past the WAL position at which PostgreSQL started waiting for
//!    them (WAL is a prefix: they then hold every earlier commit too), `sync` becomes (S', k').
//!
//! A change of target half-way starts again from step 1 on what `sync` says then, which is
//! true of both synchronous_standby_names involved.

use super::{plan, Ctx, Decision};
use crate::action::Action;
use crate::dcs::{ClusterView, SyncState};
use crate::inputs::Inputs;
use crate::memory::PendingSync;

/// `ANY k ("a", "b")`, or empty for k = 0.
pub fn any_names(k: usize, names: &[String]) -> String {
    if k == 0 || names.is_empty() {
        return String::new();
    }
    let list: Vec<String> = names
        .iter()
        .map(|n| pgha_postgres::sql::quote_ident(n))
        .collect();
    format!("ANY {k} ({})", list.join(", "))
}

/// The `sync` claim "at least `holders` of `standbys` hold every acknowledged commit" for
/// `leader`; no standby when nobody is sure to (only the leader may be promoted then).
pub fn claim(leader: &str, mut standbys: Vec<String>, holders: usize) -> SyncState {
    standbys.sort();
    standbys.dedup();
    if holders == 0 || standbys.is_empty() {
        standbys.clear();
    }
    let quorum =
        (!standbys.is_empty()).then(|| (standbys.len() + 1 - holders.min(standbys.len())) as u32);
    SyncState {
        leader: leader.into(),
        standbys,
        quorum,
    }
}

/// The leader's quorum planner: the set is every standby that may be synchronous and streams
/// ([`plan::healthy`]); commits wait for `sync_standbys` of them (fewer while fewer stream).
/// Strict: commits keep waiting for `sync_standbys`: standbys the set named stay in it while
/// fewer stream, and others that may be synchronous fill it up.
pub(super) fn quorum(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let Some(ssn) = inp.local.sync_names.clone() else {
        // The replication rows were not read this tick: no change on a guess.
        return;
    };
    let me = ctx.name();
    if plan::settle_sync(d, view, me) {
        return;
    }
    let Some(cur) = view.sync.as_ref().filter(|s| s.leader == me) else {
        // Before PostgreSQL waits for a standby, `sync` names this leader alone.
        d.act(plan::put_sync(view, me, vec![]));
        d.next.pending_sync = None;
        return;
    };
    let healthy = plan::healthy(ctx, inp);
    let want = ctx.cfg.replication.sync_standbys.max(1) as usize;
    let mut set: Vec<String> = healthy.iter().map(|(n, _)| n.clone()).collect();
    if ctx.cfg.failover.sync_strict && set.len() < want {
        // Strict and fewer stream than commits wait for: every standby the set named stays
        // (commits wait for them to come back), and others that may be synchronous fill it.
        let named = cur.standbys.iter().chain(
            d.next
                .pending_sync
                .as_ref()
                .map(|p| p.standbys.as_slice())
                .unwrap_or_default(),
        );
        for n in named.cloned().collect::<Vec<_>>() {
            if !set.contains(&n) {
                set.push(n);
            }
        }
        // Then every node that may be synchronous; failing that, every other node.
        let willing: Vec<String> = ctx
            .others()
            .into_iter()
            .filter(|n| plan::may_be_sync(ctx, n))
            .collect();
        for group in [willing, ctx.others()] {
            if set.len() >= want {
                break;
            }
            for n in group {
                if !set.contains(&n) {
                    set.push(n);
                }
            }
        }
    }
    set.sort();
    let acks = want.min(set.len());
    let target_ssn = any_names(acks, &set);
    // `sync` names only standbys that streamed from this leader (streaming now, or named by
    // it before, which it did only while they streamed): a node strict mode waits for that
    // never did may hold WAL of another history, and positions would not compare. Of the
    // `acks` standbys that confirm a commit, all but the unnamed ones are named.
    let named: Vec<String> = set
        .iter()
        .filter(|n| healthy.iter().any(|(h, _)| h == *n) || cur.standbys.contains(n))
        .cloned()
        .collect();
    let holders = acks.saturating_sub(set.len() - named.len());
    let target = claim(me, named.clone(), holders);
    if ssn != target_ssn {
        // Steps 1 and 2 (a failed `sync` write stops the tick before PostgreSQL changes).
        let mut both = cur.standbys.clone();
        both.extend(named.iter().cloned());
        let weak = claim(me, both, cur.holders().min(holders));
        if &weak != cur {
            d.act(Action::PutSync {
                sync: weak,
                revision: view.sync_revision,
            });
        }
        d.act(Action::SetSyncNames { value: target_ssn });
        d.next.pending_sync = Some(change(set, acks, inp));
        d.because(format!(
            "leader: quorum commit: PostgreSQL waits for {acks} of [{}]",
            target.standbys.join(", ")
        ));
        return;
    }
    if &target == cur {
        d.next.pending_sync = None;
        return;
    }
    // Step 3: PostgreSQL waits as targeted; `sync` says so once `holders` of the named caught
    // up with the position PostgreSQL started waiting at.
    let pending = d
        .next
        .pending_sync
        .as_ref()
        .filter(|p| p.standbys == set && p.acks == Some(acks));
    match pending.and_then(|p| p.since_lsn) {
        Some(since) => {
            let caught_up = healthy
                .iter()
                .filter(|(n, l)| named.contains(n) && *l >= since)
                .count();
            if caught_up >= holders {
                d.act(Action::PutSync {
                    sync: target,
                    revision: view.sync_revision,
                });
                d.next.pending_sync = None;
            }
        }
        None => {
            // Set by an earlier leader, before this agent restarted, or by a request whose
            // answer was lost: set again for the position from which PostgreSQL waits.
            d.act(Action::SetSyncNames { value: target_ssn });
            d.next.pending_sync = Some(change(set, acks, inp));
        }
    }
}

/// A change to `ANY acks (set)` whose catch-up position the executor reports.
fn change(set: Vec<String>, acks: usize, inp: &Inputs) -> PendingSync {
    PendingSync {
        standbys: set,
        acks: Some(acks),
        since_lsn: None,
        since: inp.now,
    }
}
