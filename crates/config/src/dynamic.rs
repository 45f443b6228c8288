//! Cluster-wide settings kept in the DCS once the cluster runs (Patroni's dynamic
//! configuration): one copy for every node, so the hosts' pgha.toml files cannot drift apart
//! on them. The document has Patroni's shape (`maximum_lag_on_failover` in bytes,
//! `postgresql.parameters`), so `PATCH /config` bodies written for Patroni apply unchanged.
//!
//! pgha.toml seeds it (the first leader writes [`DynamicSettings::seed`] when the DCS has
//! none); from then on the DCS copy wins for every key it holds ([`DynamicSettings::overlay`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{ByteSize, PghaConfig, ReplicationMode, ValidationErrors};

/// Keys of Patroni's dynamic configuration pgha does not change on a running cluster, with the
/// pgha.toml field that sets them (on every node, then a rolling restart of the agents).
pub const NOT_DYNAMIC: &[(&str, &str)] = &[("standby_cluster", "[standby_cluster]")];

/// The keys [`DynamicSettings`] understands, for error messages and `--help`.
pub const DYNAMIC_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "primary_start_timeout",
    "failsafe_mode",
    "maximum_lag_on_failover",
    "maximum_lag_on_syncnode",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "member_slots_ttl",
    "ignore_slots",
    "slots",
    "postgresql.parameters.<name>",
];

/// Dynamic key → the pgha.toml field it overrides (for error paths).
const FIELD_OF: &[(&str, &str)] = &[
    ("ttl", "failover.ttl"),
    ("loop_wait", "failover.loop_wait"),
    ("retry_timeout", "dcs.request_timeout"),
    ("primary_start_timeout", "failover.postgres_restart_timeout"),
    ("failsafe_mode", "failover.failsafe"),
    (
        "maximum_lag_on_failover",
        "failover.maximum_lag_on_failover",
    ),
    (
        "maximum_lag_on_syncnode",
        "failover.maximum_lag_on_syncnode",
    ),
    ("synchronous_mode", "replication.mode"),
    ("synchronous_mode_strict", "failover.sync_strict"),
    ("synchronous_node_count", "replication.sync_standbys"),
    ("member_slots_ttl", "replication.member_slots_ttl"),
    ("ignore_slots", "replication.ignore_slots"),
];

/// PostgreSQL settings pgha writes itself (pgha.conf, pgha-node.conf): a value in
/// `postgres.parameters` would override its management. Each names the field to use instead.
pub const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    (
        "wal_level",
        "pgha sets `replica` (`logical` with replication.logical_slots)",
    ),
    ("hot_standby", "pgha sets `on`"),
    ("max_wal_senders", "use replication.max_wal_senders"),
    (
        "max_replication_slots",
        "use replication.max_replication_slots",
    ),
    ("wal_keep_size", "use replication.wal_keep_size"),
    (
        "hot_standby_feedback",
        "use replication.hot_standby_feedback",
    ),
    (
        "synchronous_standby_names",
        "the agent manages it (replication.mode, replication.sync_standbys)",
    ),
    ("port", "use nodes[].port"),
    ("listen_addresses", "use nodes[].host"),
    ("unix_socket_directories", "use nodes[].socket_dir"),
    ("cluster_name", "pgha sets `<cluster>-<node>`"),
    (
        "primary_conninfo",
        "the agent points replicas at their upstream",
    ),
    (
        "primary_slot_name",
        "the agent manages slots (replication.slots)",
    ),
    ("ssl", "use [tls]"),
    ("ssl_cert_file", "use [tls] and nodes[].tls_cert_file"),
    ("ssl_key_file", "use [tls] and nodes[].tls_key_file"),
];

