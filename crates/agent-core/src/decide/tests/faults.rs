//! Faults: the DCS gone, failsafe, slow starts, stale sessions, stopped replicas.

use super::*;

#[tokio::test(start_paused = true)]
async fn without_the_dcs_a_leader_serves_until_fence_after_then_fences() {
    let now = Instant::now();
    let c = ctx();
    let m = mem(now, Role::Leader, 42);
    let unreachable = |t: Instant| DcsRead::Unreachable {
        since: t,
        session: SessionRead::Failed {
            lease: 42,
            error: "timeout".into(),
        },
        error: "timeout".into(),
    };
    let t1 = now + c.t.fence_after - Duration::from_millis(1);
    let d = decide(&c, &m, &inputs(t1, primary(), unreachable(t1)));
    assert!(
        d.reason
            .starts_with("DCS unreachable: leader keeps serving"),
        "{}",
        d.reason
    );
    let t2 = now + c.t.fence_after;
    let d = decide(&c, &m, &inputs(t2, primary(), unreachable(t2)));
    assert_eq!(
        d.reason,
        "DCS unreachable: fenced before the lease can expire"
    );
    assert!(has(&d, |a| matches!(a, Action::Fence { .. })));
}

#[tokio::test(start_paused = true)]
async fn this_ticks_failsafe_round_counts_before_the_fence() {
    let now = Instant::now();
    let c = ctx();
    let mut m = mem(now, Role::Leader, 42);
    m.failsafe_published = true;
    let t = now + c.t.fence_after + Duration::from_millis(100);
    let mut inp = inputs(
        t,
        primary(),
        DcsRead::Unreachable {
            since: now,
            session: SessionRead::Failed {
                lease: 42,
                error: "x".into(),
            },
            error: "x".into(),
        },
    );
    inp.probes.failsafe = Some(Ok(t - Duration::from_millis(300)));
    let d = decide(&c, &m, &inp);
    assert!(
        d.reason
            .starts_with("DCS unreachable: leader keeps serving"),
        "{}",
        d.reason
    );
    // A round counts only once a view showed our topology in `status`: before that, a
    // node outside it could be elected.
    let unpublished = Memory {
        failsafe_published: false,
        ..m.clone()
    };
    let d = decide(&c, &unpublished, &inp);
    assert_eq!(
        d.reason,
        "DCS unreachable: fenced before the lease can expire"
    );
    inp.probes.failsafe = Some(Err("n2: this node reaches the DCS".into()));
    let d = decide(&c, &m, &inp);
    assert_eq!(
        d.reason,
        "DCS unreachable: fenced before the lease can expire"
    );
}

