//! The cluster settings kept in the DCS (Patroni's dynamic configuration), as operators see
//! and change them: `pgha show-config`, `pgha edit-config`, `GET|PATCH|PUT /config`.
//!
//! The document has Patroni's shape ([`pgha_config::dynamic`]) plus `pause`, the cluster's
//! pause switch. Every change is validated like pgha.toml (field paths in the errors) and
//! written with compare-and-swap on the `config` key.

use pgha_config::dynamic::{flatten, merge_patch};
use pgha_config::{DynamicSettings, PghaConfig};
use serde_json::Value;

use crate::dcs::{ClusterView, Dcs, DynamicConfig};
use crate::{FailoverError, Result};

/// The document operators see: what the DCS keeps (pgha.toml's seed while it keeps none, as
/// the first leader will write it) and `pause`.
pub fn document(local: &PghaConfig, view: &ClusterView) -> Value {
    let mut doc = view
        .config
        .settings
        .clone()
        .filter(Value::is_object)
        .unwrap_or_else(|| DynamicSettings::seed(local).to_json());
    if let Value::Object(m) = &mut doc {
        m.insert("pause".into(), Value::Bool(view.config.paused));
    }
    doc
}

/// pgha.toml with the DCS's settings over it: what the agents run with. A document the
/// agents refuse leaves pgha.toml's values (as the agents keep theirs).
pub fn effective(local: &PghaConfig, view: &ClusterView) -> PghaConfig {
    view.config
        .settings
        .as_ref()
        .and_then(|s| DynamicSettings::from_json(s).ok())
        .map_or_else(|| local.clone(), |s| s.overlay(local))
}

/// A change of the document.
#[derive(Debug, Clone)]
pub enum Edit {
    /// RFC 7386 merge patch (`PATCH /config`, `--set`, `--pg`): `null` removes a key.
    Patch(Value),
    /// The whole document (`PUT /config`, the editor).
    Replace(Value),
}

/// What an edit changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub before: Value,
    pub after: Value,
}

impl Change {
    /// `- key = old` / `+ key = new` lines, by key.
    pub fn diff(&self) -> Vec<String> {
        let (a, b) = (flatten(&self.before), flatten(&self.after));
        let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        let get = |v: &[(String, String)], k: &str| {
            v.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone())
        };
        let mut out = Vec::new();
        for k in keys {
            let (old, new) = (get(&a, k), get(&b, k));
            if old == new {
                continue;
            }
            if let Some(o) = old {
                out.push(format!("- {k} = {o}"));
            }
            if let Some(n) = new {
                out.push(format!("+ {k} = {n}"));
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.before == self.after
    }
}

/// The `config` key after `edit`, validated against pgha.toml (`local`); pure.
pub fn apply(
    local: &PghaConfig,
    view: &ClusterView,
    edit: &Edit,
) -> Result<(DynamicConfig, Change)> {
    let before = document(local, view);
    let mut after = match edit {
        Edit::Patch(p) => {
            let mut d = before.clone();
            merge_patch(&mut d, p);
            d
        }
        Edit::Replace(d) => d.clone(),
    };
    let Value::Object(m) = &mut after else {
        return Err(FailoverError::Settings(
            "(document): expected a JSON object".into(),
        ));
    };
    let paused = match m.remove("pause") {
        None | Some(Value::Null) => view.config.paused,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(FailoverError::Settings(format!(
                "  - pause: `{other}` is not a boolean"
            )))
        }
    };
    let settings = DynamicSettings::from_json(&after)
        .and_then(|s| s.apply_to(local).map(|_| s))
        .map_err(|e| FailoverError::Settings(e.to_string()))?;
    let mut config = view.config.clone();
    config.paused = paused;
    config.settings = Some(settings.to_json());
    let mut after = settings.to_json();
    if let Value::Object(m) = &mut after {
        m.insert("pause".into(), Value::Bool(paused));
    }
    Ok((config, Change { before, after }))
}

/// Reads, applies `edit`, asks `confirm` with the change (false: nothing is written), and
/// writes with compare-and-swap; a concurrent change re-reads and asks again. None: nothing
/// to change, or not confirmed.
pub async fn edit(
    dcs: &dyn Dcs,
    local: &PghaConfig,
    edit: &Edit,
    mut confirm: impl FnMut(&Change) -> bool,
) -> Result<Option<Change>> {
    for _ in 0..5 {
        let view = dcs.view().await?;
        let (config, change) = apply(local, &view, edit)?;
        if change.is_empty() && view.config.settings.is_some() {
            return Ok(None);
        }
        if !confirm(&change) {
            return Ok(None);
        }
        if dcs.put_config(&config, view.config_revision).await? {
            return Ok(Some(change));
        }
        tracing::info!("the cluster settings changed meanwhile: reading them again");
    }
    Err(FailoverError::refused(
        "edit-config",
        "the DCS config key kept changing under us; retry",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local() -> PghaConfig {
        pgha_config::load_from_str(
            "[cluster]\nname = \"t\"\n[replication]\npassword = { env = \"PGHA_T_UNUSED\" }\n\
             [postgres.parameters]\nwork_mem = \"4MB\"\n\
             [[nodes]]\nname = \"a\"\nhost = \"10.0.0.1\"\ndata_dir = \"/d/a\"\n",
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn a_patch_over_the_seed_diffs_validates_and_keeps_pause_beside() {
        let view = ClusterView::default();
        let doc = document(&local(), &view);
        assert_eq!(doc["postgresql"]["parameters"]["work_mem"], "4MB");
        assert_eq!(doc["pause"], false);
        let patch = json!({"postgresql": {"parameters": {"work_mem": null, "max_connections": 200}}, "pause": true});
        let (config, change) = apply(&local(), &view, &Edit::Patch(patch)).unwrap();
        assert!(config.paused);
        assert_eq!(
            config.settings.unwrap()["postgresql"]["parameters"],
            json!({"max_connections": "200"})
        );
        assert_eq!(
            change.diff(),
            vec![
                "- pause = false",
                "+ pause = true",
                "+ postgresql.parameters.max_connections = \"200\"",
                "- postgresql.parameters.work_mem = \"4MB\"",
            ]
        );
        let e = apply(
            &local(),
            &view,
            &Edit::Patch(json!({"loop_wait": 1, "pause": "yes"})),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pause: `\"yes\"` is not a boolean"), "{e}");
        let e = apply(
            &local(),
            &view,
            &Edit::Replace(json!({"standby_cluster": {}})),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("standby_cluster: cannot be changed on a running cluster yet"),
            "{e}"
        );
        // The timings are dynamic, checked together with the node's own settings.
        let (config, _) = apply(&local(), &view, &Edit::Replace(json!({"loop_wait": 1}))).unwrap();
        assert_eq!(config.settings.unwrap()["loop_wait"], 1);
        let e = apply(&local(), &view, &Edit::Replace(json!({"loop_wait": 5})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loop_wait: 5s is longer than a quarter"), "{e}");
    }

    #[test]
    fn effective_ignores_a_document_the_agents_would_refuse() {
        let mut view = ClusterView::default();
        view.config.settings = Some(json!({"maximum_lag_on_failover": 5}));
        assert_eq!(
            effective(&local(), &view)
                .failover
                .maximum_lag_on_failover
                .bytes(),
            5
        );
        view.config.settings = Some(json!({"maximum_lag_on_failover": "x"}));
        assert_eq!(effective(&local(), &view), local());
    }
}