/// The typed dynamic settings. `None`: the DCS document does not hold the key, pgha.toml's
/// value applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicSettings {
    /// `failover.ttl`: the leader lease. A change reaches the leases as each agent grants a
    /// new one (the leader moves its key onto it).
    pub ttl: Option<Duration>,
    /// `failover.loop_wait`.
    pub loop_wait: Option<Duration>,
    /// `dcs.request_timeout` (Patroni's `retry_timeout`).
    pub retry_timeout: Option<Duration>,
    /// `failover.postgres_restart_timeout` (Patroni's `primary_start_timeout`, also read as
    /// `master_start_timeout`): how long the leader waits for its crashed PostgreSQL to come
    /// back before it releases the lease.
    pub primary_start_timeout: Option<Duration>,
    /// `failover.failsafe` (Patroni's `failsafe_mode`).
    pub failsafe_mode: Option<bool>,
    /// `failover.maximum_lag_on_failover`.
    pub maximum_lag_on_failover: Option<ByteSize>,
    /// `failover.maximum_lag_on_syncnode`; `Some(None)`: off (Patroni's -1).
    pub maximum_lag_on_syncnode: Option<Option<ByteSize>>,
    /// `replication.mode` (Patroni's `synchronous_mode`: true is `sync`). Switched at runtime
    /// by the leader without a window where an acknowledged commit could be lost
    /// (docs/FAILOVER.md, "Switching the mode").
    pub synchronous_mode: Option<ReplicationMode>,
    /// `failover.sync_strict`.
    pub synchronous_mode_strict: Option<bool>,
    /// `replication.sync_standbys`.
    pub synchronous_node_count: Option<u32>,
    /// `replication.member_slots_ttl`.
    pub member_slots_ttl: Option<Duration>,
    /// `replication.ignore_slots` (Patroni's list of `{name, type, database, plugin}`).
    pub ignore_slots: Option<Vec<crate::SlotMatcher>>,
    /// `replication.permanent_slots` and `replication.logical_slots` together (Patroni's
    /// `slots`: `{name: {type: physical}}`, `{name: {type: logical, database, plugin}}`).
    pub slots: Option<PermanentSlots>,
    /// `postgres.parameters`, as a whole (a parameter absent here is not set on any node).
    pub parameters: Option<BTreeMap<String, String>>,
}

/// Patroni's `slots`: the permanent physical and logical slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermanentSlots {
    pub physical: Vec<String>,
    pub logical: Vec<crate::LogicalSlotSpec>,
}

impl PermanentSlots {
    fn of(cfg: &PghaConfig) -> Self {
        PermanentSlots {
            physical: cfg.replication.permanent_slots.clone(),
            logical: cfg.replication.logical_slots.clone(),
        }
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let expected = "expected {name: {type: \"physical\"}} or {name: {type: \"logical\", database, plugin}}";
        let obj = match value {
            Value::Null => return Ok(PermanentSlots::default()),
            Value::Object(o) => o,
            v => return Err(format!("`{v}` is not a map of slots: {expected}")),
        };
        let mut out = PermanentSlots::default();
        for (name, spec) in obj {
            let field = |k: &str| spec.get(k).and_then(Value::as_str);
            let Some(fields) = spec.as_object() else {
                return Err(format!(
                    "slot `{name}`: `{spec}` is not an object: {expected}"
                ));
            };
            if let Some(k) = fields
                .keys()
                .find(|k| !["type", "database", "plugin"].contains(&k.as_str()))
            {
                return Err(format!("slot `{name}`: unknown field `{k}`: {expected}"));
            }
            match field("type") {
                Some("physical") | None if fields.len() <= 1 => out.physical.push(name.clone()),
                Some("logical") => out.logical.push(crate::LogicalSlotSpec {
                    name: name.clone(),
                    database: field("database").unwrap_or_default().to_string(),
                    plugin: field("plugin").unwrap_or_default().to_string(),
                }),
                Some("physical") | None => {
                    return Err(format!(
                        "slot `{name}`: a physical slot has no database nor plugin"
                    ))
                }
                Some(t) => return Err(format!("slot `{name}`: type `{t}`: {expected}")),
            }
        }
        Ok(out)
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        for n in &self.physical {
            m.insert(n.clone(), serde_json::json!({"type": "physical"}));
        }
        for l in &self.logical {
            m.insert(
                l.name.clone(),
                serde_json::json!({"type": "logical", "database": l.database, "plugin": l.plugin}),
            );
        }
        Value::Object(m)
    }
}

