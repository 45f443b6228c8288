//! The cluster-settings rules: new settings reach PostgreSQL between jobs, the leader seeds
//! the DCS copy once.

use super::*;

#[tokio::test(start_paused = true)]
async fn new_settings_go_to_postgres_first_in_the_tick_but_never_during_a_job() {
    let now = Instant::now();
    let mut ctx = ctx();
    ctx.generation = 2;
    let m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let inp = healthy(now, replica(), view(Some(("n2", 9))));
    let d = decide(&ctx, &m, &inp);
    let first = d
        .actions
        .iter()
        .find(|a| !matches!(a, Action::Watchdog { .. }));
    assert_eq!(first, Some(&Action::ApplyConfig { generation: 2 }));

    // Applied: not again.
    let mut m2 = d.next.clone();
    let mut inp2 = healthy(now, replica(), view(Some(("n2", 9))));
    inp2.outcomes = vec![Outcome::ConfigApplied {
        generation: 2,
        error: None,
    }];
    let d2 = decide(&ctx, &m2, &inp2);
    assert_eq!(d2.next.config_applied, 2);
    assert!(!has(&d2, |a| matches!(a, Action::ApplyConfig { .. })));

    // A failure is retried a loop later, not at once.
    m2.config_applied = 0;
    inp2.outcomes = vec![Outcome::ConfigApplied {
        generation: 2,
        error: Some("disk full".into()),
    }];
    let d3 = decide(&ctx, &m2, &inp2);
    assert!(!has(&d3, |a| matches!(a, Action::ApplyConfig { .. })));
    let later = healthy(now + ctx.t.loop_wait, replica(), view(Some(("n2", 9))));
    let d4 = decide(&ctx, &d3.next, &later);
    assert!(has(&d4, |a| matches!(a, Action::ApplyConfig { .. })));

    // While a job writes the data dir, nothing is handed over.
    let mut busy = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    busy.job = Some(RunningJob {
        id: 1,
        job: Job::StartReplica {
            upstream: "n2".into(),
            rewind: false,
            clone: true,
        },
        started: now,
    });
    let d5 = decide(&ctx, &busy, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert!(!has(&d5, |a| matches!(a, Action::ApplyConfig { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_leader_seeds_the_settings_once_from_pgha_toml() {
    let now = Instant::now();
    let ctx = ctx_with("[postgres.parameters]\nwork_mem = \"8MB\"");
    let m = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.config_revision = 5;
    let d = decide(&ctx, &m, &healthy(now, primary(), v.clone()));
    let seed = d.actions.iter().find_map(|a| match a {
        Action::SeedSettings { config, revision } => Some((config.clone(), *revision)),
        _ => None,
    });
    let (config, revision) = seed.expect("a leader without settings seeds them");
    assert_eq!(revision, 5);
    assert_eq!(
        config.settings.unwrap()["postgresql"]["parameters"]["work_mem"],
        "8MB"
    );
    // Kept: never overwritten.
    v.config.settings = Some(serde_json::json!({}));
    let d = decide(&ctx, &m, &healthy(now, primary(), v));
    assert!(!has(&d, |a| matches!(a, Action::SeedSettings { .. })));
    // A follower never seeds.
    let f = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let d = decide(&ctx, &f, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert!(!has(&d, |a| matches!(a, Action::SeedSettings { .. })));
}

#[tokio::test(start_paused = true)]
async fn operator_restarts_and_reinits_run_between_jobs_also_paused() {
    let now = Instant::now();
    let ctx = ctx();
    // The leader restarts its primary while paused, keeping the lease.
    let mut m = mem(now, Role::Leader, 42);
    let mut v = view(Some(("n1", 42)));
    v.config.paused = true;
    let mut inp = healthy(now, primary(), v.clone());
    inp.events = vec![Event::RestartRequested {
        at_ms: None,
        pending_only: false,
    }];
    let d = decide(&ctx, &m, &inp);
    assert_eq!(d.reason, "restart on request");
    assert!(has(&d, |a| matches!(
        a,
        Action::Spawn {
            job: Job::RestartPg { primary: true },
            ..
        }
    )));
    assert_eq!(d.next.role, Role::Leader);
    // Only when a setting waits for it.
    inp.events = vec![Event::RestartRequested {
        at_ms: None,
        pending_only: true,
    }];
    let d = decide(&ctx, &m, &inp);
    assert_eq!(
        d.reason,
        "restart on request skipped: no setting waits for a restart"
    );
    assert!(d.next.restart.is_none());
    // Scheduled: kept until its time.
    inp.events = vec![Event::RestartRequested {
        at_ms: Some(inp.wall_ms + 60_000),
        pending_only: false,
    }];
    let d = decide(&ctx, &m, &inp);
    assert!(d.next.restart.is_some());
    assert!(!has(&d, |a| matches!(a, Action::Spawn { .. })));
    // The leader is never reinitialized.
    m.reinit = true;
    let d = decide(&ctx, &m, &healthy(now, primary(), v));
    assert_eq!(
        d.reason,
        "reinitialize refused: this node holds the leader lease (switch over first)"
    );
    // A replica is: cloned afresh from the leader.
    let mut f = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    f.reinit = true;
    let d = decide(&ctx, &f, &healthy(now, replica(), view(Some(("n2", 9)))));
    assert!(has(&d, |a| matches!(
        a,
        Action::Spawn {
            job: Job::Reinit { upstream },
            ..
        } if upstream == "n2"
    )));
}
