//! pgbouncer.ini and userlist.txt as text: a pure function of the config, the topology and the
//! users' secrets.
//!
//! PgBouncer 1.18 (Debian 12) takes a comma-separated host list in `host=` and rotates new
//! server connections over it, but only with one `port=` for all hosts (a per-host port list is
//! not in any release yet) and without skipping hosts that are down. So the read-only entry
//! lists every replica that answered when they share a port (the follower drops a replica that
//! stops answering); when their ports differ (several nodes on one host, as in the local
//! cluster) it points at the first replica that answered.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pgha_config::{PghaConfig, PoolingSection};

use crate::{Backend, PoolingError, Result, Topology, UserSecret};

/// The two files, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedConfig {
    pub ini: String,
    /// Holds secrets: written 0600; never logged.
    pub userlist: String,
    /// With `[tls]`: the files the ini names, copied for PgBouncer's OS user at install.
    pub tls: Option<TlsFiles>,
}

/// Where PgBouncer's certificate, key and CA come from (`[tls]`) and go (beside the ini).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// (source, destination, mode)
    pub copies: Vec<(PathBuf, PathBuf, u32)>,
}

/// Directory of PgBouncer's TLS files: `pgbouncer-tls` beside pgbouncer.ini.
pub fn tls_dir(pool: &PoolingSection) -> PathBuf {
    pool.ini_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("pgbouncer-tls")
}

fn tls_files(config: &PghaConfig, pool: &PoolingSection) -> Option<TlsFiles> {
    let tls = config.tls.as_ref()?;
    let dir = tls_dir(pool);
    Some(TlsFiles {
        copies: vec![
            (tls.ca_file(), dir.join("ca.crt"), 0o644),
            (tls.pgbouncer_cert_file(), dir.join("server.crt"), 0o644),
            (tls.pgbouncer_key_file(), dir.join("server.key"), 0o600),
        ],
    })
}

impl RenderedConfig {
    pub fn new(config: &PghaConfig, topology: &Topology, users: &[UserSecret]) -> Result<Self> {
        Ok(RenderedConfig {
            ini: render_ini(config, topology)?,
            userlist: render_userlist(users),
            tls: tls_files(config, crate::section(config)?),
        })
    }
}

fn check_host(b: &Backend) -> Result<()> {
    if b.host.is_empty()
        || b.host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, ',' | ';' | '\'' | '"' | '=' | '#'))
    {
        return Err(PoolingError::BadHost {
            node: b.node.clone(),
            host: b.host.clone(),
        });
    }
    Ok(())
}