impl DynamicSettings {
    /// What pgha.toml says: the document the first leader writes.
    pub fn seed(cfg: &PghaConfig) -> Self {
        DynamicSettings {
            ttl: Some(cfg.failover.ttl),
            loop_wait: Some(cfg.failover.loop_wait),
            retry_timeout: cfg.dcs.as_ref().map(|d| d.request_timeout),
            primary_start_timeout: Some(cfg.failover.postgres_restart_timeout),
            failsafe_mode: Some(cfg.failover.failsafe),
            maximum_lag_on_failover: Some(cfg.failover.maximum_lag_on_failover),
            maximum_lag_on_syncnode: Some(cfg.failover.maximum_lag_on_syncnode),
            synchronous_mode: Some(cfg.replication.mode),
            synchronous_mode_strict: Some(cfg.failover.sync_strict),
            synchronous_node_count: Some(cfg.replication.sync_standbys),
            member_slots_ttl: Some(cfg.replication.member_slots_ttl),
            ignore_slots: (!cfg.replication.ignore_slots.is_empty())
                .then(|| cfg.replication.ignore_slots.clone()),
            slots: Some(PermanentSlots::of(cfg))
                .filter(|s| !s.physical.is_empty() || !s.logical.is_empty()),
            parameters: Some(cfg.postgres.parameters.clone()),
        }
    }

