//! `validate()`: every problem at once, each with its field path.

use std::collections::HashMap;

use crate::{PghaConfig, SecretSource, ValidationErrors};

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

impl PghaConfig {
    /// Checks what serde cannot: uniqueness, cross-field rules, names PostgreSQL will accept.
    pub fn validate(&self) -> ValidationErrors {
        let mut errs = ValidationErrors::default();
        self.validate_cluster(&mut errs);
        self.validate_postgres(&mut errs);
        self.validate_replication(&mut errs);
        self.validate_nodes(&mut errs);
        self.validate_failover(&mut errs);
        self.validate_pooling(&mut errs);
        self.validate_monitoring(&mut errs);
        self.validate_standby(&mut errs);
        self.validate_logical_slots(&mut errs);
        self.bootstrap.validate(self.backup.is_some(), &mut errs);
        if let Some(r) = &self.router {
            r.validate(&mut errs);
        }
        if let Some(b) = &self.backup {
            b.validate(&mut errs);
            if let Some(n) = &b.node {
                if self.node(n).is_none() {
                    errs.push("backup.node", format!("`{n}` is not a node in [[nodes]]"));
                }
            }
        }
        errs
    }

    fn validate_pooling(&self, errs: &mut ValidationErrors) {
        let Some(p) = &self.pooling else { return };
        if p.listen_addr.trim().is_empty() {
            errs.push(
                "pooling.listen_addr",
                "must not be empty, e.g. \"127.0.0.1\"",
            );
        }
        if p.listen_port == 0 {
            errs.push("pooling.listen_port", "0 is not a port: expected 1-65535");
        } else if let Some(n) = self
            .nodes
            .iter()
            .find(|n| n.port == p.listen_port && n.host == p.listen_addr)
        {
            errs.push(
                "pooling.listen_port",
                format!("{} is node `{}`'s PostgreSQL port", p.listen_port, n.name),
            );
        }
        if p.max_client_conn == 0 {
            errs.push("pooling.max_client_conn", "0 would refuse every client");
        }
        if p.default_pool_size == 0 {
            errs.push(
                "pooling.default_pool_size",
                "0 would never open a server connection",
            );
        } else if p.default_pool_size > p.max_client_conn {
            errs.push(
                "pooling.default_pool_size",
                format!(
                    "{} is more than max_client_conn ({})",
                    p.default_pool_size, p.max_client_conn
                ),
            );
        }
        if p.databases.is_empty() {
            errs.push(
                "pooling.databases",
                "is empty: list the databases to expose, e.g. [\"app\"]",
            );
        }
        if p.read_only_suffix.is_empty() {
            errs.push(
                "pooling.read_only_suffix",
                "must not be empty: the read-only entry would shadow the read-write one",
            );
        }
        for (i, db) in p.databases.iter().enumerate() {
            check_pooler_name(errs, &format!("pooling.databases[{i}]"), db);
            if db == "pgbouncer" {
                errs.push(
                    format!("pooling.databases[{i}]"),
                    "`pgbouncer` is PgBouncer's admin console and cannot be a database entry",
                );
            }
            if p.databases[..i].contains(db) {
                errs.push(
                    format!("pooling.databases[{i}]"),
                    format!("`{db}` is listed twice"),
                );
            }
        }
        for (field, list) in [
            ("users", &p.users),
            ("admin_users", &p.admin_users),
            ("stats_users", &p.stats_users),
        ] {
            for (i, u) in list.iter().enumerate() {
                check_role_name(errs, &format!("pooling.{field}[{i}]"), u);
            }
        }
        if !p.admin_users.contains(&self.postgres.superuser) {
            errs.push(
                "pooling.admin_users",
                format!(
                    "must include postgres.superuser `{}`: pgha-pgbouncer logs in to the admin console as it to RELOAD, PAUSE and RESUME",
                    self.postgres.superuser
                ),
            );
        }
        if p.server_check_query.contains(['\n', '\r']) {
            errs.push("pooling.server_check_query", "must be one line");
        }
        for (i, s) in p.ignore_startup_parameters.iter().enumerate() {
            check_pooler_name(errs, &format!("pooling.ignore_startup_parameters[{i}]"), s);
        }
        for (field, path) in [
            ("ini_path", &p.ini_path),
            ("userlist_path", &p.userlist_path),
        ] {
            if path.file_name().is_none() {
                errs.push(
                    format!("pooling.{field}"),
                    format!("`{}` does not name a file", path.display()),
                );
            }
        }
        if p.ini_path == p.userlist_path {
            errs.push(
                "pooling.userlist_path",
                "is the same file as pooling.ini_path",
            );
        }
        check_os_user(errs, "pooling.os_user", &p.os_user);
        if p.poll_interval.is_zero() {
            errs.push(
                "pooling.poll_interval",
                "must be longer than 0s, e.g. \"500ms\"",
            );
        }
    }

