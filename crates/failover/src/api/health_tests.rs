//! Every health path for every role: the set of paths that answer 200; all others answer 503.

use super::*;

fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn base() -> Facts {
    Facts {
        running: true,
        dcs_known: true,
        leader_lsn: Some(1_000_000),
        loop_age: Some(Duration::from_millis(200)),
        ttl: Duration::from_secs(10),
        maximum_lag_on_failover: 1 << 20,
        ..Facts::default()
    }
}

fn primary() -> Facts {
    Facts {
        pg_role: Some(MemberRole::Primary),
        holds_lease: true,
        ..base()
    }
}

fn replica() -> Facts {
    Facts {
        pg_role: Some(MemberRole::Replica),
        streaming: true,
        replication_state: Some("streaming"),
        received_lsn: Some(1_000_000),
        replayed_lsn: Some(999_000),
        ..base()
    }
}

fn ok_paths(f: &Facts, query: &HashMap<String, String>) -> Vec<&'static str> {
    PATHS
        .iter()
        .copied()
        .filter(|p| {
            answer(p, query, f)
                .expect("a health path")
                .expect("valid query")
        })
        .collect()
}

#[test]
fn primary_answers_the_write_paths_and_read_only() {
    assert_eq!(
        ok_paths(&primary(), &q(&[])),
        [
            "/",
            "/primary",
            "/master",
            "/read-write",
            "/leader",
            "/read-only",
            "/read-only-sync",
            "/read-only-synchronous",
            "/read-only-quorum",
            "/health",
            "/liveness",
            "/readiness",
        ]
    );
}

#[test]
fn async_replica_answers_replica_and_async() {
    assert_eq!(
        ok_paths(&replica(), &q(&[])),
        [
            "/replica",
            "/read-only",
            "/async",
            "/asynchronous",
            "/health",
            "/liveness",
            "/readiness"
        ]
    );
}

#[test]
fn sync_replica_answers_sync_not_async() {
    let f = Facts {
        sync_standby: true,
        ..replica()
    };
    assert_eq!(
        ok_paths(&f, &q(&[])),
        [
            "/replica",
            "/read-only",
            "/sync",
            "/synchronous",
            "/read-only-sync",
            "/read-only-synchronous",
            "/health",
            "/liveness",
            "/readiness"
        ]
    );
}

#[test]
fn standby_leader_is_leader_but_neither_primary_nor_replica() {
    let f = Facts {
        holds_lease: true,
        standby_cluster: true,
        ..replica()
    };
    assert_eq!(
        ok_paths(&f, &q(&[])),
        [
            "/leader",
            "/standby-leader",
            "/standby_leader",
            "/read-only",
            "/read-only-sync",
            "/read-only-synchronous",
            "/read-only-quorum",
            "/health",
            "/liveness",
            "/readiness"
        ]
    );
}

#[test]
fn a_replica_that_took_the_lease_is_no_replica_and_not_yet_primary() {
    // Between taking the key and promotion: no read and no write traffic.
    let f = Facts {
        holds_lease: true,
        ..replica()
    };
    let ok = ok_paths(&f, &q(&[]));
    assert!(!ok.contains(&"/primary") && !ok.contains(&"/"), "{ok:?}");
    assert!(
        !ok.contains(&"/replica") && !ok.contains(&"/read-only"),
        "{ok:?}"
    );
    assert!(ok.contains(&"/leader"), "{ok:?}");
}

#[test]
fn stopped_node_answers_only_liveness() {
    let f = Facts {
        running: false,
        ..replica()
    };
    assert_eq!(ok_paths(&f, &q(&[])), ["/liveness"]);
}

#[test]
fn stale_snapshot_claims_no_lead() {
    // from_snapshot drops the lease of a snapshot older than the TTL; a loop stuck for more
    // than one TTL also fails the primary's liveness.
    let f = Facts {
        holds_lease: false,
        loop_age: Some(Duration::from_secs(11)),
        ..primary()
    };
    assert_eq!(ok_paths(&f, &q(&[])), ["/health"]);
}

#[test]
fn noloadbalance_replica_takes_no_reads() {
    let f = Facts {
        noloadbalance: true,
        ..replica()
    };
    assert_eq!(
        ok_paths(&f, &q(&[])),
        ["/health", "/liveness", "/readiness"]
    );
}

#[test]
fn paused_without_dcs_answers_from_postgres_role() {
    let f = Facts {
        holds_lease: false,
        dcs_known: false,
        paused: true,
        ..primary()
    };
    let ok = ok_paths(&f, &q(&[]));
    assert!(
        ok.contains(&"/primary") && ok.contains(&"/leader"),
        "{ok:?}"
    );
    // Without the DCS the sync paths are unknown.
    assert!(!ok.contains(&"/read-only-sync"), "{ok:?}");
}