    /// Parses the DCS document (or an operator's edit of it). Every problem at once, each
    /// with its key path; `pause` is the cluster's pause switch, kept beside the settings.
    pub fn from_json(doc: &Value) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let mut out = DynamicSettings::default();
        let Some(obj) = doc.as_object() else {
            errs.push("(document)", "expected a JSON object");
            return Err(errs);
        };
        for (key, value) in obj {
            match key.as_str() {
                "pause" => {}
                "ttl"
                | "loop_wait"
                | "retry_timeout"
                | "primary_start_timeout"
                | "member_slots_ttl"
                | "master_start_timeout" => match duration(value) {
                    Ok(d) => match key.as_str() {
                        "member_slots_ttl" => out.member_slots_ttl = Some(d),
                        "ttl" => out.ttl = Some(d),
                        "loop_wait" => out.loop_wait = Some(d),
                        "retry_timeout" => out.retry_timeout = Some(d),
                        "master_start_timeout" if obj.contains_key("primary_start_timeout") => errs
                            .push(
                                key.as_str(),
                                "given with `primary_start_timeout`: it is that key's old name",
                            ),
                        _ => out.primary_start_timeout = Some(d),
                    },
                    Err(m) => errs.push(key.as_str(), m),
                },
                "failsafe_mode" | "synchronous_mode_strict" => match boolean(value) {
                    Ok(b) if key == "failsafe_mode" => out.failsafe_mode = Some(b),
                    Ok(b) => out.synchronous_mode_strict = Some(b),
                    Err(m) => errs.push(key.as_str(), m),
                },
                "synchronous_mode" => match value {
                    Value::String(s) if s == "quorum" => {
                        out.synchronous_mode = Some(ReplicationMode::Quorum)
                    }
                    v => match boolean(v) {
                        Ok(true) => out.synchronous_mode = Some(ReplicationMode::Sync),
                        Ok(false) => out.synchronous_mode = Some(ReplicationMode::Async),
                        Err(_) => errs.push(
                            key.as_str(),
                            format!("`{v}` is not a mode: expected true, false or \"quorum\""),
                        ),
                    },
                },
                "synchronous_node_count" => match value.as_u64() {
                    Some(n @ 1..=64) => out.synchronous_node_count = Some(n as u32),
                    _ => errs.push(
                        key.as_str(),
                        format!("`{value}` is not a standby count: expected a whole number from 1"),
                    ),
                },
                "maximum_lag_on_failover" => match byte_size(value) {
                    Ok(b) => out.maximum_lag_on_failover = Some(b),
                    Err(m) => errs.push(key.as_str(), m),
                },
                "maximum_lag_on_syncnode" if value.as_i64() == Some(-1) || value.is_null() => {
                    out.maximum_lag_on_syncnode = Some(None)
                }
                "maximum_lag_on_syncnode" => match byte_size(value) {
                    Ok(b) => out.maximum_lag_on_syncnode = Some(Some(b)),
                    Err(m) => errs.push(key.as_str(), format!("{m}, or -1 (off)")),
                },
                "ignore_slots" => match serde_json::from_value(value.clone()) {
                    Ok(v) => out.ignore_slots = Some(v),
                    Err(e) => errs.push(
                        key.as_str(),
                        format!("{e}: expected a list of {{name, type, database, plugin}}"),
                    ),
                },
                "slots" => match PermanentSlots::from_json(value) {
                    Ok(v) => out.slots = Some(v),
                    Err(m) => errs.push(key.as_str(), m),
                },
                "postgresql" => out.parameters = postgresql(value, &mut errs),
                _ => errs.push(key.as_str(), unknown_key(key)),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    /// The DCS document (Patroni's shape; the size in bytes).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (key, d) in [
            ("ttl", self.ttl),
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
            ("primary_start_timeout", self.primary_start_timeout),
            ("member_slots_ttl", self.member_slots_ttl),
        ] {
            if let Some(d) = d {
                m.insert(key.into(), duration_json(d));
            }
        }
        if let Some(b) = self.failsafe_mode {
            m.insert("failsafe_mode".into(), Value::Bool(b));
        }
        if let Some(mode) = self.synchronous_mode {
            let v = match mode {
                ReplicationMode::Quorum => Value::from("quorum"),
                m => Value::Bool(m == ReplicationMode::Sync),
            };
            m.insert("synchronous_mode".into(), v);
        }
        if let Some(b) = self.synchronous_mode_strict {
            m.insert("synchronous_mode_strict".into(), Value::Bool(b));
        }
        if let Some(n) = self.synchronous_node_count {
            m.insert("synchronous_node_count".into(), Value::from(n));
        }
        if let Some(i) = &self.ignore_slots {
            m.insert(
                "ignore_slots".into(),
                serde_json::to_value(i).unwrap_or(Value::Null),
            );
        }
        if let Some(slots) = &self.slots {
            m.insert("slots".into(), slots.to_json());
        }
        if let Some(lag) = self.maximum_lag_on_syncnode {
            let v = lag.map_or(Value::from(-1), |b| Value::from(b.bytes()));
            m.insert("maximum_lag_on_syncnode".into(), v);
        }
        if let Some(lag) = self.maximum_lag_on_failover {
            m.insert("maximum_lag_on_failover".into(), Value::from(lag.bytes()));
        }
        if let Some(p) = &self.parameters {
            let params: Map<String, Value> = p
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let mut pg = Map::new();
            pg.insert("parameters".into(), Value::Object(params));
            m.insert("postgresql".into(), Value::Object(pg));
        }
        Value::Object(m)
    }