/// `Memory::failsafe_published`: the view shows exactly the nodes our round asks, as ours.
#[tokio::test(start_paused = true)]
async fn a_round_counts_only_once_the_dcs_shows_exactly_our_topology() {
    let now = Instant::now();
    let c = ctx();
    let m = mem(now, Role::Leader, 42);
    let mut st = LeaderStatus {
        leader: "n1".into(),
        lsn: Lsn(1000),
        timeline: 1,
        updated_ms: 0,
        slots: Default::default(),
        failsafe: Some(c.failsafe_topology()),
    };
    let published = |st: &LeaderStatus| {
        let mut v = view(Some(("n1", 42)));
        v.status = Some(st.clone());
        decide(&c, &m, &healthy(now, primary(), v))
            .next
            .failsafe_published
    };
    assert!(published(&st));
    // Still listing a node our round no longer asks (our agent restarted with a shorter
    // node list and reads its predecessor's status): that node could be elected.
    st.failsafe
        .as_mut()
        .unwrap()
        .insert("n4".into(), String::new());
    assert!(!published(&st));
    st.failsafe = Some(c.failsafe_topology());
    st.leader = "n2".into();
    assert!(!published(&st));
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_failsafe_round_is_a_proof_like_a_renewal() {
    let now = Instant::now();
    let c = ctx();
    let mut m = mem(now, Role::Leader, 42);
    let round = now + Duration::from_secs(2);
    m.timers.failsafe_ok = Some(round);
    let t = now + c.t.fence_after + Duration::from_secs(1);
    let inp = inputs(
        t,
        primary(),
        DcsRead::Unreachable {
            since: now,
            session: SessionRead::Failed {
                lease: 42,
                error: "x".into(),
            },
            error: "x".into(),
        },
    );
    let d = decide(&c, &m, &inp);
    assert!(
        d.reason
            .starts_with("DCS unreachable: leader keeps serving"),
        "{}",
        d.reason
    );
    assert!(has(&d, |a| *a
        == Action::Watchdog {
            deadline: Some(round + c.t.watchdog_after)
        }));
}

/// Patroni's `/failsafe` rule. A node the last leader's failsafe round never asks (it is not
/// in that leader's pgha.toml: added while it ran) may reach the DCS while the leader and
/// every node it asks do not; the leader then serves on their confirmations past its lease,
/// so that node must not take the key (simulator seed in `sim::tests::FOUND`, joiner seeds).
#[tokio::test(start_paused = true)]
async fn a_node_outside_the_last_leaders_failsafe_topology_is_never_elected() {
    let now = Instant::now();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(None);
    let topology: std::collections::BTreeMap<String, String> = ["n2", "n3", "n4"]
        .iter()
        .map(|n| (n.to_string(), format!("http://{n}/patroni")))
        .collect();
    v.status = Some(LeaderStatus {
        leader: "n4".into(),
        lsn: Lsn(1000),
        timeline: 1,
        updated_ms: 0,
        slots: Default::default(),
        failsafe: Some(topology),
    });
    let mut local = replica();
    local.lsn = Some(Lsn(2000));
    let inp = healthy(now, local, v);
    let d = decide(&ctx(), &m, &inp);
    assert!(
        d.reason.starts_with("no leader: n2 is the best candidate")
            && d.reason.contains(
                "we may not lead: failsafe: not in the last leader's failsafe topology [n2, n3, n4]"
            ),
        "{}",
        d.reason
    );
    assert!(!has(&d, |a| matches!(a, Action::AcquireLeader { .. })));
    // A leader that runs with failsafe off publishes no topology: the furthest node leads.
    // Our own view of `failsafe_mode` does not matter (a leader cut off from the DCS does
    // not see it switched off, and serves on: seed 13764).
    let mut cfg = (*ctx().cfg).clone();
    cfg.failover.failsafe = false;
    let off = Ctx::new(Arc::new(cfg), "n1").unwrap();
    assert!(decide(&off, &m, &inp)
        .reason
        .starts_with("no leader: n2 is"));
    let mut inp = inp;
    if let DcsRead::Ok { view, .. } = &mut inp.dcs {
        view.status.as_mut().unwrap().failsafe = None;
    }
    let d = decide(&off, &m, &inp);
    assert_eq!(
        d.reason,
        "no leader: we are the best candidate: taking the leader key"
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_as_primary_that_outlasts_the_lease_is_fenced() {
    let now = Instant::now();
    let mut m = mem(now, Role::Leader, 42);
    m.job = Some(RunningJob {
        id: 3,
        job: Job::StartPrimary,
        started: now - Duration::from_secs(5),
    });
    let inp = inputs(
        now,
        Local {
            pg_state: PgState::Running,
            reachable: false,
            ..Local::stopped(MemberRole::Primary)
        },
        DcsRead::Ok {
            session: SessionRead::Gone { lease: 42 },
            view: view(None),
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(d.reason, "lost the lease during start as primary: fenced");
    assert!(has(&d, |a| matches!(a, Action::AbortJob)));
    assert!(has(&d, |a| matches!(a, Action::Fence { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_session_unrenewed_for_a_ttl_is_replaced() {
    let now = Instant::now();
    let c = ctx();
    let mut m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    m.session = Some(Session {
        lease: 42,
        renewed_at: now - c.t.ttl,
        ttl: c.t.ttl,
    });
    let inp = inputs(
        now,
        replica(),
        DcsRead::Ok {
            session: SessionRead::Failed {
                lease: 42,
                error: "keep-alive stream broken".into(),
            },
            view: view(Some(("n2", 9))),
        },
    );
    let d = decide(&c, &m, &inp);
    assert!(
        has(&d, |a| matches!(a, Action::GrantSession { .. })),
        "{d:?}"
    );
    assert_eq!(d.next.session, None);
}

#[tokio::test(start_paused = true)]
async fn with_no_leader_a_stopped_replica_starts_read_only_to_become_electable() {
    let now = Instant::now();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(None);
    for m in v.members.values_mut() {
        m.pg_state = PgState::Stopped;
    }
    let inp = healthy(now, Local::stopped(MemberRole::Replica), v);
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "no leader: starting PostgreSQL read-only so this node can be elected"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rewind_that_damaged_the_data_dir_counts_toward_a_reclone_a_refused_one_does_not() {
    let now = Instant::now();
    let c = ctx();
    let job = Job::StartReplica {
        upstream: "n2".into(),
        rewind: true,
        clone: false,
    };
    let run = |error: &str, failed: u32| {
        let mut m = mem(
            now,
            Role::Follower {
                leader: "n1".into(),
            },
            42,
        );
        m.failed_starts = failed;
        m.needs_rewind = true;
        m.job = Some(RunningJob {
            id: 3,
            job: job.clone(),
            started: now - Duration::from_secs(1),
        });
        let mut local = replica();
        local.pg_state = PgState::Stopped;
        local.reachable = false;
        let mut inp = healthy(now, local, view(Some(("n2", 7))));
        inp.outcomes = vec![crate::inputs::Outcome::JobDone {
            id: 3,
            job: job.clone(),
            error: Some(error.into()),
        }];
        decide(&c, &m, &inp)
    };
    let ancestor = "rewind: pg_rewind from n2 failed (exit status: 1): pg_rewind: error: could not find common ancestor of the source and target cluster's timelines";
    let refused = "rewind: pg_rewind from n2 failed (exit status: 1): pg_rewind: error: connection to server at \"10.0.0.1\", port 5432 failed: Connection refused";
    // Seen after a rewind from a source that died mid-copy (the faults suite's double-failover).
    let missing = "rewind: pg_rewind from n2 failed (exit status: 1): pg_rewind: servers diverged at WAL location 0/500C828 on timeline 1\npg_rewind: error: could not open file \"/data/pg_wal/000000010000000000000006\": No such file or directory\npg_rewind: error: could not read WAL record at 0/6000028";
    let timeout = "rewind: pg_rewind from n2 failed (exit status: 1): pg_rewind: error: connection to server at \"10.0.0.1\", port 5432 failed: timeout expired";
    assert_eq!(run(ancestor, 0).next.failed_starts, 1);
    assert_eq!(run(missing, 0).next.failed_starts, 1);
    assert_eq!(run(refused, 0).next.failed_starts, 0);
    assert_eq!(run(timeout, 0).next.failed_starts, 0);
    // The third such failure makes the next job a re-clone (spawned once the failed job's
    // back-off has passed).
    let d = run(ancestor, c.t.reclone_after_failed_starts - 1);
    assert!(d.reason.contains("re-clone"), "{}", d.reason);
    let d = run(refused, c.t.reclone_after_failed_starts - 1);
    assert!(!d.reason.contains("re-clone"), "{}", d.reason);
}

/// A bootstrap interrupted after its commit (the initialize key is ours for good, the mark
/// says "made") only finishes; one that did not commit waits; a server left running on a
/// half-made dir under another node's lead is stopped so the clone can go ahead.
#[tokio::test(start_paused = true)]
async fn interrupted_bootstraps_finish_wait_or_stop_by_what_the_dcs_says() {
    let now = Instant::now();
    let c = ctx();
    let m = mem(now, Role::NoLeader, 42);
    let mut v = view(None);
    for s in v.members.values_mut() {
        s.role = MemberRole::Uninitialized;
        s.pg_state = PgState::Stopped;
    }
    let done_by = |by: &str| {
        let mut v = v.clone();
        v.initialize = Some(crate::dcs::Initialize {
            by: by.into(),
            done: true,
            lease: None,
        });
        v
    };
    let made = Local {
        bootstrap_made: true,
        ..Local::stopped(MemberRole::Uninitialized)
    };
    let finishes = |d: &Decision| {
        has(d, |a| {
            matches!(
                a,
                Action::Spawn {
                    job: Job::FinishBootstrap,
                    ..
                }
            )
        })
    };
    let d = decide(&c, &m, &healthy(now, made.clone(), done_by("n1")));
    assert!(finishes(&d), "{}", d.reason);
    // Not made (the mark is empty: make() did not finish), or committed by another node.
    let d = decide(
        &c,
        &m,
        &healthy(
            now,
            Local::stopped(MemberRole::Uninitialized),
            done_by("n1"),
        ),
    );
    assert!(!finishes(&d), "{}", d.reason);
    assert!(
        d.reason.contains("no node with data is here"),
        "{}",
        d.reason
    );
    let d = decide(&c, &m, &healthy(now, made, done_by("n2")));
    assert!(!finishes(&d), "{}", d.reason);

    // Another node leads; our dead predecessor's bootstrap server still runs.
    let m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let orphan = Local {
        pg_state: PgState::Running,
        ..Local::stopped(MemberRole::Uninitialized)
    };
    let d = decide(&c, &m, &healthy(now, orphan, view(Some(("n2", 7)))));
    assert!(
        has(&d, |a| matches!(a, Action::Fence { .. })),
        "{}",
        d.reason
    );
    assert!(d.reason.contains("interrupted bootstrap"), "{}", d.reason);
}
