//! A new cluster: agents started on empty data dirs race for the `initialize` key; the winner
//! runs initdb (with checksums), its settings and the replication role, and is then elected
//! like any node with data (it leads: it alone has data); the others clone from it. A
//! bootstrap whose agent died releases the key with its lease, and the half-made data dir is
//! moved aside at the next try.

use super::{Ctx, Decision};
use crate::action::{Action, Job};
use crate::dcs::{ClusterView, MemberRole, PgState};
use crate::inputs::Inputs;
use crate::memory::Role;

/// Nobody leads and no node has data: true when this tick belongs to the bootstrap.
pub(super) fn new_cluster(ctx: &Ctx, d: &mut Decision, inp: &Inputs, view: &ClusterView) -> bool {
    let me = ctx.name();
    let no_data_anywhere = inp.local.role == MemberRole::Uninitialized
        && view.status.is_none()
        && view.history.is_empty()
        && view
            .members
            .values()
            .all(|m| m.role == MemberRole::Uninitialized);
    if !no_data_anywhere {
        return false;
    }
    match &view.initialize {
        Some(i) if i.done && i.by == me && inp.local.bootstrap_made => {
            // Our bootstrap committed, then its agent died before the mark was removed.
            if d.spawn(ctx, inp.now, Job::FinishBootstrap) {
                d.because("bootstrap: committed in the DCS by us, the data dir still marked half-made: finishing it");
            }
            true
        }
        Some(i) if i.done => {
            d.because(format!(
                "no leader: {} bootstrapped the cluster but no node with data is here",
                i.by
            ));
            true
        }
        Some(i)
            if i.by == me && i.lease.is_some() && i.lease == d.next.session.map(|s| s.lease) =>
        {
            // The job stops a server a previous try left running and moves its dir aside.
            let lease = i.lease.unwrap_or_default();
            if d.spawn(ctx, inp.now, Job::Bootstrap { lease }) {
                d.because("bootstrap: we hold the initialize key: initdb");
            }
            true
        }
        Some(i) if i.by == me => {
            d.because("no leader: the initialize key names us but sits on a predecessor's lease: waiting for it to expire");
            true
        }
        Some(i) => {
            d.because(format!(
                "no leader: waiting for {} to bootstrap the cluster",
                i.by
            ));
            true
        }
        None if ctx.me.nofailover || inp.stopping => {
            d.because(
                "no leader and no data: waiting for another node to bootstrap (we may not lead)",
            );
            true
        }
        None => {
            if let Some(s) = d.next.session {
                d.act(Action::TryInitialize { lease: s.lease });
                d.again = true;
            }
            d.because("no leader and no data anywhere: taking the initialize key to bootstrap");
            true
        }
    }
}

/// Our bootstrap led to our lead: the `initialize` key stays for good.
pub(super) fn finish(d: &mut Decision, inp: &Inputs, view: &ClusterView) {
    let leads = d.next.role == Role::Leader
        && inp.local.pg_state == PgState::Running
        && inp.local.role == MemberRole::Primary;
    if leads && view.initialize.as_ref().is_some_and(|i| !i.done) {
        d.act(Action::FinishInitialize);
    }
}