    /// `local` with every key this document holds replaced by its value.
    pub fn overlay(&self, local: &PghaConfig) -> PghaConfig {
        let mut cfg = local.clone();
        if let Some(ttl) = self.ttl {
            cfg.failover.ttl = ttl;
        }
        if let Some(w) = self.loop_wait {
            cfg.failover.loop_wait = w;
        }
        if let (Some(t), Some(d)) = (self.retry_timeout, cfg.dcs.as_mut()) {
            d.request_timeout = t;
        }
        if let Some(t) = self.primary_start_timeout {
            cfg.failover.postgres_restart_timeout = t;
        }
        if let Some(b) = self.failsafe_mode {
            cfg.failover.failsafe = b;
        }
        if let Some(lag) = self.maximum_lag_on_failover {
            cfg.failover.maximum_lag_on_failover = lag;
        }
        if let Some(lag) = self.maximum_lag_on_syncnode {
            cfg.failover.maximum_lag_on_syncnode = lag;
        }
        if let Some(mode) = self.synchronous_mode {
            cfg.replication.mode = mode;
        }
        if let Some(b) = self.synchronous_mode_strict {
            cfg.failover.sync_strict = b;
        }
        if let Some(n) = self.synchronous_node_count {
            cfg.replication.sync_standbys = n;
        }
        if let Some(t) = self.member_slots_ttl {
            cfg.replication.member_slots_ttl = t;
        }
        if let Some(i) = &self.ignore_slots {
            cfg.replication.ignore_slots = i.clone();
        }
        if let Some(slots) = &self.slots {
            cfg.replication.permanent_slots = slots.physical.clone();
            cfg.replication.logical_slots = slots.logical.clone();
        }
        if let Some(p) = &self.parameters {
            cfg.postgres.parameters = p.clone();
        }
        cfg
    }

    /// [`Self::overlay`], validated: the problems the document brings (those pgha.toml alone
    /// does not have, which were reported when it loaded), named by their dynamic key path
    /// where there is one (`ttl`, `postgresql.parameters.work_mem`). A cross-field rule broken
    /// by a document's value names the pgha.toml field it checks (`failover.safety_margin`).
    pub fn apply_to(&self, local: &PghaConfig) -> Result<PghaConfig, ValidationErrors> {
        let cfg = self.overlay(local);
        let own = local.validate();
        let mut errs = ValidationErrors::default();
        for e in cfg.validate().iter() {
            if own
                .iter()
                .any(|o| o.path == e.path && o.message == e.message)
            {
                continue;
            }
            let renamed = if let Some(rest) = e.path.strip_prefix("postgres.parameters") {
                format!("postgresql.parameters{rest}")
            } else if let Some(rest) = e.path.strip_prefix("replication.ignore_slots") {
                format!("ignore_slots{rest}")
            } else if let Some(p) = slot_path(&cfg, &e.path) {
                p
            } else if let Some((key, _)) = FIELD_OF.iter().find(|(_, f)| *f == e.path) {
                key.to_string()
            } else {
                e.path.clone()
            };
            errs.push(renamed, e.message.clone());
        }
        if errs.is_empty() {
            Ok(cfg)
        } else {
            Err(errs)
        }
    }

    /// The keys whose value differs between two documents (`postgresql.parameters.<name>`
    /// for each parameter), for logs and diffs.
    pub fn changed_keys(&self, other: &DynamicSettings) -> Vec<String> {
        let (a, b) = (flatten(&self.to_json()), flatten(&other.to_json()));
        let mut keys: Vec<String> = a
            .iter()
            .chain(&b)
            .filter(|kv| !(a.contains(kv) && b.contains(kv)))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// `replication.permanent_slots[1]` → `slots.<its name>` (`slots` alone for the lists).
fn slot_path(cfg: &PghaConfig, path: &str) -> Option<String> {
    let r = &cfg.replication;
    if let Some(rest) = path.strip_prefix("replication.permanent_slots") {
        Some(index_to_name(rest, |i| {
            r.permanent_slots.get(i).map(String::as_str)
        }))
    } else {
        let rest = path.strip_prefix("replication.logical_slots")?;
        Some(index_to_name(rest, |i| {
            r.logical_slots.get(i).map(|s| s.name.as_str())
        }))
    }
}

fn index_to_name<'a>(rest: &str, name: impl Fn(usize) -> Option<&'a str>) -> String {
    let parsed = rest
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(i, tail)| Some((name(i.parse().ok()?)?, tail)));
    match parsed {
        Some((n, tail)) => format!("slots.{n}{tail}"),
        None => format!("slots{rest}"),
    }
}

