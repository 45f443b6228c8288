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
use crate::inputs::{Local, LogicalSlot, Probes, StandbyRow};
use crate::memory::{PendingSync, RunningJob};

mod faults;
mod logical;
mod mode_switch;
mod nostream;
mod permanent;
mod planned;
mod quorum;
mod settings;
mod slots;
mod timings;

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
        pending_restart: Vec::new(),
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
        pending_restart: Vec::new(),
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
        noloadbalance: false,
        tags: Default::default(),
        pending_restart: Vec::new(),
        loop_wait_ms: None,
        failover_priority: None,
    }
}

/// n1 follows leader n2, whose status publishes its permanent slot `slot` at `at`.
fn slot_status_view(slot: &str, at: u64) -> ClusterView {
    let mut v = view(Some(("n2", 7)));
    v.status = Some(LeaderStatus {
        leader: "n2".into(),
        lsn: Lsn(1000),
        timeline: 1,
        updated_ms: 1,
        slots: std::collections::BTreeMap::from([(slot.to_string(), Lsn(at))]),
        failsafe: None,
    });
    v
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

/// A tick with the DCS answering and our session 42 just renewed.
fn healthy(now: Instant, local: Local, view: ClusterView) -> Inputs {
    inputs(
        now,
        local,
        DcsRead::Ok {
            session: renewed(42, now),
            view,
        },
    )
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
        ttl: Duration::from_secs(3),
    });
    m
}

/// Our session (lease 42, TTL 3 s) as renewed at `now`: a loop of ticks that all renew.
fn renew(m: &mut Memory, now: Instant) {
    m.session = Some(Session {
        lease: 42,
        renewed_at: now,
        ttl: Duration::from_secs(3),
    });
}

/// A follower of n2 (in `v`) whose probes find n2's ports refused, ticking every
/// `dead_probe_every` from now: the tick at which it revokes n2's lease, and its reason.
fn ticks_until_revoked(c: &Ctx, v: &ClusterView, max: u32) -> Option<(u32, String)> {
    let now = Instant::now();
    let mut m = mem(now, follower_of("n2"), 42);
    for i in 0..max {
        let mut inp = healthy(now + c.t.dead_probe_every * i, replica(), v.clone());
        inp.probes.leader_refused = Some(true);
        let d = decide(c, &m, &inp);
        m = d.next.clone();
        if has(&d, |a| matches!(a, Action::RevokeLeader(_))) {
            return Some((i, d.reason));
        }
    }
    None
}

fn follower_of(leader: &str) -> Role {
    Role::Follower {
        leader: leader.into(),
    }
}

/// `c` with its config changed by `f` (the next generation, as a reload gives).
fn ctx_changed(c: &Ctx, f: impl FnOnce(&mut pgha_config::PghaConfig)) -> Ctx {
    let mut cfg = (*c.cfg).clone();
    f(&mut cfg);
    c.next_generation(Arc::new(cfg)).unwrap()
}

/// pg_stat_replication rows: these standbys stream at these flush positions.
fn streaming_rows(rows: &[(&str, u64)]) -> Vec<StandbyRow> {
    rows.iter()
        .map(|(n, l)| StandbyRow {
            name: n.to_string(),
            streaming: true,
            flush_lsn: Some(Lsn(*l)),
        })
        .collect()
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
    assert!(has(&d, |a| matches!(a, Action::GrantSession { .. })));
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
        let mut inp = healthy(t, replica(), v.clone());
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
    // And look again sooner than loop_wait, so a dead leader is confirmed sooner.
    assert_eq!(d.soon, Some(c.t.dead_probe_every));
}

#[tokio::test(start_paused = true)]
async fn a_second_observer_and_a_stale_member_key_revoke_a_dead_leader() {
    let c = ctx();
    let mut v = view(Some(("n2", 9)));
    v.members.get_mut("n3").unwrap().suspects = Some(9);
    // Once the ports refuse, the follower looks every dead_probe_every (d.soon).
    let step = c.t.dead_probe_every;
    let revoked = ticks_until_revoked(&c, &v, 40);
    let (i, reason) = revoked.expect("revoked");
    assert!(reason.contains("another member sees it too"), "{reason}");
    // Not before its key was unchanged for dead_leader_stale ...
    assert!(step * i >= c.t.dead_leader_stale);
    // ... and no later than one missed publish (1.5 x loop_wait) and a probe: the RTO budget.
    assert!(
        step * i <= c.t.loop_wait * 3 / 2 + step,
        "revoked after {:?} (loop_wait {:?})",
        step * i,
        c.t.loop_wait
    );
}