    fn validate_cluster(&self, errs: &mut ValidationErrors) {
        let name = &self.cluster.name;
        if name.is_empty()
            || name.len() > MAX_IDENT
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(
                "cluster.name",
                format!("`{name}` is not a valid cluster name: expected 1-63 characters of a-z, A-Z, 0-9, `-`, `_`"),
            );
        }
    }

    fn validate_postgres(&self, errs: &mut ValidationErrors) {
        let pg = &self.postgres;
        check_role_name(errs, "postgres.superuser", &pg.superuser);
        check_os_user(errs, "postgres.os_user", &pg.os_user);
        check_secret(
            errs,
            "postgres.superuser_password",
            pg.superuser_password.as_ref(),
        );
        if pg.database.is_empty() {
            errs.push("postgres.database", "must not be empty");
        }
        if pg.connect_timeout.is_zero() {
            errs.push(
                "postgres.connect_timeout",
                "must be longer than 0s, e.g. \"5s\"",
            );
        }
        if let Some(dir) = &pg.bin_dir {
            if dir.is_relative() {
                errs.push(
                    "postgres.bin_dir",
                    format!("`{}` must be an absolute path", dir.display()),
                );
            }
        }
        if let (true, Some(v)) = (
            self.replication.mode.waits(),
            pg.parameters.get("synchronous_commit"),
        ) {
            if !matches!(v.as_str(), "on" | "remote_apply" | "remote_write") {
                errs.push(
                    "postgres.parameters.synchronous_commit",
                    format!("`{v}` in sync mode would acknowledge commits no standby has: expected on, remote_write or remote_apply"),
                );
            }
        }
        for key in pg.parameters.keys() {
            if let Some((_, why)) = crate::dynamic::MANAGED_PARAMETERS
                .iter()
                .find(|(m, _)| m == key)
            {
                errs.push(
                    format!("postgres.parameters.{key}"),
                    format!("is managed by pgha: {why}"),
                );
            }
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                errs.push(
                    format!("postgres.parameters.{key}"),
                    "is not a PostgreSQL setting name",
                );
            }
        }
    }

    fn validate_replication(&self, errs: &mut ValidationErrors) {
        let r = &self.replication;
        if r.restore_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            errs.push(
                "replication.restore_command",
                "is empty: remove it or give a command",
            );
        }
        check_role_name(errs, "replication.user", &r.user);
        if r.user == self.postgres.superuser {
            errs.push(
                "replication.user",
                format!(
                    "`{}` is also postgres.superuser: use a dedicated replication role",
                    r.user
                ),
            );
        }
        check_secret(errs, "replication.password", r.password.as_ref());
        if r.password.is_none() && self.nodes.len() > 1 {
            errs.push(
                "replication.password",
                "is required when the cluster has replicas: { env = \"VAR\" } or { file = \"/path\" }",
            );
        }
        if r.allowed_networks.is_empty() {
            errs.push(
                "replication.allowed_networks",
                "is empty: replicas could not connect; list their networks, e.g. [\"10.0.0.0/24\"]",
            );
        }
        let replicas = self.nodes.len().saturating_sub(1) as u32;
        if r.max_wal_senders < replicas {
            errs.push(
                "replication.max_wal_senders",
                format!(
                    "{} is fewer than the {replicas} replica(s) in nodes",
                    r.max_wal_senders
                ),
            );
        }
        if r.slots && r.max_replication_slots < replicas {
            errs.push(
                "replication.max_replication_slots",
                format!(
                    "{} is fewer than the {replicas} replica slot(s) needed",
                    r.max_replication_slots
                ),
            );
        }
        if r.mode.waits() {
            if replicas == 0 {
                errs.push("replication.mode", "sync and quorum need at least one replica in nodes; with one node every commit would hang");
            } else if r.sync_standbys == 0 || r.sync_standbys > replicas {
                errs.push(
                    "replication.sync_standbys",
                    format!(
                        "{} is out of range: expected 1..={replicas} (the number of replicas)",
                        r.sync_standbys
                    ),
                );
            }
        }
    }

    fn validate_failover(&self, errs: &mut ValidationErrors) {
        let f = &self.failover;
        let ttl = f.ttl;
        if ttl < std::time::Duration::from_secs(2) || ttl.subsec_nanos() != 0 {
            errs.push(
                "failover.ttl",
                format!("{ttl:?} is not usable: the lease needs whole seconds, at least 2s"),
            );
        }
        if f.loop_wait.is_zero() || f.loop_wait * 4 > ttl {
            errs.push(
                "failover.loop_wait",
                format!(
                    "{:?} is longer than a quarter of failover.ttl ({ttl:?}): the primary could not \
                     renew its lease and fence itself before the others may take over",
                    f.loop_wait
                ),
            );
        }
        if f.safety_margin < std::time::Duration::from_millis(100) || f.safety_margin * 2 > ttl {
            errs.push(
                "failover.safety_margin",
                format!(
                    "{:?} is not usable: between 100ms and half of failover.ttl ({ttl:?}), so \
                     PostgreSQL is killed before the lease can expire and not long before",
                    f.safety_margin
                ),
            );
        }
        if f.postgres_restart_timeout + f.loop_wait >= ttl {
            errs.push(
                "failover.postgres_restart_timeout",
                format!(
                    "{:?} plus failover.loop_wait reaches failover.ttl ({ttl:?}): release the lease \
                     before it would run out anyway",
                    f.postgres_restart_timeout
                ),
            );
        }
        check_secret(errs, "failover.api_token", f.api_token.as_ref());
        if f.api_token.is_none() && !f.api_allow_unauthenticated {
            if let Some((i, n)) = self
                .nodes
                .iter()
                .enumerate()
                .find(|(_, n)| n.agent_address.is_some_and(|a| !a.ip().is_loopback()))
            {
                errs.push(
                    "failover.api_token",
                    format!(
                        "required: nodes[{i}].agent_address ({}) is not a loopback address, and \
                         without a token anyone who reaches it can fail the cluster over; set \
                         failover.api_token = {{ file = \"...\" }} (or api_allow_unauthenticated \
                         = true to accept that)",
                        n.agent_address.map(|a| a.to_string()).unwrap_or_default()
                    ),
                );
            }
        }
        if f.api_restrict_reads && f.api_token.is_none() {
            errs.push(
                "failover.api_restrict_reads",
                "needs failover.api_token (the token reads must present)",
            );
        }
        if let Some(d) = &self.dcs {
            if d.etcd.is_empty() {
                errs.push(
                    "dcs.etcd",
                    "no endpoint: list at least one, e.g. [\"http://127.0.0.1:2379\"]",
                );
            }
            for (i, e) in d.etcd.iter().enumerate() {
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    errs.push(
                        format!("dcs.etcd[{i}]"),
                        format!("`{e}` must start with http:// or https://"),
                    );
                }
            }
            let https = d.etcd.iter().filter(|e| e.starts_with("https://")).count();
            if https > 0 && https < d.etcd.len() {
                errs.push(
                    "dcs.etcd",
                    "mixes http:// and https:// endpoints: use one scheme",
                );
            }
            if https > 0 && d.ca_file.is_none() {
                errs.push(
                    "dcs.ca_file",
                    "required with https:// endpoints: the CA that signed etcd's certificates",
                );
            }
            if https == 0 && (d.ca_file.is_some() || d.cert_file.is_some()) {
                errs.push(
                    "dcs.etcd",
                    "TLS files are set but the endpoints are http://: use https://",
                );
            }
            if d.cert_file.is_some() != d.key_file.is_some() {
                errs.push(
                    if d.cert_file.is_some() {
                        "dcs.key_file"
                    } else {
                        "dcs.cert_file"
                    },
                    "dcs.cert_file and dcs.key_file go together (etcd's client certificate)",
                );
            }
            if d.username.is_some() != d.password.is_some() {
                errs.push(
                    if d.username.is_some() {
                        "dcs.password"
                    } else {
                        "dcs.username"
                    },
                    "dcs.username and dcs.password go together (etcd's auth)",
                );
            }
            if !d.namespace.starts_with('/') {
                errs.push(
                    "dcs.namespace",
                    format!("`{}` must start with `/`", d.namespace),
                );
            }
            if d.request_timeout.is_zero() || d.request_timeout * 4 > ttl {
                errs.push(
                    "dcs.request_timeout",
                    format!(
                        "{:?} is longer than a quarter of failover.ttl ({ttl:?}): a hung DCS call could \
                         outlast the lease",
                        d.request_timeout
                    ),
                );
            }
        }
    }

    fn validate_monitoring(&self, errs: &mut ValidationErrors) {
        let m = &self.monitoring;
        if m.target_timeout.is_zero() {
            errs.push(
                "monitoring.target_timeout",
                "must be longer than 0s, e.g. \"2s\"",
            );
        }
        if let Some(ep) = &m.otlp_endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                errs.push(
                    "monitoring.otlp_endpoint",
                    format!("`{ep}` must be an http:// or https:// URL"),
                );
            }
        }
        let a = &m.alerts;
        for (path, v) in [
            ("monitoring.alerts.connections_ratio", a.connections_ratio),
            ("monitoring.alerts.rollback_ratio", a.rollback_ratio),
            ("monitoring.alerts.dead_tuples_ratio", a.dead_tuples_ratio),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                errs.push(
                    path,
                    format!("{v} is out of range: expected a fraction in (0, 1]"),
                );
            }
        }
        if !(a.lag_seconds > 0.0 && a.lag_seconds.is_finite()) {
            errs.push(
                "monitoring.alerts.lag_seconds",
                format!("{} must be a positive number of seconds", a.lag_seconds),
            );
        }
        if a.lag_bytes.0 == 0 {
            errs.push(
                "monitoring.alerts.lag_bytes",
                "must be above 0, e.g. \"64MB\"",
            );
        }
    }

    fn validate_standby(&self, errs: &mut ValidationErrors) {
        for (i, slot) in self.replication.permanent_slots.iter().enumerate() {
            let at = format!("replication.permanent_slots[{i}]");
            if !is_slot_name(slot) {
                errs.push(
                    at,
                    format!("`{slot}` is not a valid slot name: expected a-z, 0-9, `_`"),
                );
            } else if self.node(slot).is_some() {
                errs.push(
                    at,
                    format!("`{slot}` is a node's own slot name; pick another"),
                );
            }
        }
        let r = &self.replication;
        for (i, m) in r.ignore_slots.iter().enumerate() {
            if m == &crate::SlotMatcher::default() {
                errs.push(
                    format!("replication.ignore_slots[{i}]"),
                    "gives no field: it would match every slot; expected one of name, type, database, plugin",
                );
            }
            if let Some(n) = m.name.as_deref().filter(|n| self.node(n).is_some()) {
                errs.push(
                    format!("replication.ignore_slots[{i}].name"),
                    format!("`{n}` is a node's own slot: pgha manages it"),
                );
            }
        }
        if !r.permanent_slots.is_empty() && !r.slots {
            errs.push(
                "replication.permanent_slots",
                "needs replication.slots = true (slots are off)",
            );
        }
        let needed = self.nodes.len().saturating_sub(1) + r.permanent_slots.len();
        if r.slots
            && !r.permanent_slots.is_empty()
            && r.logical_slots.is_empty()
            && (r.max_replication_slots as usize) < needed
        {
            errs.push(
                "replication.max_replication_slots",
                format!(
                    "{} is fewer than the {needed} slots needed (one per other node plus permanent_slots)",
                    r.max_replication_slots
                ),
            );
        }
        let Some(s) = &self.standby_cluster else {
            return;
        };
        if let Some(own) = s
            .hosts_and_ports()
            .unwrap_or_default()
            .iter()
            .find(|(h, p)| self.nodes.iter().any(|n| n.host == *h && n.port == *p))
        {
            errs.push(
                "standby_cluster.primary_hosts",
                format!(
                    "{}:{} is one of this cluster's own nodes: list the other site's",
                    own.0, own.1
                ),
            );
        }
        if s.primary_hosts.is_empty() {
            errs.push(
                "standby_cluster.primary_hosts",
                "is empty: list the primary site's nodes, e.g. [\"10.1.0.1:5432\"]",
            );
        } else if s.hosts_and_ports().is_none() {
            errs.push(
                "standby_cluster.primary_hosts",
                format!(
                    "{:?}: expected `host:port` entries, e.g. \"10.1.0.1:5432\"",
                    s.primary_hosts
                ),
            );
        }
        if let Some(slot) = &s.primary_slot_name {
            if !is_slot_name(slot) {
                errs.push(
                    "standby_cluster.primary_slot_name",
                    format!("`{slot}` is not a valid slot name: expected a-z, 0-9, `_`"),
                );
            }
        }
        if s.restore_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            errs.push(
                "standby_cluster.restore_command",
                "is empty: remove it or give a command",
            );
        }
    }

    fn validate_nodes(&self, errs: &mut ValidationErrors) {
        if self.nodes.is_empty() {
            errs.push("nodes", "no node defined: add at least one [[nodes]] table");
            return;
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<(&str, u16), usize> = HashMap::new();
        let mut dirs: HashMap<&std::path::Path, usize> = HashMap::new();
        let mut agents: HashMap<std::net::SocketAddr, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            if n.name.is_empty()
                || n.name.len() > MAX_IDENT
                || !n.name.starts_with(|c: char| c.is_ascii_lowercase())
                || !n
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                errs.push(
                    at("name"),
                    format!("`{}` is not a valid node name: expected a-z first, then a-z, 0-9, `_` (it becomes a replication slot name)", n.name),
                );
            }
            if let Some(j) = names.insert(&n.name, i) {
                errs.push(at("name"), format!("`{}` is used by nodes[{j}]", n.name));
            }
            if n.host.trim().is_empty() {
                errs.push(at("host"), "must not be empty");
            }
            if n.port == 0 {
                errs.push(at("port"), "0 is not a port: expected 1-65535");
            } else if let Some(j) = addrs.insert((&n.host, n.port), i) {
                errs.push(at("port"), format!("{} is used by nodes[{j}]", n.port));
            }
            if n.data_dir.is_relative() {
                errs.push(
                    at("data_dir"),
                    format!("`{}` must be an absolute path", n.data_dir.display()),
                );
            }
            if let Some(j) = dirs.insert(&n.data_dir, i) {
                errs.push(
                    at("data_dir"),
                    format!("`{}` is used by nodes[{j}]", n.data_dir.display()),
                );
            }
            if let Some(user) = &n.os_user {
                check_os_user(errs, &at("os_user"), user);
            }
            if let Some(a) = n.agent_address {
                if let Some(j) = agents.insert(a, i) {
                    errs.push(at("agent_address"), format!("{a} is used by nodes[{j}]"));
                }
                if a.port() == n.port && addr_matches_host(&a, &n.host) {
                    errs.push(
                        at("agent_address"),
                        format!("{a} is this node's PostgreSQL port"),
                    );
                }
            }
            if let Some(up) = &n.replicate_from {
                if up == &n.name {
                    errs.push(at("replicate_from"), "names the node itself");
                } else if self.node(up).is_none() {
                    errs.push(
                        at("replicate_from"),
                        format!("`{up}` is not a node in [[nodes]]"),
                    );
                } else if self.cascade_loops(&n.name) {
                    errs.push(
                        at("replicate_from"),
                        format!(
                            "`{up}` leads back to `{}`: replicate_from must not form a loop",
                            n.name
                        ),
                    );
                }
            }
            for k in n.tags.keys() {
                let ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok {
                    errs.push(
                        at(&format!("tags.{k}")),
                        "a tag name is letters, digits, `_` and `-` (it is matched as ?tag_NAME=)",
                    );
                } else if matches!(
                    k.as_str(),
                    "nofailover" | "noloadbalance" | "nosync" | "nostream"
                ) {
                    errs.push(
                        at(&format!("tags.{k}")),
                        format!("set `{k} = true` on the node instead of as a tag"),
                    );
                } else if matches!(k.as_str(), "failover_priority" | "sync_priority") {
                    errs.push(
                        at(&format!("tags.{k}")),
                        format!("set `{k} = N` (a number) on the node instead of as a tag"),
                    );
                }
            }
            if let Some(p) = n.failover_priority.filter(|p| *p > 0 && n.nofailover) {
                errs.push(
                    at("failover_priority"),
                    format!(
                        "{p} conflicts with `nofailover = true` (a node that never leads has \
                         priority 0): drop one of them"
                    ),
                );
            }
            if let Some(p) = n.sync_priority.filter(|p| *p > 0 && n.nosync) {
                errs.push(
                    at("sync_priority"),
                    format!(
                        "{p} conflicts with `nosync = true` (a node that is never synchronous \
                         has priority 0): drop one of them"
                    ),
                );
            }
            if n.nostream {
                if self.replication.restore_command.is_none() {
                    errs.push(
                        at("nostream"),
                        "a replica that never streams replays from the archive: set \
                         replication.restore_command",
                    );
                }
                if n.replicate_from.is_some() {
                    errs.push(
                        at("nostream"),
                        "conflicts with `replicate_from` (a nostream replica streams from nobody)",
                    );
                }
            }
            if let Some(up) = n.replicate_from.as_deref().and_then(|u| self.node(u)) {
                if up.nostream {
                    errs.push(
                        at("replicate_from"),
                        format!("`{}` is tagged nostream: it sends no WAL", up.name),
                    );
                }
            }
            if let Some(d) = &n.socket_dir {
                // sun_path is 108 bytes; the socket file name adds ".s.PGSQL.NNNNN".
                if d.as_os_str().len() > 90 {
                    errs.push(
                        at("socket_dir"),
                        format!(
                            "`{}` is too long for a unix socket path (max 90 bytes)",
                            d.display()
                        ),
                    );
                }
            }
        }
    }
}

