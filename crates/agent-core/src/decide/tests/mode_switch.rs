//! `synchronous_mode` switched at runtime, and `/sync` writes whose outcome is unknown.

use super::*;

/// A running primary n1 leading on session 42; n2 streams at 1000; `/sync` as given at
/// revision 9; PostgreSQL's synchronous_standby_names as given.
fn leader(mode: &str, sync: Option<&[&str]>, ssn: Option<&str>) -> (Ctx, Memory, Inputs) {
    let now = Instant::now();
    let c = ctx_with(&format!("mode = \"{mode}\""));
    let m = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.sync = sync.map(|s| SyncState {
        leader: "n1".into(),
        standbys: s.iter().map(|x| x.to_string()).collect(),
        quorum: None,
    });
    v.sync_revision = if sync.is_some() { 9 } else { 0 };
    let mut local = primary();
    local.standbys = vec![StandbyRow {
        name: "n2".into(),
        streaming: true,
        flush_lsn: Some(Lsn(1000)),
    }];
    local.sync_names = ssn.map(str::to_string);
    (c, m, healthy(now, local, v))
}

fn pos(d: &Decision, f: impl Fn(&Action) -> bool) -> Option<usize> {
    d.actions.iter().position(f)
}

fn alone(a: &Action, revision: i64) -> bool {
    matches!(a, Action::PutSync { sync, revision: r }
        if sync.leader == "n1" && sync.standbys.is_empty() && *r == revision)
}

/// `d` sets synchronous_standby_names to `value`.
fn sets(d: &Decision, value: &str) -> bool {
    has(
        d,
        |a| matches!(a, Action::SetSyncNames { value: v } if v == value),
    )
}

fn sets_names(a: &Action) -> bool {
    matches!(a, Action::SetSyncNames { .. })
}

#[tokio::test(start_paused = true)]
async fn a_switch_to_sync_names_the_leader_alone_before_postgres_waits_for_a_standby() {
    let (c, m, inp) = leader("sync", None, Some(""));
    let d = decide(&c, &m, &inp);
    assert!(has(&d, |a| alone(a, 0)), "{:?}", d.actions);
    assert!(
        !has(&d, sets_names),
        "PostgreSQL may wait for a standby only once /sync restricts the election: {:?}",
        d.actions
    );
    // Once /sync names us, the standby is added as in sync mode.
    let (c, m, inp) = leader("sync", Some(&[]), Some(""));
    let d = decide(&c, &m, &inp);
    assert!(sets(&d, "FIRST 1 (\"n2\")"), "{:?}", d.actions);
}

#[tokio::test(start_paused = true)]
async fn a_switch_to_async_stops_postgres_waiting_before_sync_goes() {
    let (c, m, inp) = leader("async", Some(&["n2"]), Some("FIRST 1 (\"n2\")"));
    let d = decide(&c, &m, &inp);
    let (put, names) = (pos(&d, |a| alone(a, 9)), pos(&d, sets_names));
    assert!(
        matches!((put, names), (Some(p), Some(n)) if p < n),
        "/sync names the leader alone, then PostgreSQL stops waiting: {:?}",
        d.actions
    );
    assert!(!has(&d, |a| matches!(a, Action::DeleteSync { .. })));
    // PostgreSQL reads back no names: now /sync goes, at the revision read.
    let (c, m, inp) = leader("async", Some(&[]), Some(""));
    let d = decide(&c, &m, &inp);
    assert!(
        has(&d, |a| matches!(a, Action::DeleteSync { revision: 9 })),
        "{:?}",
        d.actions
    );
    // Names unknown (the query failed): nothing is deleted on a guess.
    let (c, m, inp) = leader("async", Some(&[]), None);
    let d = decide(&c, &m, &inp);
    assert!(!has(&d, |a| matches!(a, Action::DeleteSync { .. })));
    // Async with no /sync and no names: nothing to do.
    let (c, m, inp) = leader("async", None, Some(""));
    let d = decide(&c, &m, &inp);
    assert!(!has(&d, |a| matches!(
        a,
        Action::PutSync { .. } | Action::DeleteSync { .. } | Action::SetSyncNames { .. }
    )));
}

