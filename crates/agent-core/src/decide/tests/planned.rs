//! Planned work: switchovers, promotions and their timelines, rewinds, sync standbys.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_switchover_scheduled_for_later_does_not_stop_a_failover() {
    let now = Instant::now();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(None);
    v.members
        .insert("n1".into(), member("n1", MemberRole::Replica, 2000));
    v.switchover = Some(SwitchoverRequest {
        kind: RequestKind::Switchover,
        from: Some("n3".into()),
        to: "n2".into(),
        at_ms: Some(9_000_000),
        requested_ms: 500_000,
    });
    let mut local = replica();
    local.lsn = Some(Lsn(2000));
    let inp = healthy(now, local, v);
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "no leader: we are the best candidate: taking the leader key"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_promotes_on_a_fresh_timeline_and_checkpoints() {
    let now = Instant::now();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(Some(("n1", 42)));
    v.status = Some(LeaderStatus {
        leader: "n2".into(),
        lsn: Lsn(1000),
        timeline: 4,
        updated_ms: 0,
        slots: Default::default(),
        failsafe: None,
    });
    let inp = healthy(now, replica(), v);
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "leader: promoting (our PostgreSQL is in recovery)"
    );
    assert!(has(&d, |a| matches!(
        a,
        Action::Spawn {
            job: Job::Promote {
                timeline_floor: Some(4),
                checkpoint: true,
                history,
                ..
            },
            ..
        } if history.reason == "automatic failover: the lease of n2 ended"
    )));
}

#[tokio::test(start_paused = true)]
async fn a_follower_waits_for_the_leaders_checkpoint_before_pg_rewind() {
    let now = Instant::now();
    let m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let mut v = view(Some(("n2", 9)));
    let l = v.members.get_mut("n2").unwrap();
    l.timeline = Some(2);
    l.checkpoint_timeline = Some(1);
    let inp = healthy(now, Local::stopped(MemberRole::Primary), v);
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "follower of n2: waiting for n2's checkpoint after its promotion (timeline 2, checkpoint on 1) before pg_rewind"
    );
    assert!(!has(&d, |a| matches!(a, Action::Spawn { .. })));
}

/// Sync mode, a leader whose /sync names `current` and whose standbys stream as given.
fn sync_leader(now: Instant, current: &[&str], streaming: &[(&str, u64)]) -> (Ctx, Memory, Inputs) {
    let c = ctx_with("mode = \"sync\"");
    let m = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.sync = Some(SyncState {
        leader: "n1".into(),
        standbys: current.iter().map(|s| s.to_string()).collect(),
        quorum: None,
    });
    let mut local = primary();
    local.standbys = streaming_rows(streaming);
    local.sync_names = Some(sync_names_for(
        current.len(),
        &current.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    ));
    let inp = healthy(now, local, v);
    (c, m, inp)
}

/// `d` empties /sync before it points synchronous_standby_names at `names` (removals first).
fn drops_from_sync_before(d: &Decision, names: &str) -> bool {
    let put = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::PutSync { sync: s, .. } if s.standbys.is_empty()));
    let ssn = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::SetSyncNames { value } if value == names));
    matches!((put, ssn), (Some(p), Some(s)) if p < s)
}

#[tokio::test(start_paused = true)]
async fn a_sync_standby_swap_removes_from_sync_before_postgres_stops_waiting() {
    let now = Instant::now();
    // n2 was the synchronous standby; it stopped streaming; n3 streams.
    let (c, m, inp) = sync_leader(now, &["n2"], &[("n3", 1000)]);
    let d = decide(&c, &m, &inp);
    assert!(
        drops_from_sync_before(&d, "FIRST 1 (\"n3\")"),
        "/sync must drop n2 before PostgreSQL stops waiting for it: {:?}",
        d.actions
    );
    // n3 is named in /sync only once it caught up.
    assert!(!has(
        &d,
        |a| matches!(a, Action::PutSync { sync: s, .. } if s.standbys == ["n3"])
    ));
    assert_eq!(d.next.pending_sync.as_ref().unwrap().standbys, vec!["n3"]);
}