#[test]
fn replica_lag_query() {
    let f = replica(); // 1000 bytes behind on replay
    let ans = |query| answer("/replica", &q(query), &f).unwrap().unwrap();
    assert!(ans(&[("lag", "1000")]));
    assert!(!ans(&[("lag", "999")]));
    assert!(ans(&[("lag", "1kB")]));
    assert!(!answer("/read-only", &q(&[("lag", "10")]), &f)
        .unwrap()
        .unwrap());
    assert!(!answer("/async", &q(&[("lag", "10")]), &f).unwrap().unwrap());
    assert_eq!(
        answer("/replica", &q(&[("lag", "10XB")]), &f).unwrap(),
        Err(BadQuery(
            "lag: `10XB` has an unknown unit `XB`: expected B, kB, MB, GB or TB".into()
        ))
    );
    // The leader's position unknown: not lagging (Patroni's rule).
    let unknown = Facts {
        leader_lsn: None,
        ..replica()
    };
    assert!(answer("/replica", &q(&[("lag", "0")]), &unknown)
        .unwrap()
        .unwrap());
}

#[test]
fn replication_state_query() {
    let ans = |f: &Facts| {
        answer("/replica", &q(&[("replication_state", "streaming")]), f)
            .unwrap()
            .unwrap()
    };
    assert!(ans(&replica()));
    let archive = Facts {
        streaming: false,
        replication_state: Some("in archive recovery"),
        ..replica()
    };
    assert!(!ans(&archive));
    assert!(answer("/replica", &q(&[]), &archive).unwrap().unwrap());
}

#[test]
fn tag_query_matches_tags_and_is_ignored_by_write_paths() {
    let mut f = replica();
    f.tags.insert("zone".into(), "a".into());
    let ans = |p, query| answer(p, &q(query), &f).unwrap().unwrap();
    assert!(ans("/replica", &[("tag_zone", "a")]));
    assert!(!ans("/replica", &[("tag_zone", "b")]));
    assert!(!ans("/replica", &[("tag_rack", "1")]));
    assert!(!ans("/read-only", &[("tag_zone", "b")]));
    let p = primary();
    assert!(answer("/primary", &q(&[("tag_zone", "b")]), &p)
        .unwrap()
        .unwrap());
}

#[test]
fn readiness_lag_and_mode() {
    let f = Facts {
        received_lsn: Some(1_000_000),
        replayed_lsn: Some(900_000),
        ..replica()
    };
    let ans = |query| answer("/readiness", &q(query), &f).unwrap().unwrap();
    assert!(ans(&[])); // 100000 bytes < 1 MiB
    assert!(!ans(&[("lag", "50000")]));
    assert!(ans(&[("lag", "50000"), ("mode", "write")]));
    assert!(answer("/readiness", &q(&[("mode", "x")]), &f)
        .unwrap()
        .is_err());
    let not_streaming = Facts {
        replication_state: None,
        ..f.clone()
    };
    assert!(!answer("/readiness", &q(&[]), &not_streaming)
        .unwrap()
        .unwrap());
    // In archive recovery: ready only when tagged nostream (it never streams).
    let mut archive = Facts {
        replication_state: Some("in archive recovery"),
        ..f.clone()
    };
    assert!(!answer("/readiness", &q(&[]), &archive).unwrap().unwrap());
    archive.tags.insert("nostream".into(), "true".into());
    assert!(answer("/readiness", &q(&[]), &archive).unwrap().unwrap());
    assert!(!answer("/readiness", &q(&[("lag", "50000")]), &archive)
        .unwrap()
        .unwrap());
}

#[test]
fn liveness_allows_a_replica_two_ttls_and_any_paused_node() {
    let slow = Facts {
        loop_age: Some(Duration::from_secs(15)),
        ..replica()
    };
    assert!(answer("/liveness", &q(&[]), &slow).unwrap().unwrap());
    let stuck = Facts {
        loop_age: Some(Duration::from_secs(25)),
        ..replica()
    };
    assert!(!answer("/liveness", &q(&[]), &stuck).unwrap().unwrap());
    let paused = Facts {
        paused: true,
        ..stuck
    };
    assert!(answer("/liveness", &q(&[]), &paused).unwrap().unwrap());
    let never = Facts {
        loop_age: None,
        ..replica()
    };
    assert!(!answer("/liveness", &q(&[]), &never).unwrap().unwrap());
}

#[test]
fn unknown_paths_are_not_health_checks() {
    assert_eq!(answer("/cluster", &q(&[]), &primary()), None);
    assert_eq!(answer("/primaryx", &q(&[]), &primary()), None);
}
