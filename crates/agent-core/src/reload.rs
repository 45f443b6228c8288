//! What a reload of pgha.toml (SIGHUP, `POST /reload`) may change on a running agent, and how
//! the agent's config is made: pgha.toml with the DCS's cluster settings over it.

use std::sync::Arc;

use pgha_config::{DynamicSettings, PghaConfig};

/// The sections a reload refuses to change (a restart of the agent applies them): the ones
/// the lease, the DCS session, the node's identity or the rendered server settings rest on.
/// Tags, `nofailover`, `noloadbalance` and the dynamic keys (`postgres.parameters`,
/// `failover.maximum_lag_on_failover`, `failover.ttl`, `failover.loop_wait`,
/// `failover.postgres_restart_timeout`, `failover.failsafe`, `dcs.request_timeout`,
/// `replication.mode`, `replication.sync_standbys`, `failover.sync_strict`,
/// `replication.member_slots_ttl`, `replication.ignore_slots`) change live; the sections other programs read
/// (`[pooling]`, `[monitoring]`, `[router]`, `[backup]`) are taken as they are.
pub fn restart_only_changes(old: &PghaConfig, new: &PghaConfig) -> Vec<&'static str> {
    let norm = |c: &PghaConfig| {
        let mut c = c.clone();
        c.postgres.parameters.clear();
        c.failover.maximum_lag_on_failover = Default::default();
        c.failover.ttl = Default::default();
        c.failover.loop_wait = Default::default();
        c.failover.postgres_restart_timeout = Default::default();
        c.failover.failsafe = Default::default();
        c.failover.maximum_lag_on_syncnode = Default::default();
        c.failover.sync_strict = Default::default();
        c.replication.mode = Default::default();
        c.replication.sync_standbys = Default::default();
        c.replication.member_slots_ttl = Default::default();
        c.replication.ignore_slots = Default::default();
        c.replication.restore_command = Default::default();
        if let Some(d) = c.dcs.as_mut() {
            d.request_timeout = Default::default();
        }
        for n in &mut c.nodes {
            n.tags.clear();
            n.nofailover = false;
            n.failover_priority = None;
            n.sync_priority = None;
            n.nosync = false;
            n.nostream = false;
            n.noloadbalance = false;
        }
        c
    };
    let (a, b) = (norm(old), norm(new));
    let mut out = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("cluster", a.cluster == b.cluster);
    check("postgres", a.postgres == b.postgres);
    check("replication", a.replication == b.replication);
    check("dcs", a.dcs == b.dcs);
    check("failover", a.failover == b.failover);
    check("nodes", a.nodes == b.nodes);
    check("tls", a.tls == b.tls);
    check("standby_cluster", a.standby_cluster == b.standby_cluster);
    out
}

/// pgha.toml with `settings` (the DCS document) over it; Err names every unusable key.
pub fn effective(
    local: &Arc<PghaConfig>,
    settings: Option<&serde_json::Value>,
) -> Result<Arc<PghaConfig>, String> {
    let Some(doc) = settings else {
        return Ok(local.clone());
    };
    DynamicSettings::from_json(doc)
        .and_then(|s| s.apply_to(local))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The dynamic keys whose value differs between two configs (for the log line).
pub fn changed_keys(old: &PghaConfig, new: &PghaConfig) -> Vec<String> {
    DynamicSettings::seed(old).changed_keys(&DynamicSettings::seed(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> PghaConfig {
        pgha_config::load_from_str(
            &format!(
                "[cluster]\nname = \"t\"\n[replication]\npassword = {{ env = \"PGHA_T_UNUSED\" }}\n{extra}\n\
                 [[nodes]]\nname = \"a\"\nhost = \"10.0.0.1\"\ndata_dir = \"/d/a\"\n"
            ),
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn tags_and_parameters_reload_the_rest_needs_a_restart() {
        let old = cfg("");
        let mut new = old.clone();
        new.nodes[0].tags.insert("zone".into(), "b".into());
        new.nodes[0].nofailover = true;
        new.postgres
            .parameters
            .insert("work_mem".into(), "8MB".into());
        assert!(restart_only_changes(&old, &new).is_empty());
        // The timings are dynamic keys: they change live (the agent moves to a new lease).
        new.failover.ttl *= 2;
        new.failover.loop_wait *= 2;
        new.failover.failsafe = !new.failover.failsafe;
        new.failover.postgres_restart_timeout *= 2;
        assert!(restart_only_changes(&old, &new).is_empty());
        new.failover.safety_margin *= 2;
        new.nodes[0].port += 1;
        assert_eq!(restart_only_changes(&old, &new), vec!["failover", "nodes"]);
    }

    #[test]
    fn the_dcs_document_wins_and_a_bad_one_is_refused_whole() {
        let local = Arc::new(cfg("[postgres.parameters]\nwork_mem = \"4MB\"\n"));
        assert!(Arc::ptr_eq(&effective(&local, None).unwrap(), &local));
        let doc = serde_json::json!({"postgresql": {"parameters": {"work_mem": "8MB"}}});
        let eff = effective(&local, Some(&doc)).unwrap();
        assert_eq!(eff.postgres.parameters["work_mem"], "8MB");
        assert_eq!(
            changed_keys(&local, &eff),
            vec!["postgresql.parameters.work_mem"]
        );
        let bad = serde_json::json!({"postgresql": {"parameters": {"port": 1}}, "ttl": "x"});
        let e = effective(&local, Some(&bad)).unwrap_err();
        assert!(
            e.contains("postgresql.parameters.port") && e.contains("ttl"),
            "{e}"
        );
    }
}