#[tokio::test(start_paused = true)]
async fn a_new_sync_standby_that_disconnects_while_catching_up_stops_holding_commits() {
    let now = Instant::now();
    let (c, mut m, mut inp) = sync_leader(now, &[], &[]);
    m.pending_sync = Some(PendingSync {
        acks: None,
        standbys: vec!["n3".into()],
        since_lsn: Some(Lsn(900)),
        since: now - Duration::from_millis(500),
    });
    inp.local.sync_names = Some("FIRST 1 (\"n3\")".into());
    let d = decide(&c, &m, &inp);
    assert!(
        has(
            &d,
            |a| matches!(a, Action::SetSyncNames { value } if value.is_empty())
        ),
        "{:?}",
        d.actions
    );
    assert_eq!(d.next.pending_sync, None);
}

#[tokio::test(start_paused = true)]
async fn a_leader_hands_over_only_to_a_target_the_election_would_accept() {
    // Sync mode, /sync names n2: a manual failover to n3 would come back to us (nobody may
    // promote n3) and be handed over again, for ever. It is dropped instead.
    let now = Instant::now();
    let (c, m, mut inp) = sync_leader(now, &["n2"], &[("n2", 1000), ("n3", 1000)]);
    if let DcsRead::Ok { view, .. } = &mut inp.dcs {
        view.switchover = Some(SwitchoverRequest {
            kind: RequestKind::Failover,
            from: Some("n1".into()),
            to: "n3".into(),
            at_ms: None,
            requested_ms: 999_000,
        });
    }
    let d = decide(&c, &m, &inp);
    assert!(has(&d, |a| matches!(a, Action::ClearSwitchover)), "{d:?}");
    assert!(!has(&d, |a| matches!(
        a,
        Action::Spawn {
            job: Job::HandOver { .. },
            ..
        }
    )));
    assert!(d.reason.contains("n3 cannot be promoted"), "{}", d.reason);
    // To the synchronous standby it goes ahead.
    if let DcsRead::Ok { view, .. } = &mut inp.dcs {
        if let Some(r) = view.switchover.as_mut() {
            r.to = "n2".into();
        }
    }
    let d = decide(&c, &m, &inp);
    assert!(
        has(&d, |a| matches!(
            a,
            Action::Spawn {
                job: Job::HandOver { .. },
                ..
            }
        )),
        "{}",
        d.reason
    );
}

#[tokio::test(start_paused = true)]
async fn the_tick_that_hands_the_key_over_ends_without_leading() {
    // The hand-over job ended (PostgreSQL stopped, target caught up): the key is released in
    // this tick, whose view still names us. Leading on it would start PostgreSQL as a primary.
    let now = Instant::now();
    let c = ctx();
    let mut m = mem(now, Role::Leader, 42);
    m.job = Some(RunningJob {
        id: 5,
        job: Job::HandOver {
            to: "n2".into(),
            wait: Duration::from_secs(10),
        },
        started: now - Duration::from_secs(1),
    });
    let mut local = primary();
    local.pg_state = PgState::Stopped;
    let mut inp = inputs(
        now,
        local,
        DcsRead::Ok {
            session: renewed(42, now),
            view: view(Some(("n1", 42))),
        },
    );
    inp.outcomes = vec![crate::inputs::Outcome::JobDone {
        id: 5,
        job: Job::HandOver {
            to: "n2".into(),
            wait: Duration::from_secs(10),
        },
        error: None,
    }];
    let d = decide(&c, &m, &inp);
    assert!(
        has(&d, |a| matches!(a, Action::ReleaseLeader { .. })),
        "{d:?}"
    );
    assert!(!has(&d, |a| matches!(a, Action::Spawn { .. })), "{d:?}");
    assert_eq!(d.next.role, Role::NoLeader, "{}", d.reason);
}

