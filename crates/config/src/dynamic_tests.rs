use serde_json::json;

use super::*;

fn local() -> PghaConfig {
    crate::load_from_str(
        "[cluster]\nname = \"t\"\n[replication]\npassword = { env = \"PGHA_T_UNUSED\" }\n\
         [failover]\nmaximum_lag_on_failover = \"1MB\"\n\
         [postgres.parameters]\nwork_mem = \"4MB\"\n\
         [[nodes]]\nname = \"a\"\nhost = \"10.0.0.1\"\ndata_dir = \"/d/a\"\n",
        "t.toml",
    )
    .unwrap()
}

#[test]
fn seed_round_trips_and_overlay_replaces_the_local_values() {
    let cfg = local();
    let seed = DynamicSettings::seed(&cfg);
    assert_eq!(
        seed.to_json(),
        json!({"ttl": 8, "loop_wait": "500ms", "primary_start_timeout": 3, "failsafe_mode": true, "maximum_lag_on_failover": 1048576, "maximum_lag_on_syncnode": -1, "synchronous_mode": false, "synchronous_mode_strict": false, "synchronous_node_count": 1, "member_slots_ttl": 1800, "postgresql": {"parameters": {"work_mem": "4MB"}}})
    );
    assert_eq!(DynamicSettings::from_json(&seed.to_json()).unwrap(), seed);
    let edited = DynamicSettings::from_json(&json!({
        "maximum_lag_on_failover": "2MB",
        "postgresql": {"parameters": {"max_connections": 200, "jit": false}},
        "pause": true,
    }))
    .unwrap();
    let eff = edited.apply_to(&cfg).unwrap();
    assert_eq!(eff.failover.maximum_lag_on_failover, ByteSize(2 << 20));
    let ttl = DynamicSettings::from_json(&json!({"member_slots_ttl": "90s"})).unwrap();
    assert_eq!(
        ttl.apply_to(&cfg).unwrap().replication.member_slots_ttl,
        Duration::from_secs(90)
    );
    // The DCS copy replaces the parameters as a whole: work_mem is no longer set.
    assert_eq!(
        eff.postgres.parameters.into_iter().collect::<Vec<_>>(),
        vec![
            ("jit".to_string(), "off".to_string()),
            ("max_connections".to_string(), "200".to_string())
        ]
    );
    assert_eq!(
        edited.changed_keys(&seed),
        vec![
            "failsafe_mode",
            "loop_wait",
            "maximum_lag_on_failover",
            "maximum_lag_on_syncnode",
            "member_slots_ttl",
            "postgresql.parameters.jit",
            "postgresql.parameters.max_connections",
            "postgresql.parameters.work_mem",
            "primary_start_timeout",
            "synchronous_mode",
            "synchronous_mode_strict",
            "synchronous_node_count",
            "ttl"
        ]
    );
    // An empty document changes nothing.
    let none = DynamicSettings::from_json(&json!({})).unwrap();
    assert_eq!(none.apply_to(&cfg).unwrap(), cfg);
}