fn unknown_key(key: &str) -> String {
    match NOT_DYNAMIC.iter().find(|(k, _)| *k == key) {
        Some((_, field)) => format!(
            "cannot be changed on a running cluster yet: set `{field}` in pgha.toml on every node and restart the agents one by one"
        ),
        None => format!(
            "is not a dynamic setting: expected one of {}",
            DYNAMIC_KEYS.join(", ")
        ),
    }
}

/// A boolean: JSON's, or Patroni's and PostgreSQL's words for one (`on`, `off`, `true`,
/// `false`; what `--set key=on` sends).
fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if matches!(s.as_str(), "on" | "true") => Ok(true),
        Value::String(s) if matches!(s.as_str(), "off" | "false") => Ok(false),
        other => Err(format!(
            "`{other}` is not a boolean: expected true or false"
        )),
    }
}

/// A duration: seconds as a number (Patroni's `ttl = 30`) or a string (`"250ms"`).
fn duration(v: &Value) -> Result<Duration, String> {
    let bad = |v: &dyn std::fmt::Display| {
        format!("`{v}` is not a duration: expected seconds (e.g. 30) or e.g. `250ms`")
    };
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| bad(n)),
        Value::String(s) => humantime::parse_duration(s).map_err(|_| bad(s)),
        other => Err(bad(other)),
    }
}

/// Whole seconds as a number (as Patroni writes them), anything finer as a string.
fn duration_json(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::String(humantime::format_duration(d).to_string())
    }
}

fn byte_size(v: &Value) -> Result<ByteSize, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(ByteSize)
            .ok_or_else(|| format!("`{n}` is not a size: expected whole bytes or e.g. `1MB`")),
        Value::String(s) => s.parse(),
        other => Err(format!(
            "`{other}` is not a size: expected whole bytes or e.g. `1MB`"
        )),
    }
}

/// `postgresql`: only `parameters` is dynamic; values may be strings, numbers or booleans
/// (Patroni's bodies use all three), kept as PostgreSQL reads them.
fn postgresql(v: &Value, errs: &mut ValidationErrors) -> Option<BTreeMap<String, String>> {
    let Some(obj) = v.as_object() else {
        errs.push("postgresql", "expected an object with `parameters`");
        return None;
    };
    let mut params = None;
    for (key, value) in obj {
        let path = format!("postgresql.{key}");
        if key != "parameters" {
            errs.push(path, "is not a dynamic setting: expected `parameters`");
            continue;
        }
        let Some(p) = value.as_object() else {
            errs.push(path, "expected an object of name = value");
            continue;
        };
        let mut out = BTreeMap::new();
        for (name, value) in p {
            let path = format!("postgresql.parameters.{name}");
            if let Some((_, why)) = MANAGED_PARAMETERS.iter().find(|(m, _)| m == name) {
                errs.push(path, format!("is managed by pgha: {why}"));
                continue;
            }
            match value {
                Value::String(s) => {
                    out.insert(name.clone(), s.clone());
                }
                Value::Number(n) => {
                    out.insert(name.clone(), n.to_string());
                }
                Value::Bool(b) => {
                    out.insert(name.clone(), if *b { "on" } else { "off" }.into());
                }
                other => errs.push(
                    path,
                    format!(
                        "`{other}` is not a setting value: expected a string, number or boolean"
                    ),
                ),
            }
        }
        params = Some(out);
    }
    params
}

/// RFC 7386 JSON merge patch (Patroni's `PATCH /config`): objects merge key by key, `null`
/// deletes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The document as `dotted.key = value` lines, sorted (for diffs and `--set`).
pub fn flatten(doc: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", doc, &mut out);
    out.sort();
    out
}

/// The merge patch that sets `path` (dotted) to `value` (`null` removes it).
pub fn patch_for(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| {
        Value::Object(Map::from_iter([(key.to_string(), inner)]))
    })
}

/// A `--set`/`--pg` value: JSON when it parses as a number, boolean, null or a list (e.g.
/// `ignore_slots=[{"name":"x"}]`), else the text.
pub fn cli_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::Array(_))) => v,
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
#[path = "dynamic_tests.rs"]
mod tests;
