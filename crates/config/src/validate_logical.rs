//! Validation of `replication.logical_slots` (permanent logical slots).

use crate::{PghaConfig, ValidationErrors};

impl PghaConfig {
    pub(crate) fn validate_logical_slots(&self, errs: &mut ValidationErrors) {
        let r = &self.replication;
        if r.logical_slots.is_empty() {
            return;
        }
        for (i, s) in r.logical_slots.iter().enumerate() {
            let at = format!("replication.logical_slots[{i}]");
            if !crate::validate::is_slot_name(&s.name) {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` is not a valid slot name: expected a-z, 0-9, `_` (max 63)",
                        s.name
                    ),
                );
            } else if self.node(&s.name).is_some() {
                errs.push(
                    format!("{at}.name"),
                    format!("`{}` is a node's own slot name; pick another", s.name),
                );
            } else if r.permanent_slots.contains(&s.name) {
                errs.push(
                    format!("{at}.name"),
                    format!("`{}` is also in replication.permanent_slots", s.name),
                );
            } else if r.logical_slots[..i].iter().any(|o| o.name == s.name) {
                errs.push(
                    format!("{at}.name"),
                    format!("`{}` is listed twice", s.name),
                );
            }
            if s.database.is_empty() {
                errs.push(
                    format!("{at}.database"),
                    "must name the database the slot decodes",
                );
            }
            if s.plugin.is_empty() {
                errs.push(
                    format!("{at}.plugin"),
                    "must name an output plugin, e.g. \"pgoutput\"",
                );
            }
            if let Some(m) = r
                .ignore_slots
                .iter()
                .position(|m| m.name.as_deref() == Some(s.name.as_str()))
            {
                errs.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` is also ignored by replication.ignore_slots[{m}]",
                        s.name
                    ),
                );
            }
        }
        if !r.slots {
            errs.push(
                "replication.logical_slots",
                "needs replication.slots = true (slots are off)",
            );
        }
        if !r.hot_standby_feedback {
            errs.push(
                "replication.logical_slots",
                "needs replication.hot_standby_feedback = true: without it the primary may \
                 vacuum catalog rows a replica's copy of the slot still needs, and the copy \
                 is useless after a failover",
            );
        }
        let needed =
            self.nodes.len().saturating_sub(1) + r.permanent_slots.len() + r.logical_slots.len();
        if r.slots && (r.max_replication_slots as usize) < needed {
            errs.push(
                "replication.max_replication_slots",
                format!(
                    "{} is fewer than the {needed} slots needed (one per other node plus \
                     permanent_slots and logical_slots)",
                    r.max_replication_slots
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::load_from_str;

    use crate::validate::tests::GOOD;

    fn with(extra: &str) -> String {
        GOOD.replace(
            "password = { env = \"REPL_PW\" }",
            &format!("password = {{ env = \"REPL_PW\" }}\n{extra}"),
        )
    }

    #[test]
    fn logical_slots_load() {
        let c = load_from_str(
            &with(r#"logical_slots = [{ name = "cdc", database = "app", plugin = "pgoutput" }]"#),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.replication.logical_slots[0].name, "cdc");
        assert_eq!(c.replication.logical_slots[0].plugin, "pgoutput");
    }

    #[test]
    fn bad_logical_slots_are_named() {
        let bad = with(
            r#"hot_standby_feedback = false
max_replication_slots = 2
permanent_slots = ["site_b"]
ignore_slots = [{ name = "ign" }]
logical_slots = [
  { name = "Bad-Name", database = "app", plugin = "pgoutput" },
  { name = "node2", database = "app", plugin = "pgoutput" },
  { name = "site_b", database = "", plugin = "" },
  { name = "cdc", database = "app", plugin = "pgoutput" },
  { name = "cdc", database = "app", plugin = "pgoutput" },
  { name = "ign", database = "app", plugin = "pgoutput" },
]"#,
        );
        let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
        for want in [
            "replication.logical_slots[0].name: `Bad-Name` is not a valid slot name",
            "replication.logical_slots[1].name: `node2` is a node's own slot name",
            "replication.logical_slots[2].name: `site_b` is also in replication.permanent_slots",
            "replication.logical_slots[2].database: must name the database",
            "replication.logical_slots[2].plugin: must name an output plugin",
            "replication.logical_slots[4].name: `cdc` is listed twice",
            "replication.logical_slots[5].name: `ign` is also ignored by replication.ignore_slots[0]",
            "replication.logical_slots: needs replication.hot_standby_feedback = true",
            "replication.max_replication_slots: 2 is fewer than the 8 slots needed",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
        assert!(!err.contains("logical_slots[3]"), "{err}");
        let missing = with(r#"logical_slots = [{ name = "cdc", database = "app" }]"#);
        let err = load_from_str(&missing, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("missing field `plugin`"), "{err}");
        let off = with(
            "slots = false\nlogical_slots = [{ name = \"cdc\", database = \"app\", plugin = \"pgoutput\" }]",
        );
        let err = load_from_str(&off, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.logical_slots: needs replication.slots = true"),
            "{err}"
        );
    }
}
