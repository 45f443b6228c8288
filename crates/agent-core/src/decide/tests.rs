//! Each rule of `decide`, asserted against its reason and actions (Patroni's test_ha.py
//! style: one situation, one decision).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pgha_postgres::Lsn;
use tokio::time::Instant;

use super::*;
use crate::dcs::{
    LeaderInfo, LeaderStatus, MemberRole, MemberState, PgState, RequestKind, SwitchoverRequest,
    SyncState,
};
use crate::inputs::{Local, Probes, StandbyRow};
use crate::memory::{PendingSync, RunningJob};

fn ctx_with(extra: &str) -> Ctx {
    let toml = format!(
        r#"
[cluster]
name = "c"
[replication]
password = {{ env = "X" }}
{extra}
[dcs]
etcd = ["http://127.0.0.1:1"]
request_timeout = "500ms"
[failover]
ttl = "3s"
loop_wait = "250ms"
postgres_restart_timeout = "1s"
[[nodes]]
name = "n1"
host = "127.0.0.1"
port = 5432
data_dir = "/d/n1"
agent_address = "127.0.0.1:8001"
[[nodes]]
name = "n2"
host = "127.0.0.1"
port = 5433
data_dir = "/d/n2"
agent_address = "127.0.0.1:8002"
[[nodes]]
name = "n3"
host = "127.0.0.1"
port = 5434
data_dir = "/d/n3"
agent_address = "127.0.0.1:8003"
"#
    );
    let cfg = pgha_config::load_from_str(&toml, "test").unwrap();
    Ctx::new(Arc::new(cfg), "n1").unwrap()
}

fn ctx() -> Ctx {
    ctx_with("")
}

fn primary() -> Local {
    Local {
        pg_state: PgState::Running,
        reachable: true,
        role: MemberRole::Primary,
        timeline: Some(1),
        lsn: Some(Lsn(1000)),
        replay_lsn: Some(Lsn(1000)),
        checkpoint_timeline: Some(1),
        sync_names: Some(String::new()),
        slots: Some(vec![]),
        ..Local::stopped(MemberRole::Primary)
    }
}

fn replica() -> Local {
    Local {
        pg_state: PgState::Running,
        reachable: true,
        role: MemberRole::Replica,
        timeline: Some(1),
        lsn: Some(Lsn(1000)),
        replay_lsn: Some(Lsn(1000)),
        streaming: true,
        slots: Some(vec![]),
        ..Local::stopped(MemberRole::Replica)
    }
}

fn member(name: &str, role: MemberRole, lsn: u64) -> MemberState {
    MemberState {
        name: name.into(),
        pg_address: String::new(),
        api_address: None,
        pg_state: PgState::Running,
        role,
        timeline: Some(1),
        lsn: Some(Lsn(lsn)),
        replay_lsn: Some(Lsn(lsn)),
        streaming: role == MemberRole::Replica,
        upstream: None,
        nofailover: false,
        updated_ms: 1,
        checkpoint_timeline: (role == MemberRole::Primary).then_some(1),
        suspects: None,
    }
}

/// A view where `leader` holds the key on `lease`, everybody published.
fn view(leader: Option<(&str, i64)>) -> ClusterView {
    let mut v = ClusterView::default();
    for n in ["n1", "n2", "n3"] {
        let role = if leader.is_some_and(|(l, _)| l == n) {
            MemberRole::Primary
        } else {
            MemberRole::Replica
        };
        v.members.insert(n.into(), member(n, role, 1000));
    }
    v.leader = leader.map(|(name, lease)| LeaderInfo {
        name: name.into(),
        lease,
        revision: 7,
    });
    v
}

fn inputs(now: Instant, local: Local, dcs: DcsRead) -> Inputs {
    Inputs {
        now,
        wall_ms: 1_000_000,
        local,
        dcs,
        events: vec![],
        outcomes: vec![],
        probes: Probes::default(),
        stopping: false,
    }
}

fn renewed(lease: i64, sent: Instant) -> SessionRead {
    SessionRead::Renewed { lease, sent }
}

/// Memory of an agent that has run a while with session `lease`.
fn mem(now: Instant, role: Role, lease: i64) -> Memory {
    let mut m = Memory::new(now - Duration::from_secs(60));
    m.role = role;
    m.session = Some(Session {
        lease,
        renewed_at: now,
    });
    m
}