#[tokio::test(start_paused = true)]
async fn a_sync_write_in_doubt_is_settled_before_the_next_change() {
    // /sync names n2, which stopped streaming: the plan would drop it. But a write conditioned
    // on revision 9 may still land: first /sync is written again as read, at revision 9.
    let (c, mut m, mut inp) = leader("sync", Some(&["n2"]), Some("FIRST 1 (\"n2\")"));
    inp.local.standbys.clear();
    m.sync_in_doubt = Some(9);
    let d = decide(&c, &m, &inp);
    assert_eq!(
        d.actions
            .iter()
            .filter(|a| matches!(a, Action::PutSync { .. } | Action::SetSyncNames { .. }))
            .collect::<Vec<_>>(),
        vec![&Action::PutSync {
            sync: SyncState {
                leader: "n1".into(),
                standbys: vec!["n2".into()],
                quorum: None,
            },
            revision: 9,
        }],
        "{:?}",
        d.actions
    );
    // The key moved since (the late write landed, or the settling one did): plan as usual.
    m.sync_in_doubt = Some(5);
    let d = decide(&c, &m, &inp);
    assert_eq!(d.next.sync_in_doubt, None);
    assert!(has(&d, |a| alone(a, 9)), "{:?}", d.actions);
    // An in-doubt outcome of the executor is remembered for the next tick.
    let mut inp2 = inp.clone();
    inp2.outcomes = vec![Outcome::SyncInDoubt { revision: 9 }];
    m.sync_in_doubt = None;
    let d = decide(&c, &m, &inp2);
    assert_eq!(d.next.sync_in_doubt, Some(9));
}

#[tokio::test(start_paused = true)]
async fn a_promotion_in_async_mode_under_a_left_over_sync_key_names_itself_first() {
    // The last leader switched to async but died before deleting /sync, which names us.
    let now = Instant::now();
    let c = ctx();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(Some(("n1", 42)));
    v.sync = Some(SyncState {
        leader: "n2".into(),
        standbys: vec!["n1".into()],
        quorum: None,
    });
    v.sync_revision = 9;
    let d = decide(&c, &m, &healthy(now, replica(), v));
    let put = pos(&d, |a| alone(a, 9));
    let promote = pos(
        &d,
        |a| matches!(a, Action::Spawn { job: Job::Promote { sync_names, .. }, .. } if sync_names.as_deref() == Some("")),
    );
    assert!(
        matches!((put, promote), (Some(p), Some(q)) if p < q),
        "{}: {:?}",
        d.reason,
        d.actions
    );
    // No /sync: no write, and no reload before pg_promote (the running primary's first tick
    // clears names a copied auto.conf may hold, `plan::unsync`).
    let mut v = view(Some(("n1", 42)));
    v.sync = None;
    let d = decide(&c, &m, &healthy(now, replica(), v));
    assert!(!has(&d, |a| matches!(a, Action::PutSync { .. })));
    assert!(has(&d, |a| matches!(
        a,
        Action::Spawn {
            job: Job::Promote {
                sync_names: None,
                ..
            },
            ..
        }
    )));
    let (c, m, inp) = leader("async", None, Some("FIRST 1 (\"n3\")"));
    let d = decide(&c, &m, &inp);
    assert!(has(
        &d,
        |a| matches!(a, Action::SetSyncNames { value } if value.is_empty())
    ));
}

#[tokio::test(start_paused = true)]
async fn strict_mode_with_no_synchronous_standby_keeps_commits_waiting() {
    // After a promotion in strict mode: /sync names the leader alone, no standby streams.
    let hold = "FIRST 1 (\"n2\", \"n3\")";
    let (c, m, mut inp) = leader("sync", Some(&[]), Some(hold));
    let strict = ctx_changed(&c, |cfg| cfg.failover.sync_strict = true);
    let c = &strict;
    inp.local.standbys.clear();
    let d = decide(c, &m, &inp);
    assert!(
        !has(&d, sets_names),
        "strict: commits keep waiting: {:?}",
        d.actions
    );
    // Names cleared (a non-strict past, or a switch to strict): set to hold commits.
    let (_, m, mut inp) = leader("sync", Some(&[]), Some(""));
    inp.local.standbys.clear();
    let d = decide(c, &m, &inp);
    assert!(
        has(
            &d,
            |a| matches!(a, Action::SetSyncNames { value } if value == hold)
        ),
        "{:?}",
        d.actions
    );
    // A node that may not become synchronous (`nosync`) is not waited for.
    let n3_nosync = ctx_changed(c, |cfg| cfg.nodes[2].nosync = true);
    let d = decide(&n3_nosync, &m, &inp);
    assert!(sets(&d, "FIRST 1 (\"n2\")"), "{:?}", d.actions);
    // Not strict: commits stop waiting.
    let (c, m, mut inp) = leader("sync", Some(&[]), Some(hold));
    inp.local.standbys.clear();
    let d = decide(&c, &m, &inp);
    assert!(has(
        &d,
        |a| matches!(a, Action::SetSyncNames { value } if value.is_empty())
    ));
}