/// Simulator seed 102797: the tick that asked for the hand-over stopped at a `/sync` write
/// that timed out, so the job never started; releasing the key then left PostgreSQL running
/// as a primary without a lease (it acknowledged commits).
#[tokio::test(start_paused = true)]
async fn a_hand_over_that_never_started_keeps_the_key_and_a_failed_one_fences_first() {
    let now = Instant::now();
    let c = ctx();
    let job = Job::HandOver {
        to: "n2".into(),
        wait: Duration::from_secs(10),
    };
    let mut m = mem(now, Role::Leader, 42);
    m.job = Some(RunningJob {
        id: 5,
        job: job.clone(),
        started: now,
    });
    let tick = |error: &str| {
        let mut inp = inputs(
            now,
            primary(),
            DcsRead::Ok {
                session: renewed(42, now),
                view: view(Some(("n1", 42))),
            },
        );
        inp.outcomes = vec![crate::inputs::Outcome::JobDone {
            id: 5,
            job: job.clone(),
            error: Some(error.into()),
        }];
        decide(&c, &m, &inp)
    };
    let d = tick(crate::exec::NOT_STARTED);
    assert!(
        !has(&d, |a| matches!(a, Action::ReleaseLeader { .. })),
        "{d:?}"
    );
    assert_eq!(d.next.role, Role::Leader, "{}", d.reason);
    // A hand-over that failed (e.g. its stop): stopped at once before the key goes.
    let d = tick("stop: timed out");
    let fence = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Fence { .. }));
    let release = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::ReleaseLeader { .. }));
    assert!(
        matches!((fence, release), (Some(f), Some(r)) if f < r),
        "{:?}",
        d.actions
    );
}

#[tokio::test(start_paused = true)]
async fn unread_replication_rows_change_no_synchronous_standby() {
    // pg_stat_replication could not be read this tick (sync_names None, no rows): that is no
    // evidence that n2 stopped streaming, so /sync and synchronous_standby_names stay.
    let now = Instant::now();
    let (c, m, mut inp) = sync_leader(now, &["n2"], &[("n2", 1000)]);
    inp.local.standbys.clear();
    inp.local.sync_names = None;
    let d = decide(&c, &m, &inp);
    assert!(
        !has(&d, |a| matches!(
            a,
            Action::PutSync { .. } | Action::SetSyncNames { .. }
        )),
        "{d:?}"
    );
    // With the rows read and n2 gone, the planner does act (the test above can fail).
    let (c, m, mut inp) = sync_leader(now, &["n2"], &[("n2", 1000)]);
    inp.local.standbys.clear();
    let d = decide(&c, &m, &inp);
    assert!(
        has(&d, |a| matches!(
            a,
            Action::PutSync { .. } | Action::SetSyncNames { .. }
        )),
        "{d:?}"
    );
}

