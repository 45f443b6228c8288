//! `validate()`: every problem at once, each with its field path.

use std::collections::HashMap;

use crate::{PghaConfig, ReplicationMode, SecretSource, ValidationErrors};

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
        for key in pg.parameters.keys() {
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
        if r.mode == ReplicationMode::Sync {
            if replicas == 0 {
                errs.push("replication.mode", "sync needs at least one replica in nodes; with one node every commit would hang");
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
mod tests {
    use crate::load_from_str;

    const GOOD: &str = r#"
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
            err.contains("replication.mode: sync needs at least one replica"),
            "{err}"
        );
    }
}