impl PghaConfig {
    /// Following `replicate_from` from `start` comes back to `start`.
    fn cascade_loops(&self, start: &str) -> bool {
        let mut at = start;
        for _ in 0..=self.nodes.len() {
            match self.node(at).and_then(|n| n.replicate_from.as_deref()) {
                Some(next) if next == start => return true,
                Some(next) => at = next,
                None => return false,
            }
        }
        true
    }
}

pub(crate) fn is_slot_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENT
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn addr_matches_host(a: &std::net::SocketAddr, host: &str) -> bool {
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip == a.ip())
        || host == "localhost"
}

fn check_role_name(errs: &mut ValidationErrors, path: &str, name: &str) {
    if name.is_empty()
        || name.len() > MAX_IDENT
        || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        errs.push(
            path,
            format!("`{name}` is not a usable role name: expected a letter or `_` first, then letters, digits, `_` (max 63)"),
        );
    }
}

/// Names that go into pgbouncer.ini unquoted: database entries, startup parameter names.
fn check_pooler_name(errs: &mut ValidationErrors, path: &str, name: &str) {
    if name.is_empty()
        || name.len() > MAX_IDENT
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        errs.push(
            path,
            format!("`{name}` is not usable in pgbouncer.ini: expected 1-63 letters, digits, `_`"),
        );
    }
}