/// Sync mode: a new leader that starts its stopped primary (a new cluster's first one, or a
/// cluster started from stopped nodes) first makes /sync name itself and no standby, as a
/// promotion does: it acknowledges commits alone until a standby catches up, so nobody else
/// may be promoted meanwhile (found by `cargo xtask simulate --empty`, seed 14674).
#[tokio::test(start_paused = true)]
async fn a_new_leader_starting_its_primary_in_sync_mode_first_names_itself_in_sync() {
    let now = Instant::now();
    let c = ctx_with("mode = \"sync\"");
    let m = mem(now, Role::NoLeader, 42);
    let stopped = Local::stopped(MemberRole::Primary);
    let order = |d: &Decision| {
        let put = d.actions.iter().position(
            |a| matches!(a, Action::PutSync { sync: s, .. } if s.leader == "n1" && s.standbys.is_empty()),
        );
        let start = d.actions.iter().position(|a| {
            matches!(
                a,
                Action::Spawn {
                    job: Job::StartPrimary,
                    ..
                }
            )
        });
        (put, start)
    };
    for sync in [
        None,
        Some(SyncState {
            leader: "n2".into(),
            standbys: vec!["n3".into()],
            quorum: None,
        }),
    ] {
        let mut v = view(Some(("n1", 42)));
        v.sync = sync.clone();
        let d = decide(&c, &m, &healthy(now, stopped.clone(), v));
        let (put, start) = order(&d);
        assert!(start.is_some(), "{}: {:?}", d.reason, d.actions);
        assert!(
            put.is_some_and(|p| Some(p) < start),
            "{sync:?}: {:?}",
            d.actions
        );
    }
    // /sync names us already (our own restart): left as it is.
    let mut v = view(Some(("n1", 42)));
    v.sync = Some(SyncState {
        leader: "n1".into(),
        standbys: vec!["n2".into()],
        quorum: None,
    });
    let d = decide(&c, &m, &healthy(now, stopped.clone(), v));
    assert_eq!(order(&d).0, None, "{:?}", d.actions);
    // A leader already (the write failed last tick, or PostgreSQL went down under a /sync
    // that names someone else): its restart is preceded by the same write.
    let leading = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.sync = None;
    let d = decide(&c, &leading, &healthy(now, stopped, v));
    let put = d.actions.iter().position(
        |a| matches!(a, Action::PutSync { sync: s, .. } if s.leader == "n1" && s.standbys.is_empty()),
    );
    let restart = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Spawn { .. }));
    assert!(
        restart.is_some() && put.is_some_and(|p| Some(p) < restart),
        "{}: {:?}",
        d.reason,
        d.actions
    );
}

/// Sync mode: a new synchronous standby is the streaming one with the highest
/// `sync_priority` (progress decides among equals); `nosync` is never chosen.
#[tokio::test(start_paused = true)]
async fn sync_priority_and_nosync_choose_the_synchronous_standby() {
    let now = Instant::now();
    let (c, m, inp) = sync_leader(now, &[], &[("n2", 1000), ("n3", 900)]);
    let chosen = |c: &Ctx| {
        let d = decide(c, &m, &inp);
        d.next.pending_sync.map(|p| p.standbys).unwrap_or_default()
    };
    assert_eq!(chosen(&c), vec!["n2"], "furthest ahead among equals");
    let n3_priority_5 = ctx_changed(&c, |cfg| cfg.nodes[2].sync_priority = Some(5));
    assert_eq!(
        chosen(&n3_priority_5),
        vec!["n3"],
        "higher sync_priority first"
    );
    let none = ctx_changed(&c, |cfg| {
        cfg.nodes[1].nosync = true;
        cfg.nodes[2].sync_priority = Some(0);
    });
    assert_eq!(chosen(&none), Vec::<String>::new(), "nosync and 0 never");
}

/// `maximum_lag_on_syncnode`: a synchronous standby lagging further than it is swapped for a
/// streaming standby within it (removed from /sync before PostgreSQL stops waiting for it).
#[tokio::test(start_paused = true)]
async fn a_synchronous_standby_lagging_past_maximum_lag_on_syncnode_is_swapped() {
    let now = Instant::now();
    // The primary is at 1000; n2 (synchronous) flushed only 100, n3 all of it.
    let (c, m, inp) = sync_leader(now, &["n2"], &[("n2", 100), ("n3", 1000)]);
    let d = decide(&c, &m, &inp);
    assert!(d.next.pending_sync.is_none(), "no limit: n2 stays");
    let c = ctx_changed(&c, |cfg| {
        cfg.failover.maximum_lag_on_syncnode = Some(pgha_config::ByteSize(500))
    });
    let d = decide(&c, &m, &inp);
    assert!(
        drops_from_sync_before(&d, "FIRST 1 (\"n3\")"),
        "{:?}",
        d.actions
    );
    assert_eq!(d.next.pending_sync.unwrap().standbys, vec!["n3"]);
}