#[test]
fn bad_documents_name_every_key_and_what_was_expected() {
    let errs = DynamicSettings::from_json(&json!({
        "standby_cluster": {},
        "synchronous_mode": "maybe",
        "synchronous_node_count": 0,
        "synchronous_mode_strict": "yes",
        "ttl": "soon",
        "bogus": 1,
        "maximum_lag_on_failover": "10XB",
        "postgresql": {"parameters": {"synchronous_standby_names": "*", "work_mem": [1]}, "use_slots": true},
    }))
    .unwrap_err();
    let text = errs.to_string();
    for want in [
        "standby_cluster: cannot be changed on a running cluster yet: set `[standby_cluster]`",
        "synchronous_mode: `\"maybe\"` is not a mode: expected true, false or \"quorum\"",
        "synchronous_node_count: `0` is not a standby count",
        "synchronous_mode_strict: `\"yes\"` is not a boolean",
        "ttl: `soon` is not a duration: expected seconds (e.g. 30) or e.g. `250ms`",
        "bogus: is not a dynamic setting: expected one of ttl, loop_wait, retry_timeout, primary_start_timeout, failsafe_mode, maximum_lag_on_failover, maximum_lag_on_syncnode, synchronous_mode,",
        "maximum_lag_on_failover: `10XB` has an unknown unit",
        "postgresql.parameters.synchronous_standby_names: is managed by pgha",
        "postgresql.parameters.work_mem: `[1]` is not a setting value",
        "postgresql.use_slots: is not a dynamic setting",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert_eq!(errs.0.len(), 10, "{text}");
    // Names PostgreSQL would refuse are caught by the same validation as pgha.toml's.
    let bad = DynamicSettings::from_json(&json!({"postgresql": {"parameters": {"work mem": "1"}}}))
        .unwrap();
    let errs = bad.apply_to(&local()).unwrap_err();
    assert_eq!(errs.0[0].path, "postgresql.parameters.work mem", "{errs}");
}

#[test]
fn timings_are_dynamic_and_checked_together_with_the_local_ones() {
    let cfg = local();
    let doc = json!({"ttl": 20, "loop_wait": "500ms", "retry_timeout": 2.5});
    let s = DynamicSettings::from_json(&doc).unwrap();
    assert_eq!(s.ttl, Some(Duration::from_secs(20)));
    assert_eq!(s.loop_wait, Some(Duration::from_millis(500)));
    assert_eq!(s.retry_timeout, Some(Duration::from_millis(2500)));
    // Whole seconds are written as Patroni writes them, the rest as text.
    assert_eq!(
        s.to_json(),
        json!({"ttl": 20, "loop_wait": "500ms", "retry_timeout": "2s 500ms"})
    );
    assert_eq!(DynamicSettings::from_json(&s.to_json()).unwrap(), s);
    let eff = s.apply_to(&cfg).unwrap();
    assert_eq!(eff.failover.ttl, Duration::from_secs(20));
    assert_eq!(eff.failover.loop_wait, Duration::from_millis(500));
    // A TTL that breaks a rule with a pgha.toml value is refused, naming both.
    let short = DynamicSettings::from_json(&json!({"ttl": 3})).unwrap();
    let text = short.apply_to(&cfg).unwrap_err().to_string();
    assert!(
        text.contains("failover.safety_margin") || text.contains("loop_wait"),
        "{text}"
    );
    let frac = DynamicSettings::from_json(&json!({"ttl": 2.5})).unwrap();
    let text = frac.apply_to(&cfg).unwrap_err().to_string();
    assert!(
        text.starts_with("ttl: ") || text.contains("\nttl: ") || text.contains("ttl: 2.5s"),
        "{text}"
    );
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut doc = json!({"a": 1, "postgresql": {"parameters": {"x": "1", "y": "2"}}});
    merge_patch(
        &mut doc,
        &json!({"a": null, "postgresql": {"parameters": {"x": null, "z": "3"}}, "b": [1]}),
    );
    assert_eq!(
        doc,
        json!({"b": [1], "postgresql": {"parameters": {"y": "2", "z": "3"}}})
    );
    assert_eq!(
        patch_for("postgresql.parameters.work_mem", cli_value("8MB")),
        json!({"postgresql": {"parameters": {"work_mem": "8MB"}}})
    );
    assert_eq!(cli_value("200"), json!(200));
    assert_eq!(cli_value("null"), json!(null));
    assert_eq!(
        cli_value(r#"[{"name":"x"}]"#),
        json!([{"name": "x"}]),
        "a list (ignore_slots)"
    );
    assert_eq!(cli_value("on"), json!("on"));
    assert_eq!(
        flatten(&doc),
        vec![
            ("b".to_string(), "[1]".to_string()),
            ("postgresql.parameters.y".into(), "\"2\"".into()),
            ("postgresql.parameters.z".into(), "\"3\"".into()),
        ]
    );
}

#[test]
fn sync_mode_refuses_a_synchronous_commit_that_acknowledges_alone() {
    let mut cfg = local();
    cfg.replication.mode = crate::ReplicationMode::Sync;
    let doc = json!({"postgresql": {"parameters": {"synchronous_commit": "local"}}});
    let errs = DynamicSettings::from_json(&doc)
        .unwrap()
        .apply_to(&cfg)
        .unwrap_err();
    assert_eq!(
        errs.0[0].path, "postgresql.parameters.synchronous_commit",
        "{errs}"
    );
    let ok = json!({"postgresql": {"parameters": {"synchronous_commit": "remote_apply"}}});
    assert!(DynamicSettings::from_json(&ok)
        .unwrap()
        .apply_to(&cfg)
        .is_ok());
}

#[test]
fn failsafe_mode_and_primary_start_timeout_are_dynamic() {
    let cfg = local();
    let d = DynamicSettings::from_json(&json!({"failsafe_mode": false, "master_start_timeout": 1}))
        .unwrap();
    let eff = d.apply_to(&cfg).unwrap();
    assert!(!eff.failover.failsafe);
    assert_eq!(
        eff.failover.postgres_restart_timeout,
        Duration::from_secs(1)
    );
    // Written under Patroni 4's name.
    assert_eq!(d.to_json()["primary_start_timeout"], 1);
    let text = DynamicSettings::from_json(&json!({
        "failsafe_mode": "yes",
        "primary_start_timeout": 1,
        "master_start_timeout": 2,
    }))
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("failsafe_mode: `\"yes\"` is not a boolean"),
        "{text}"
    );
    assert!(
        text.contains("master_start_timeout: given with `primary_start_timeout`"),
        "{text}"
    );
    // Checked together with the node's own timings (ttl 8 s, loop_wait 500 ms).
    let text = DynamicSettings::from_json(&json!({"primary_start_timeout": 8}))
        .unwrap()
        .apply_to(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("primary_start_timeout: 8s plus failover.loop_wait reaches failover.ttl"),
        "{text}"
    );
}

#[test]
fn maximum_lag_on_syncnode_takes_a_size_or_minus_one() {
    let cfg = local();
    let on = DynamicSettings::from_json(&json!({"maximum_lag_on_syncnode": "16MB"})).unwrap();
    assert_eq!(
        on.apply_to(&cfg).unwrap().failover.maximum_lag_on_syncnode,
        Some(ByteSize(16 << 20))
    );
    let off = DynamicSettings::from_json(&json!({"maximum_lag_on_syncnode": -1})).unwrap();
    assert_eq!(off.to_json()["maximum_lag_on_syncnode"], -1);
    assert_eq!(
        off.apply_to(&cfg).unwrap().failover.maximum_lag_on_syncnode,
        None
    );
    let e = DynamicSettings::from_json(&json!({"maximum_lag_on_syncnode": -2}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("maximum_lag_on_syncnode: `-2` is not a size"),
        "{e}"
    );
}

#[test]
fn the_synchronous_settings_are_dynamic() {
    let cfg = local();
    let doc = json!({"synchronous_mode": "on", "synchronous_mode_strict": true, "synchronous_node_count": 2});
    let d = DynamicSettings::from_json(&doc).unwrap();
    assert_eq!(d.synchronous_mode, Some(crate::ReplicationMode::Sync));
    assert_eq!(
        DynamicSettings::from_json(&d.to_json()).unwrap(),
        d,
        "Patroni's shape round-trips"
    );
    // One node: sync mode would hang every commit; the error names the dynamic key.
    let errs = d.apply_to(&cfg).unwrap_err();
    assert_eq!(errs.0[0].path, "synchronous_mode", "{errs}");
    let mut two = cfg.clone();
    let b_node = |c: &PghaConfig| c.nodes[0].clone();
    let mut b = b_node(&two);
    b.name = "b".into();
    b.host = "10.0.0.2".into();
    two.nodes.push(b);
    // Two standbys asked of one replica: named by its dynamic key.
    let errs = d.apply_to(&two).unwrap_err();
    assert_eq!(errs.0[0].path, "synchronous_node_count", "{errs}");
    let mut c = b_node(&two);
    c.name = "c".into();
    c.host = "10.0.0.3".into();
    two.nodes.push(c);
    let eff = d.apply_to(&two).unwrap();
    assert_eq!(eff.replication.mode, crate::ReplicationMode::Sync);
    assert!(eff.failover.sync_strict);
    assert_eq!(eff.replication.sync_standbys, 2);
    let off = DynamicSettings::from_json(&json!({"synchronous_mode": false})).unwrap();
    assert_eq!(
        off.apply_to(&eff).unwrap().replication.mode,
        crate::ReplicationMode::Async
    );
    // Patroni 4's quorum mode: `"quorum"`, round-tripped as a string.
    let q = DynamicSettings::from_json(&json!({"synchronous_mode": "quorum"})).unwrap();
    assert_eq!(q.to_json()["synchronous_mode"], json!("quorum"));
    let eff = q.apply_to(&eff).unwrap();
    assert_eq!(eff.replication.mode, crate::ReplicationMode::Quorum);
    // One node: quorum mode would hang every commit too.
    assert_eq!(q.apply_to(&cfg).unwrap_err().0[0].path, "synchronous_mode");
}

#[test]
fn ignore_slots_is_dynamic_in_patronis_shape() {
    let doc = json!({"ignore_slots": [{"type": "logical", "database": "app", "plugin": "pgoutput"}, {"name": "backup_tool"}]});
    let d = DynamicSettings::from_json(&doc).unwrap();
    assert_eq!(d.to_json(), doc, "round-trips without nulls");
    let eff = d.apply_to(&local()).unwrap();
    assert_eq!(eff.replication.ignore_slots.len(), 2);
    assert_eq!(
        eff.replication.ignore_slots[1].name.as_deref(),
        Some("backup_tool")
    );
    // Named by the dynamic key: a rule that matches everything, a field Patroni lacks.
    let errs = DynamicSettings::from_json(&json!({"ignore_slots": [{}]}))
        .unwrap()
        .apply_to(&local())
        .unwrap_err();
    assert_eq!(errs.0[0].path, "ignore_slots[0]", "{errs}");
    let errs = DynamicSettings::from_json(&json!({"ignore_slots": [{"slot": "x"}]})).unwrap_err();
    assert!(
        errs.to_string()
            .contains("ignore_slots: unknown field `slot`"),
        "{errs}"
    );
}

#[test]
fn slots_are_dynamic_in_patronis_shape() {
    let doc = json!({"slots": {
        "site_b": {"type": "physical"},
        "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
    }});
    let d = DynamicSettings::from_json(&doc).unwrap();
    assert_eq!(d.to_json(), doc, "round-trips");
    let mut feedback = local();
    feedback.replication.hot_standby_feedback = true;
    let eff = d.apply_to(&feedback).unwrap();
    assert_eq!(eff.replication.permanent_slots, vec!["site_b".to_string()]);
    assert_eq!(eff.replication.logical_slots.len(), 1);
    assert_eq!(eff.replication.logical_slots[0].plugin, "pgoutput");
    // The seed holds what pgha.toml has, nothing when it has none.
    assert_eq!(DynamicSettings::seed(&eff).slots, d.slots);
    assert_eq!(DynamicSettings::seed(&local()).slots, None);
    // `null` / `{}`: no permanent slot (taken out of pgha.toml's too).
    let none = DynamicSettings::from_json(&json!({"slots": null})).unwrap();
    assert!(none
        .apply_to(&eff)
        .unwrap()
        .replication
        .permanent_slots
        .is_empty());
    assert_eq!(
        d.changed_keys(&none),
        vec![
            "slots",
            "slots.cdc.database",
            "slots.cdc.plugin",
            "slots.cdc.type",
            "slots.site_b.type"
        ]
    );

    // Each mistake names the slot.
    for (doc, want) in [
        (json!({"slots": ["x"]}), "is not a map of slots"),
        (
            json!({"slots": {"x": {"type": "other"}}}),
            "slot `x`: type `other`",
        ),
        (
            json!({"slots": {"x": {"type": "physical", "plugin": "p"}}}),
            "slot `x`: a physical slot has no database nor plugin",
        ),
        (
            json!({"slots": {"x": {"kind": "logical"}}}),
            "slot `x`: unknown field `kind`",
        ),
    ] {
        let errs = DynamicSettings::from_json(&doc).unwrap_err();
        assert_eq!(errs.0[0].path, "slots", "{errs}");
        assert!(errs.to_string().contains(want), "{want}: {errs}");
    }
    // Rules checked on the result, under the dynamic key and the slot's name.
    let errs = DynamicSettings::from_json(
        &json!({"slots": {"cdc": {"type": "logical", "database": "app"}}}),
    )
    .unwrap()
    .apply_to(&feedback)
    .unwrap_err();
    assert!(
        errs.0.iter().all(|e| e.path.starts_with("slots.cdc")),
        "{errs}"
    );
    let errs = DynamicSettings::from_json(&json!({"slots": {"a": {"type": "physical"}}}))
        .unwrap()
        .apply_to(&feedback)
        .unwrap_err();
    assert_eq!(errs.0[0].path, "slots.a", "{errs}");
}