fn has(d: &Decision, f: impl Fn(&Action) -> bool) -> bool {
    d.actions.iter().any(f)
}

#[tokio::test(start_paused = true)]
async fn without_a_session_the_first_thing_is_a_grant() {
    let now = Instant::now();
    let m = Memory::new(now);
    let inp = inputs(
        now,
        replica(),
        DcsRead::Ok {
            session: SessionRead::None,
            view: view(None),
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(d.reason, "no session: granting one");
    assert!(has(&d, |a| matches!(a, Action::GrantSession)));
}

#[tokio::test(start_paused = true)]
async fn a_leader_key_with_our_name_on_another_lease_is_taken_over_not_adopted() {
    let now = Instant::now();
    let m = mem(now, Role::Starting, 42);
    let inp = inputs(
        now,
        Local::stopped(MemberRole::Primary),
        DcsRead::Ok {
            session: renewed(42, now),
            view: view(Some(("n1", 41))),
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert!(d.reason.contains("taking it over"), "{}", d.reason);
    assert!(has(&d, |a| matches!(
        a,
        Action::TakeOverLeader {
            lease: 42,
            revision: 7
        }
    )));
    // Not a leader yet: nothing started as primary.
    assert!(!has(&d, |a| matches!(a, Action::Spawn { .. })));
    assert_ne!(d.next.role, Role::Leader);
}

#[tokio::test(start_paused = true)]
async fn a_leader_arms_the_supervisor_from_the_start_of_its_last_renewal() {
    let now = Instant::now();
    let sent = now - Duration::from_millis(200);
    let m = mem(now, Role::Leader, 42);
    let inp = inputs(
        now,
        primary(),
        DcsRead::Ok {
            session: renewed(42, sent),
            view: view(Some(("n1", 42))),
        },
    );
    let c = ctx();
    let d = decide(&c, &m, &inp);
    assert_eq!(d.reason, "leader: primary running");
    assert_eq!(
        d.actions.first(),
        Some(&Action::Watchdog {
            deadline: Some(sent + c.t.watchdog_after)
        }),
        "the deadline comes first, before anything that may make PostgreSQL writable"
    );
    assert!(c.t.watchdog_after < c.t.ttl);
    assert!(c.t.fence_after < c.t.watchdog_after);
}

#[tokio::test(start_paused = true)]
async fn a_follower_never_extends_the_deadline_of_a_primary_it_still_runs() {
    let now = Instant::now();
    let mut m = mem(now, Role::NoLeader, 42);
    let old = now - Duration::from_millis(100);
    m.watchdog = Some(old);
    let inp = inputs(
        now,
        primary(),
        DcsRead::Ok {
            session: renewed(42, now),
            view: view(Some(("n2", 9))),
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert!(d.reason.contains("fenced"), "{}", d.reason);
    assert!(has(&d, |a| matches!(a, Action::Fence { .. })));
    assert!(has(&d, |a| *a
        == Action::Watchdog {
            deadline: Some(old)
        }));
}

#[tokio::test(start_paused = true)]
async fn a_follower_fences_a_primary_it_cannot_query() {
    let now = Instant::now();
    let m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let mut local = primary();
    local.reachable = false;
    let inp = inputs(
        now,
        local,
        DcsRead::Ok {
            session: renewed(42, now),
            view: view(Some(("n2", 9))),
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "follower of n2: our unanswering PostgreSQL is a primary on disk: fenced"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_ports_alone_never_revoke_a_leader() {
    let now = Instant::now();
    let c = ctx_with("");
    let mut m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let v = view(Some(("n2", 9)));
    let mut d = None;
    // Refused on many ticks, the leader's key unchanged for long: no second observer.
    for i in 0..10 {
        let t = now + Duration::from_millis(250 * i);
        let mut inp = inputs(
            t,
            replica(),
            DcsRead::Ok {
                session: renewed(42, t),
                view: v.clone(),
            },
        );
        inp.probes.leader_refused = Some(true);
        let dd = decide(&c, &m, &inp);
        m = dd.next.clone();
        d = Some(dd);
    }
    let d = d.unwrap();
    assert!(!has(&d, |a| matches!(a, Action::RevokeLeader(_))), "{d:?}");
    // We report what we see, for a second observer.
    assert!(has(
        &d,
        |a| matches!(a, Action::PublishMember { member, .. } if member.suspects == Some(9))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_second_observer_and_a_stale_member_key_revoke_a_dead_leader() {
    let now = Instant::now();
    let c = ctx();
    let mut m = mem(
        now,
        Role::Follower {
            leader: "n2".into(),
        },
        42,
    );
    let mut v = view(Some(("n2", 9)));
    v.members.get_mut("n3").unwrap().suspects = Some(9);
    let mut revoked = None;
    for i in 0..6 {
        let t = now + Duration::from_millis(250 * i);
        let mut inp = inputs(
            t,
            replica(),
            DcsRead::Ok {
                session: renewed(42, t),
                view: v.clone(),
            },
        );
        inp.probes.leader_refused = Some(true);
        let d = decide(&c, &m, &inp);
        m = d.next.clone();
        if has(&d, |a| matches!(a, Action::RevokeLeader(_))) {
            revoked = Some((i, d.reason.clone()));
            break;
        }
    }
    let (i, reason) = revoked.expect("revoked");
    assert!(reason.contains("another member sees it too"), "{reason}");
    // Not before its key was unchanged for dead_leader_stale.
    assert!(Duration::from_millis(250 * i) >= c.t.dead_leader_stale);
}

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
    let m = mem(now, Role::Leader, 42);
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
    inp.probes.failsafe = Some(Err("n2: this node reaches the DCS".into()));
    let d = decide(&c, &m, &inp);
    assert_eq!(
        d.reason,
        "DCS unreachable: fenced before the lease can expire"
    );
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
    assert!(has(&d, |a| matches!(a, Action::GrantSession)), "{d:?}");
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
    let inp = inputs(
        now,
        Local::stopped(MemberRole::Replica),
        DcsRead::Ok {
            session: renewed(42, now),
            view: v,
        },
    );
    let d = decide(&ctx(), &m, &inp);
    assert_eq!(
        d.reason,
        "no leader: starting PostgreSQL read-only so this node can be elected"
    );
}

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
    let inp = inputs(
        now,
        local,
        DcsRead::Ok {
            session: renewed(42, now),
            view: v,
        },
    );
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
    });
    let inp = inputs(
        now,
        replica(),
        DcsRead::Ok {
            session: renewed(42, now),
            view: v,
        },
    );
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
                ..
            },
            ..
        }
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
    let inp = inputs(
        now,
        Local::stopped(MemberRole::Primary),
        DcsRead::Ok {
            session: renewed(42, now),
            view: v,
        },
    );
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
    });
    let mut local = primary();
    local.standbys = streaming
        .iter()
        .map(|(n, l)| StandbyRow {
            name: n.to_string(),
            streaming: true,
            flush_lsn: Some(Lsn(*l)),
        })
        .collect();
    local.sync_names = Some(sync_names_for(
        current.len(),
        &current.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    ));
    let inp = inputs(
        now,
        local,
        DcsRead::Ok {
            session: renewed(42, now),
            view: v,
        },
    );
    (c, m, inp)
}

#[tokio::test(start_paused = true)]
async fn a_sync_standby_swap_removes_from_sync_before_postgres_stops_waiting() {
    let now = Instant::now();
    // n2 was the synchronous standby; it stopped streaming; n3 streams.
    let (c, m, inp) = sync_leader(now, &["n2"], &[("n3", 1000)]);
    let d = decide(&c, &m, &inp);
    let put = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::PutSync(s) if s.standbys.is_empty()));
    let ssn = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::SetSyncNames { value } if value == "FIRST 1 (\"n3\")"));
    assert!(
        matches!((put, ssn), (Some(p), Some(s)) if p < s),
        "/sync must drop n2 before PostgreSQL stops waiting for it: {:?}",
        d.actions
    );
    // n3 is named in /sync only once it caught up.
    assert!(!has(
        &d,
        |a| matches!(a, Action::PutSync(s) if s.standbys == ["n3"])
    ));
    assert_eq!(d.next.pending_sync.as_ref().unwrap().standbys, vec!["n3"]);
}

#[tokio::test(start_paused = true)]
async fn a_new_sync_standby_that_disconnects_while_catching_up_stops_holding_commits() {
    let now = Instant::now();
    let (c, mut m, mut inp) = sync_leader(now, &[], &[]);
    m.pending_sync = Some(PendingSync {
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