fn check_os_user(errs: &mut ValidationErrors, path: &str, user: &str) {
    if user.is_empty() {
        errs.push(path, "must not be empty");
    } else if user == "root" {
        errs.push(
            path,
            "PostgreSQL refuses to run as root: name an unprivileged user such as `postgres`",
        );
    }
}

fn check_secret(errs: &mut ValidationErrors, path: &str, s: Option<&SecretSource>) {
    match s {
        Some(SecretSource::Env { env }) if env.is_empty() => {
            errs.push(path, "env must name an environment variable");
        }
        Some(SecretSource::File { file }) if file.as_os_str().is_empty() => {
            errs.push(path, "file must name a file");
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::load_from_str;

    /// A valid two-node config the tests edit.
    pub(crate) const GOOD: &str = r#"
[cluster]
name = "demo"

[replication]
password = { env = "REPL_PW" }

[[nodes]]
name = "node1"
host = "127.0.0.1"
port = 5432
data_dir = "/var/lib/pgha/node1"

[[nodes]]
name = "node2"
host = "127.0.0.1"
port = 5433
data_dir = "/var/lib/pgha/node2"
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = load_from_str(GOOD, "test").unwrap();
        assert_eq!(c.postgres.os_user, "postgres");
        assert_eq!(c.replication.user, "replicator");
        assert!(c.replication.slots);
        assert_eq!(
            c.nodes[1].log_file().to_str().unwrap(),
            "/var/lib/pgha/node2.log"
        );
    }

    #[test]
    fn monitoring_defaults_and_checks() {
        let c = load_from_str(GOOD, "test").unwrap();
        assert_eq!(c.monitoring.listen.to_string(), "127.0.0.1:9187");
        assert_eq!(c.monitoring.otlp_endpoint, None);
        let bad = GOOD.replace(
            "[[nodes]]\nname = \"node1\"",
            "[monitoring]\ntarget_timeout = \"0s\"\notlp_endpoint = \"grpc://x\"\n\
             [monitoring.alerts]\nconnections_ratio = 1.5\n\n[[nodes]]\nname = \"node1\"",
        );
        let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("monitoring.target_timeout: must be longer"),
            "{err}"
        );
        assert!(
            err.contains("monitoring.otlp_endpoint: `grpc://x`"),
            "{err}"
        );
        assert!(
            err.contains("monitoring.alerts.connections_ratio: 1.5"),
            "{err}"
        );
    }

    #[test]
    fn dcs_tls_and_auth_settings_go_together() {
        let ok = format!(
            "{GOOD}\n[dcs]\netcd = [\"https://127.0.0.1:2379\"]\nca_file = \"/etc/pgha/ca.crt\"\ncert_file = \"/etc/pgha/n.crt\"\nkey_file = \"/etc/pgha/n.key\"\nusername = \"pgha\"\npassword = {{ env = \"PGHA_ETCD_PW\" }}\n"
        );
        assert!(load_from_str(&ok, "ok.toml").is_ok());
        for (from, to, want) in [
            (
                "ca_file = \"/etc/pgha/ca.crt\"\n",
                "",
                "dcs.ca_file: required with https://",
            ),
            (
                "key_file = \"/etc/pgha/n.key\"\n",
                "",
                "dcs.key_file: dcs.cert_file and dcs.key_file go together",
            ),
            (
                "username = \"pgha\"\n",
                "",
                "dcs.username: dcs.username and dcs.password go together",
            ),
            (
                "https://127.0.0.1",
                "http://127.0.0.1",
                "dcs.etcd: TLS files are set but the endpoints are http://",
            ),
        ] {
            let bad = ok.replace(from, to);
            let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn node_tags_are_checked() {
        let ok = GOOD.replace(
            "data_dir = \"/var/lib/pgha/node2\"",
            "data_dir = \"/var/lib/pgha/node2\"\nnoloadbalance = true\ntags = { zone = \"a\" }",
        );
        let cfg = load_from_str(&ok, "ok.toml").unwrap();
        assert!(cfg.nodes[1].noloadbalance);
        assert_eq!(cfg.nodes[1].tags["zone"], "a");
        for (tags, want) in [
            (
                "{ \"a b\" = \"x\" }",
                "nodes[1].tags.a b: a tag name is letters",
            ),
            (
                "{ nofailover = \"true\" }",
                "nodes[1].tags.nofailover: set `nofailover = true`",
            ),
            (
                "{ failover_priority = \"2\" }",
                "nodes[1].tags.failover_priority: set `failover_priority = N`",
            ),
        ] {
            let bad = GOOD.replace(
                "data_dir = \"/var/lib/pgha/node2\"",
                &format!("data_dir = \"/var/lib/pgha/node2\"\ntags = {tags}"),
            );
            let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        // Priorities: Patroni's failover_priority / sync_priority / nosync, typed.
        let node2 = |extra: &str| {
            GOOD.replace(
                "data_dir = \"/var/lib/pgha/node2\"",
                &format!("data_dir = \"/var/lib/pgha/node2\"\n{extra}"),
            )
        };
        let cfg = load_from_str(&node2("failover_priority = 3\nnosync = true"), "ok.toml").unwrap();
        assert_eq!(
            (cfg.nodes[1].failover_rank(), cfg.nodes[1].sync_rank()),
            (3, 0)
        );
        assert_eq!(
            (cfg.nodes[0].failover_rank(), cfg.nodes[0].sync_rank()),
            (1, 1)
        );
        let cfg = load_from_str(&node2("nofailover = true\nsync_priority = 5"), "ok.toml").unwrap();
        assert_eq!(
            (cfg.nodes[1].failover_rank(), cfg.nodes[1].sync_rank()),
            (0, 0)
        );
        for (extra, want) in [
            (
                "nofailover = true\nfailover_priority = 2",
                "nodes[1].failover_priority: 2 conflicts with `nofailover = true`",
            ),
            (
                "nosync = true\nsync_priority = 1",
                "nodes[1].sync_priority: 1 conflicts with `nosync = true`",
            ),
        ] {
            let err = load_from_str(&node2(extra), "bad.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        // nostream (Patroni's tag): replays from the archive only, never synchronous.
        let err = load_from_str(&node2("nostream = true"), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nodes[1].nostream: a replica that never streams replays from the archive: set replication.restore_command"),
            "{err}"
        );
        let with_cmd = node2("nostream = true").replace(
            "password = { env = \"REPL_PW\" }",
            "password = { env = \"REPL_PW\" }\nrestore_command = \"cp /a/%f %p\"",
        );
        let cfg = load_from_str(&with_cmd, "ok.toml").unwrap();
        assert_eq!(
            (cfg.nodes[1].failover_rank(), cfg.nodes[1].sync_rank()),
            (1, 0)
        );
        let cascade = with_cmd.replace(
            "data_dir = \"/var/lib/pgha/node1\"",
            "data_dir = \"/var/lib/pgha/node1\"\nreplicate_from = \"node2\"",
        );
        let err = load_from_str(&cascade, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("nodes[0].replicate_from: `node2` is tagged nostream"),
            "{err}"
        );
        let empty = with_cmd.replace("\"cp /a/%f %p\"", "\" \"");
        let err = load_from_str(&empty, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.restore_command: is empty"),
            "{err}"
        );
    }

    #[test]
    fn cascade_and_standby_cluster_checks() {
        let ok = GOOD.replace(
            "data_dir = \"/var/lib/pgha/node2\"",
            "data_dir = \"/var/lib/pgha/node2\"\nreplicate_from = \"node1\"",
        );
        assert!(load_from_str(&ok, "ok.toml").is_ok());
        let looped = ok.replace(
            "data_dir = \"/var/lib/pgha/node1\"",
            "data_dir = \"/var/lib/pgha/node1\"\nreplicate_from = \"node2\"",
        );
        let err = load_from_str(&looped, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("nodes[0].replicate_from: `node2` leads back"),
            "{err}"
        );
        let unknown = GOOD.replace(
            "data_dir = \"/var/lib/pgha/node2\"",
            "data_dir = \"/var/lib/pgha/node2\"\nreplicate_from = \"node9\"",
        );
        let err = load_from_str(&unknown, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("nodes[1].replicate_from: `node9` is not a node"),
            "{err}"
        );
        let standby = format!(
            "{GOOD}\n[standby_cluster]\nprimary_hosts = [\"10.0.0.1\"]\nprimary_slot_name = \"Site-B\"\n"
        )
        .replace("[[nodes]]\nname = \"node1\"", "[replication.x]\n[[nodes]]\nname = \"node1\"")
        .replace("[replication.x]\n", "");
        let err = load_from_str(&standby, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("standby_cluster.primary_hosts: [\"10.0.0.1\"]: expected `host:port`"),
            "{err}"
        );
        assert!(
            err.contains("standby_cluster.primary_slot_name: `Site-B`"),
            "{err}"
        );
        let permanent = GOOD.replace(
            "password = { env = \"REPL_PW\" }",
            "password = { env = \"REPL_PW\" }\npermanent_slots = [\"node1\", \"site_b\"]",
        );
        let err = load_from_str(&permanent, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replication.permanent_slots[0]: `node1` is a node's own slot"),
            "{err}"
        );
        assert!(!err.contains("permanent_slots[1]"), "{err}");
        let ignore = GOOD.replace(
            "password = { env = \"REPL_PW\" }",
            "password = { env = \"REPL_PW\" }\nignore_slots = [{ type = \"logical\", plugin = \"pgoutput\" }, {}, { name = \"node2\" }, { type = \"other\" }]",
        );
        let err = load_from_str(&ignore, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.ignore_slots): unknown variant `other`, expected `physical` or `logical`"),
            "{err}"
        );
        let ignore = ignore.replace(", { type = \"other\" }", "");
        let err = load_from_str(&ignore, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.ignore_slots[1]: gives no field: it would match every slot"),
            "{err}"
        );
        assert!(
            err.contains("replication.ignore_slots[2].name: `node2` is a node's own slot"),
            "{err}"
        );
        assert!(!err.contains("ignore_slots[0]"), "{err}");
        let slots_off = GOOD.replace(
            "password = { env = \"REPL_PW\" }",
            "password = { env = \"REPL_PW\" }\nslots = false\npermanent_slots = [\"site_b\"]",
        );
        let err = load_from_str(&slots_off, "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replication.permanent_slots: needs replication.slots = true"),
            "{err}"
        );
        let own = format!("{GOOD}\n[standby_cluster]\nprimary_hosts = [\"127.0.0.1:5433\"]\n");
        let err = load_from_str(&own, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("127.0.0.1:5433 is one of this cluster's own nodes"),
            "{err}"
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let bad = GOOD
            .replace("port = 5433", "port = 5432")
            .replace("name = \"node2\"", "name = \"Node-2\"")
            .replace(
                "name = \"demo\"",
                "name = \"demo\"\n[postgres]\nos_user = \"root\"",
            );
        let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("nodes[1].port: 5432 is used by nodes[0]"),
            "{err}"
        );
        assert!(err.contains("nodes[1].name: `Node-2`"), "{err}");
        assert!(
            err.contains("postgres.os_user: PostgreSQL refuses to run as root"),
            "{err}"
        );
        assert!(err.starts_with("bad.toml"), "{err}");
    }

    #[test]
    fn unknown_field_names_line_and_key() {
        let bad = GOOD.replace("port = 5433", "prot = 5433");
        let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("line 17, column 1 (nodes[1].prot): unknown field `prot`"),
            "{err}"
        );
    }

    #[test]
    fn inline_secret_is_refused() {
        let bad = GOOD.replace("{ env = \"REPL_PW\" }", "\"hunter2\"");
        let err = load_from_str(&bad, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.password") || err.contains("password"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "secret echoed in error: {err}");
    }

    #[test]
    fn a_non_loopback_agent_api_needs_a_token_by_default() {
        let open = GOOD.replace(
            "data_dir = \"/var/lib/pgha/node2\"",
            "data_dir = \"/var/lib/pgha/node2\"\nagent_address = \"10.0.0.12:8008\"",
        );
        let err = load_from_str(&open, "test").unwrap_err().to_string();
        assert!(
            err.contains("failover.api_token: required: nodes[1].agent_address (10.0.0.12:8008) is not a loopback address"),
            "{err}"
        );
        load_from_str(
            &format!("{open}\n[failover]\napi_token = {{ env = \"T\" }}\n"),
            "test",
        )
        .unwrap();
        load_from_str(
            &format!("{open}\n[failover]\napi_allow_unauthenticated = true\n"),
            "test",
        )
        .unwrap();
        let local = GOOD.replace(
            "data_dir = \"/var/lib/pgha/node2\"",
            "data_dir = \"/var/lib/pgha/node2\"\nagent_address = \"127.0.0.1:8008\"",
        );
        load_from_str(&local, "test").unwrap();
    }

    #[test]
    fn unsafe_failover_timings_are_rejected_naming_the_fields() {
        let bad = format!(
            "{GOOD}\n[dcs]\netcd = [\"127.0.0.1:2379\"]\nrequest_timeout = \"5s\"\n[failover]\nttl = \"4s\"\nloop_wait = \"5s\"\n"
        );
        // Tables must precede [[nodes]] in TOML only for readability; serde accepts this order.
        let err = load_from_str(&bad, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("failover.loop_wait: 5s is longer than a quarter of failover.ttl (4s)"),
            "{err}"
        );
        assert!(err.contains("dcs.request_timeout: 5s"), "{err}");
        assert!(
            err.contains("dcs.etcd[0]: `127.0.0.1:2379` must start with http://"),
            "{err}"
        );
        assert!(err.contains("failover.postgres_restart_timeout"), "{err}");
    }

    #[test]
    fn pooling_defaults_and_errors() {
        let with = format!("{GOOD}\n[pooling]\ndatabases = [\"app\"]\nusers = [\"app\"]\n");
        let c = load_from_str(&with, "p.toml").unwrap();
        let p = c.pooling.unwrap();
        assert_eq!(p.pool_mode, crate::PoolMode::Transaction);
        assert_eq!(p.listen_port, 6432);
        assert_eq!(p.poll_interval, std::time::Duration::from_millis(500));

        let bad = format!(
            "{GOOD}\n[pooling]\nlisten_port = 5433\ndatabases = [\"app\", \"app\", \"pgbouncer\"]\n\
             admin_users = [\"ops\"]\ndefault_pool_size = 0\npool_mode = \"transaction\"\n"
        )
        .replace(
            "host = \"127.0.0.1\"\nport = 5433",
            "host = \"127.0.0.1\"\nport = 5433",
        );
        let err = load_from_str(&bad, "p.toml").unwrap_err().to_string();
        for want in [
            "pooling.listen_port: 5433 is node `node2`'s PostgreSQL port",
            "pooling.databases[1]: `app` is listed twice",
            "pooling.databases[2]: `pgbouncer` is PgBouncer's admin console",
            "pooling.admin_users: must include postgres.superuser `postgres`",
            "pooling.default_pool_size: 0",
        ] {
            assert!(err.contains(want), "missing `{want}` in {err}");
        }
        let bad_mode = format!("{GOOD}\n[pooling]\npool_mode = \"sometimes\"\n");
        let err = load_from_str(&bad_mode, "p.toml").unwrap_err().to_string();
        assert!(err.contains("pool_mode"), "{err}");
    }

    #[test]
    fn sync_needs_replicas() {
        let one = r#"
[cluster]
name = "x"
[replication]
mode = "sync"
[[nodes]]
name = "a"
host = "127.0.0.1"
data_dir = "/d/a"
"#;
        let err = load_from_str(one, "one.toml").unwrap_err().to_string();
        assert!(
            err.contains("replication.mode: sync and quorum need at least one replica"),
            "{err}"
        );
    }
}