/// `host=... port=...` for the read-only entries, and a comment saying what was chosen.
fn read_only_target(pool: &PoolingSection, t: &Topology) -> (Option<String>, String) {
    let Some(first) = t.replicas.first() else {
        return if pool.read_only_fallback_to_primary {
            (
                Some(format!("host={} port={}", t.primary.host, t.primary.port)),
                format!(
                    "no replica answered: read-only entries go to the primary {}",
                    t.primary.node
                ),
            )
        } else {
            (
                None,
                "no replica answered and read_only_fallback_to_primary = false: no read-only entries"
                    .into(),
            )
        };
    };
    let names = |bs: &[&Backend]| {
        bs.iter()
            .map(|b| b.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if t.replicas.iter().all(|r| r.port == first.port) {
        let hosts: Vec<&str> = t.replicas.iter().map(|r| r.host.as_str()).collect();
        let all: Vec<&Backend> = t.replicas.iter().collect();
        (
            Some(format!("host={} port={}", hosts.join(","), first.port)),
            format!("read-only: round-robin over {}", names(&all)),
        )
    } else {
        (
            Some(format!("host={} port={}", first.host, first.port)),
            format!(
                "read-only: {} only; the replicas listen on different ports and PgBouncer 1.18 \
                 takes one port per entry",
                first.node
            ),
        )
    }
}

/// pgbouncer.ini for `topology`.
pub fn render_ini(config: &PghaConfig, topology: &Topology) -> Result<String> {
    let pool = crate::section(config)?;
    crate::check(pool)?;
    check_host(&topology.primary)?;
    for r in &topology.replicas {
        check_host(r)?;
    }
    let (ro, ro_note) = read_only_target(pool, topology);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        ";; pgbouncer.ini of cluster {}, rendered by pgha-pgbouncer from pgha.toml and the live \
         cluster.\n;; Do not edit: it is rewritten whenever the primary or the set of replicas changes.",
        config.cluster.name
    );
    let _ = writeln!(w, ";; {}", topology.describe());
    let _ = writeln!(w, ";; {ro_note}\n");
    let _ = writeln!(w, "[databases]");
    for db in &pool.databases {
        let _ = writeln!(
            w,
            "{db} = host={} port={} dbname={db}",
            topology.primary.host, topology.primary.port
        );
        if let Some(target) = &ro {
            let _ = writeln!(w, "{db}{} = {target} dbname={db}", pool.read_only_suffix);
        }
    }
    let _ = writeln!(w, "\n[pgbouncer]");
    let kv = |w: &mut String, k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(w, "{k} = {v}");
    };
    kv(w, "listen_addr", &pool.listen_addr);
    kv(w, "listen_port", &pool.listen_port);
    kv(
        w,
        "unix_socket_dir",
        &pool
            .unix_socket_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
    kv(w, "auth_type", &"scram-sha-256");
    kv(w, "auth_file", &pool.userlist_path.display());
    kv(w, "admin_users", &pool.admin_users.join(", "));
    kv(w, "stats_users", &pool.stats_users.join(", "));
    kv(w, "pool_mode", &pool.pool_mode);
    kv(w, "max_client_conn", &pool.max_client_conn);
    kv(w, "default_pool_size", &pool.default_pool_size);
    kv(w, "reserve_pool_size", &pool.reserve_pool_size);
    kv(
        w,
        "reserve_pool_timeout",
        &seconds(pool.reserve_pool_timeout),
    );
    // Spread clients over server connections (and so over the read-only host list) instead of
    // reusing the most recent one.
    kv(w, "server_round_robin", &1);
    kv(w, "server_check_query", &pool.server_check_query);
    kv(
        w,
        "ignore_startup_parameters",
        &pool.ignore_startup_parameters.join(", "),
    );
    // Moving a database to another host closes its idle server connections at once.
    kv(w, "server_fast_close", &1);
    kv(w, "server_connect_timeout", &5);
    kv(w, "server_login_retry", &seconds(pool.server_login_retry));
    if let Some(n) = pool.max_prepared_statements {
        // PgBouncer >= 1.21: named prepared statements survive transaction pooling.
        kv(w, "max_prepared_statements", &n);
    }
    // Roles not in userlist.txt: PgBouncer looks their secret up as auth_user.
    for (k, v) in [
        ("auth_user", &pool.auth_user),
        ("auth_query", &pool.auth_query),
        ("auth_dbname", &pool.auth_dbname),
    ] {
        if let Some(v) = v {
            kv(w, k, v);
        }
    }
    if let Some(tls) = &config.tls {
        // Clients: TLS (required when [tls].required); servers: verify-full against the CA.
        let dir = tls_dir(pool);
        let mode = if tls.required { "require" } else { "prefer" };
        kv(w, "client_tls_sslmode", &mode);
        kv(w, "client_tls_cert_file", &dir.join("server.crt").display());
        kv(w, "client_tls_key_file", &dir.join("server.key").display());
        kv(w, "client_tls_ca_file", &dir.join("ca.crt").display());
        kv(w, "server_tls_sslmode", &"verify-full");
        kv(w, "server_tls_ca_file", &dir.join("ca.crt").display());
    }
    if let Some(p) = &pool.pid_file {
        kv(w, "pidfile", &p.display());
    }
    if let Some(p) = &pool.log_file {
        kv(w, "logfile", &p.display());
    }
    if !pool.extra.is_empty() {
        let _ = writeln!(w, ";; [pooling.extra]");
        for (k, v) in &pool.extra {
            kv(w, k, v);
        }
    }
    Ok(s)
}

fn seconds(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}

/// userlist.txt: `"user" "SCRAM-SHA-256$..."`, one line per role (auth_user's line holds its
/// password: see [`crate::fetch_scram_secrets`]).
pub fn render_userlist(users: &[UserSecret]) -> String {
    let mut s = String::from(
        ";; userlist.txt rendered by pgha-pgbouncer: SCRAM secrets copied from pg_authid \
         (pooling.auth_user: its password).\n",
    );
    for u in users {
        let _ = writeln!(
            s,
            "\"{}\" \"{}\"",
            u.user.replace('"', "\"\""),
            u.scram.expose().replace('"', "\"\"")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pgha_config::{load_from_str, Secret};

    const CONF: &str = r#"
[cluster]
name = "demo"
[replication]
password = { env = "X" }
[pooling]
databases = ["app", "shop"]
users = ["app"]
stats_users = ["mon"]
ini_path = "/etc/pgbouncer/pgbouncer.ini"
userlist_path = "/etc/pgbouncer/userlist.txt"
reserve_pool_timeout = "1500ms"
[[nodes]]
name = "db1"
host = "10.0.0.11"
data_dir = "/d1"
[[nodes]]
name = "db2"
host = "10.0.0.12"
data_dir = "/d2"
[[nodes]]
name = "db3"
host = "10.0.0.13"
data_dir = "/d3"
"#;

    fn b(node: &str, host: &str, port: u16) -> Backend {
        Backend {
            node: node.into(),
            host: host.into(),
            port,
        }
    }

    #[test]
    fn read_write_to_primary_read_only_round_robin() {
        let c = load_from_str(CONF, "t").unwrap();
        let t = Topology {
            primary: b("db2", "10.0.0.12", 5432),
            replicas: vec![b("db1", "10.0.0.11", 5432), b("db3", "10.0.0.13", 5432)],
        };
        let ini = render_ini(&c, &t).unwrap();
        assert!(
            ini.contains("\napp = host=10.0.0.12 port=5432 dbname=app\n"),
            "{ini}"
        );
        assert!(
            ini.contains("\napp_ro = host=10.0.0.11,10.0.0.13 port=5432 dbname=app\n"),
            "{ini}"
        );
        assert!(ini.contains("\nshop_ro = host=10.0.0.11,10.0.0.13 port=5432 dbname=shop\n"));
        for line in [
            "pool_mode = transaction",
            "auth_type = scram-sha-256",
            "auth_file = /etc/pgbouncer/userlist.txt",
            "admin_users = postgres",
            "stats_users = mon",
            "server_check_query = select 1",
            "ignore_startup_parameters = extra_float_digits",
            "reserve_pool_timeout = 1.500",
            "listen_port = 6432",
        ] {
            assert!(
                ini.contains(&format!("\n{line}\n")),
                "no `{line}` in\n{ini}"
            );
        }
    }

    #[test]
    fn different_ports_pick_one_replica_and_no_replica_falls_back() {
        let c = load_from_str(CONF, "t").unwrap();
        let t = Topology {
            primary: b("db1", "127.0.0.1", 5001),
            replicas: vec![b("db2", "127.0.0.1", 5002), b("db3", "127.0.0.1", 5003)],
        };
        let ini = render_ini(&c, &t).unwrap();
        assert!(
            ini.contains("\napp_ro = host=127.0.0.1 port=5002 dbname=app\n"),
            "{ini}"
        );
        let alone = Topology {
            primary: t.primary.clone(),
            replicas: vec![],
        };
        let ini = render_ini(&c, &alone).unwrap();
        assert!(
            ini.contains("\napp_ro = host=127.0.0.1 port=5001 dbname=app\n"),
            "{ini}"
        );
        let mut strict = c.clone();
        strict
            .pooling
            .as_mut()
            .unwrap()
            .read_only_fallback_to_primary = false;
        let ini = render_ini(&strict, &alone).unwrap();
        assert!(!ini.contains("app_ro ="), "{ini}");
    }

    #[test]
    fn prepared_statements_auth_query_and_extra_keys() {
        let t = Topology {
            primary: b("db2", "10.0.0.12", 5432),
            replicas: vec![],
        };
        // Nothing new by default: PgBouncer 1.18 refuses max_prepared_statements and auth_dbname.
        let plain = render_ini(&load_from_str(CONF, "t").unwrap(), &t).unwrap();
        for key in [
            "max_prepared_statements",
            "auth_user",
            "auth_query",
            "auth_dbname",
            ";; [pooling.extra]",
        ] {
            assert!(!plain.contains(key), "{key} in\n{plain}");
        }
        let conf = CONF.replace(
            "reserve_pool_timeout = \"1500ms\"\n",
            "reserve_pool_timeout = \"1500ms\"\nmax_prepared_statements = 200\n\
             auth_user = \"pgbouncer_auth\"\nauth_password = { env = \"X\" }\n\
             auth_query = \"SELECT uname, phash FROM pgbouncer.user_lookup($1)\"\n\
             auth_dbname = \"postgres\"\n\
             [pooling.extra]\nquery_wait_timeout = 60\ntcp_keepalive = false\n\
             server_reset_query = \"DISCARD ALL\"\n",
        );
        let c = load_from_str(&conf, "t").unwrap();
        let ini = render_ini(&c, &t).unwrap();
        for line in [
            "max_prepared_statements = 200",
            "auth_user = pgbouncer_auth",
            "auth_query = SELECT uname, phash FROM pgbouncer.user_lookup($1)",
            "auth_dbname = postgres",
            "query_wait_timeout = 60",
            "tcp_keepalive = 0",
            "server_reset_query = DISCARD ALL",
        ] {
            assert!(
                ini.contains(&format!("\n{line}\n")),
                "no `{line}` in\n{ini}"
            );
        }
        assert!(
            crate::userlist_roles(c.pooling.as_ref().unwrap()).contains(&"pgbouncer_auth".into())
        );
        // Every key pgha writes is one [pooling.extra] may not set.
        let mut tls = c.clone();
        tls.pooling.as_mut().unwrap().pid_file = Some("/run/p.pid".into());
        tls.pooling.as_mut().unwrap().log_file = Some("/var/log/p.log".into());
        tls.tls = Some(toml_tls());
        let ini = render_ini(&tls, &t).unwrap();
        let section = ini.split("[pgbouncer]").nth(1).unwrap();
        let section = section.split(";; [pooling.extra]").next().unwrap();
        for line in section.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(
                crate::RENDERED_KEYS.contains(&key),
                "`{key}` missing from RENDERED_KEYS"
            );
        }
        // A refused key never renders.
        let bad = conf.replace("query_wait_timeout = 60", "pool_mode = \"session\"");
        let e = render_ini(&load_from_str(&bad, "t").unwrap(), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pooling.extra.pool_mode: pgha renders `pool_mode` itself"),
            "{e}"
        );
    }

    fn toml_tls() -> pgha_config::TlsSection {
        let text = format!("{CONF}\n[tls]\ndir = \"/etc/pgha/tls\"\n");
        load_from_str(&text, "t").unwrap().tls.unwrap()
    }

    #[test]
    fn bad_host_is_refused_and_userlist_quotes() {
        let c = load_from_str(CONF, "t").unwrap();
        let t = Topology {
            primary: b("db1", "evil host", 1),
            replicas: vec![],
        };
        let e = render_ini(&c, &t).unwrap_err().to_string();
        assert!(e.contains("node `db1`'s host `evil host`"), "{e}");
        let u = render_userlist(&[UserSecret {
            user: "a\"b".into(),
            scram: Secret::new("SCRAM-SHA-256$4096:c2FsdA==$x:y"),
        }]);
        assert!(
            u.ends_with("\"a\"\"b\" \"SCRAM-SHA-256$4096:c2FsdA==$x:y\"\n"),
            "{u}"
        );
    }
}
