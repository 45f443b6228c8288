//! Rendering pgha.conf, pgha-node.conf and pg_hba.conf from the config. Pure functions: the
//! same input always gives the same text, so `pgha render` shows exactly what is applied.

use std::fmt::Write;

use pgha_config::{NodeConfig, PghaConfig, StandbyClusterSection};
use pgha_postgres::sql::{conninfo_value, quote_literal};

use crate::mode::synchronous_standby_names;
use crate::NodeRole;

/// The three files of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedNode {
    pub cluster_conf: String,
    pub node_conf: String,
    pub hba: String,
}

impl RenderedNode {
    /// Renders `node`; `upstream` is the node it streams from (None for the primary).
    pub fn render(config: &PghaConfig, node: &NodeConfig, upstream: Option<&NodeConfig>) -> Self {
        RenderedNode {
            cluster_conf: render_cluster_conf(config),
            node_conf: render_node_conf(config, node, upstream),
            hba: render_hba(config),
        }
    }

    /// Renders `node` for `role`.
    pub fn render_role(config: &PghaConfig, node: &NodeConfig, role: NodeRole<'_>) -> Self {
        RenderedNode {
            cluster_conf: render_cluster_conf(config),
            node_conf: render_node_conf_for(config, node, role),
            hba: render_hba(config),
        }
    }
}

const HEADER: &str =
    "# Managed by pgha from pgha.toml; edits are overwritten. Review with `pgha render`.\n";

/// Settings identical on every node (pgha.conf).
pub fn render_cluster_conf(config: &PghaConfig) -> String {
    render_cluster_conf_keeping(config, &[])
}

/// [`render_cluster_conf`] for a data dir holding the logical slots `on_disk`: while it holds
/// one, `wal_level` stays `logical` (PostgreSQL refuses to start below it with a logical slot,
/// so taking a slot out of `replication.logical_slots` must not leave the node down).
pub fn render_cluster_conf_keeping(config: &PghaConfig, on_disk: &[String]) -> String {
    let r = &config.replication;
    let on = |b: bool| if b { "on" } else { "off" };
    let mut s = String::from(HEADER);
    let _ = writeln!(s, "# cluster {}", config.cluster.name);
    // Permanent logical slots decode WAL (on the leader, and kept on replicas that may lead).
    let level = if !r.logical_slots.is_empty() {
        "logical"
    } else if !on_disk.is_empty() {
        let _ = writeln!(
            s,
            "# logical: the data dir still holds logical slot(s) {} (drop them to lower it)",
            on_disk.join(", ")
        );
        "logical"
    } else {
        "replica"
    };
    let _ = writeln!(s, "wal_level = {level}");
    let _ = writeln!(s, "max_wal_senders = {}", r.max_wal_senders);
    let _ = writeln!(s, "max_replication_slots = {}", r.max_replication_slots);
    let _ = writeln!(
        s,
        "wal_keep_size = '{}MB'",
        r.wal_keep_size.megabytes_ceil()
    );
    let _ = writeln!(s, "hot_standby = on");
    let _ = writeln!(s, "hot_standby_feedback = {}", on(r.hot_standby_feedback));
    // pg_rewind needs hint-bit changes WAL-logged (checksums also do it; both is harmless).
    let _ = writeln!(s, "wal_log_hints = on");
    let _ = writeln!(s, "password_encryption = 'scram-sha-256'");
    // A replica re-points at a new primary after a failover; retry its WAL source every second
    // instead of the default 5 s.
    let _ = writeln!(s, "wal_retrieve_retry_interval = '1s'");
    // A standby replies at least every second, so a standby whose link is cut (packets
    // dropped, no reset: the walsender still says "streaming") is told from an idle one by
    // pg_stat_replication.reply_time; the agent stops counting it as a synchronous candidate.
    let _ = writeln!(s, "wal_receiver_status_interval = '1s'");
    // With agents ([dcs]) the leader alone sets it (ALTER SYSTEM), in an order that keeps
    // every acknowledged commit on a node `/sync` lets win: a rendered value would make
    // PostgreSQL wait for a standby (and acknowledge commits it holds) before `/sync` names
    // it, e.g. right after a runtime switch to sync mode.
    let names = match r.mode {
        m if m.waits() && config.dcs.is_none() => synchronous_standby_names(config),
        _ => String::new(),
    };
    let _ = writeln!(s, "synchronous_standby_names = {}", quote_literal(&names));
    let _ = writeln!(s, "synchronous_commit = on");
    for (k, v) in &config.postgres.parameters {
        let _ = writeln!(s, "{k} = {}", quote_literal(v));
    }
    s
}

/// This node's own settings (pgha-node.conf): addresses, and for a replica its upstream.
pub fn render_node_conf(
    config: &PghaConfig,
    node: &NodeConfig,
    upstream: Option<&NodeConfig>,
) -> String {
    let role = match upstream {
        Some(upstream) => NodeRole::Replica { upstream },
        None => NodeRole::Primary,
    };
    render_node_conf_for(config, node, role)
}

/// pgha-node.conf of `node` in `role`.
pub fn render_node_conf_for(config: &PghaConfig, node: &NodeConfig, role: NodeRole<'_>) -> String {
    let mut s = String::from(HEADER);
    let _ = writeln!(s, "# node {}", node.name);
    let _ = writeln!(s, "port = {}", node.port);
    let _ = writeln!(s, "listen_addresses = {}", quote_literal(&node.host));
    if let Some(dir) = &node.socket_dir {
        let _ = writeln!(
            s,
            "unix_socket_directories = {}",
            quote_literal(&dir.display().to_string())
        );
    }
    let _ = writeln!(
        s,
        "cluster_name = {}",
        quote_literal(&format!("{}-{}", config.cluster.name, node.name))
    );
    let tls_dir = node.tls_install_dir();
    let tls_file = |f: &str| tls_dir.join(f).display().to_string();
    if config.tls.is_some() {
        // Copies owned by the server's OS user (install_tls_files); reloaded by pg_reload_conf,
        // so certificates rotate without a restart.
        let _ = writeln!(s, "ssl = on");
        let _ = writeln!(s, "ssl_cert_file = {}", quote_literal(&tls_file(TLS_CERT)));
        let _ = writeln!(s, "ssl_key_file = {}", quote_literal(&tls_file(TLS_KEY)));
        let _ = writeln!(s, "ssl_min_protocol_version = 'TLSv1.2'");
    }
    let source = match role {
        NodeRole::Primary => None,
        // Replays from the archive only (`restore_command` below), streams from nobody.
        NodeRole::Replica { .. } if node.nostream => None,
        NodeRole::Replica { upstream: up } => Some((
            format!("host={} port={}", conninfo_value(&up.host), up.port),
            node.name.clone(),
            config.replication.slots.then(|| node.name.clone()),
        )),
        // The primary site's nodes see us as `<cluster>-<node>`, never as one of their own
        // node names (their sync standby management matches on application_name).
        NodeRole::StandbyLeader { source } => Some((
            primary_site_endpoint(source),
            format!("{}-{}", config.cluster.name, node.name),
            source.primary_slot_name.clone(),
        )),
    };
    if let Some((endpoint, app, slot)) = source {
        // The password is in the passfile, never in a setting visible through pg_settings.
        let mut conninfo = format!(
            "{endpoint} user={} passfile={} application_name={} connect_timeout=5 keepalives_idle=10 keepalives_interval=5 keepalives_count=3",
            conninfo_value(&config.replication.user),
            conninfo_value(&node.passfile().display().to_string()),
            conninfo_value(&app),
        );
        if config.tls.is_some() {
            conninfo.push_str(&format!(
                " sslmode=verify-full sslrootcert={}",
                conninfo_value(&tls_file(TLS_CA))
            ));
        }
        let _ = writeln!(s, "primary_conninfo = {}", quote_literal(&conninfo));
        let _ = writeln!(
            s,
            "primary_slot_name = {}",
            quote_literal(slot.as_deref().unwrap_or(""))
        );
    } else {
        let _ = writeln!(s, "primary_conninfo = ''");
        let _ = writeln!(s, "primary_slot_name = ''");
    }
    let restore = match role {
        NodeRole::StandbyLeader { source } => source.restore_command.as_deref(),
        NodeRole::Replica { .. } => config.replication.restore_command.as_deref(),
        NodeRole::Primary => None,
    };
    if let Some(cmd) = restore {
        let _ = writeln!(s, "restore_command = {}", quote_literal(cmd));
    }
    s
}

/// libpq `host=… port=…` listing every node of the primary site (`standby_cluster.primary_hosts`),
/// with `target_session_attrs=primary` so the connection lands on the writable one.
pub(crate) fn primary_site_endpoint(source: &StandbyClusterSection) -> String {
    let (hosts, ports): (Vec<_>, Vec<_>) = source
        .hosts_and_ports()
        .unwrap_or_default()
        .into_iter()
        .map(|(h, p)| (h, p.to_string()))
        .unzip();
    format!(
        "host={} port={} target_session_attrs=primary",
        conninfo_value(&hosts.join(",")),
        ports.join(",")
    )
}

/// Names of the files install_tls_files puts in a node's `tls_install_dir`.
pub use pgha_config::{
    TLS_INSTALLED_CA as TLS_CA, TLS_INSTALLED_CERT as TLS_CERT, TLS_INSTALLED_KEY as TLS_KEY,
};

/// pg_hba.conf: peer on the local socket, scram-sha-256 over TCP from the configured networks
/// only; never `trust` or `password` over TCP. With `[tls]`, TCP entries are `hostssl`, and
/// when TLS is required every other TCP connection is rejected first.
pub fn render_hba(config: &PghaConfig) -> String {
    let (tcp, required) = match &config.tls {
        Some(t) => ("hostssl", t.required),
        None => ("host", false),
    };
    let mut s = String::from(HEADER);
    let _ = writeln!(
        s,
        "# TYPE  DATABASE     USER            ADDRESS                 METHOD"
    );
    let _ = writeln!(
        s,
        "local   all          all                                     peer"
    );
    let _ = writeln!(
        s,
        "local   replication  all                                     peer"
    );
    if required {
        // `all` does not match replication connections: reject those too.
        for db in ["all", "replication"] {
            for net in ["0.0.0.0/0", "::/0"] {
                let _ = writeln!(s, "hostnossl {db:<11} all             {net:<23} reject");
            }
        }
    }
    for net in &config.replication.allowed_networks {
        let _ = writeln!(
            s,
            "{tcp:<7} replication  {:<15} {:<23} scram-sha-256",
            config.replication.user,
            net.to_string()
        );
    }
    for net in &config.replication.allowed_networks {
        let _ = writeln!(
            s,
            "{tcp:<7} all          all             {:<23} scram-sha-256",
            net.to_string()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: &str) -> PghaConfig {
        config_with(mode, "")
    }

    fn config_with(mode: &str, extra: &str) -> PghaConfig {
        pgha_config::load_from_str(
            &format!(
                r#"
{extra}
[cluster]
name = "demo"
[replication]
mode = "{mode}"
password = {{ env = "X" }}
allowed_networks = ["127.0.0.1/32", "10.0.0.0/24"]
[[nodes]]
name = "n1"
host = "127.0.0.1"
port = 5432
data_dir = "/d/n1"
[[nodes]]
name = "n2"
host = "127.0.0.1"
port = 5433
data_dir = "/d/n2"
"#
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn a_logical_slot_left_on_disk_keeps_wal_level_logical() {
        let c = config("async");
        let s = render_cluster_conf_keeping(&c, &["cdc".to_string()]);
        assert!(s.contains("wal_level = logical"), "{s}");
        assert!(s.contains("logical slot(s) cdc"), "{s}");
        assert_eq!(
            render_cluster_conf_keeping(&c, &[]),
            render_cluster_conf(&c)
        );
    }

    #[test]
    fn logical_slots_set_wal_level_logical() {
        let mut c = config("async");
        assert!(render_cluster_conf(&c).contains("wal_level = replica"));
        c.replication.logical_slots = vec![pgha_config::LogicalSlotSpec {
            name: "cdc".into(),
            database: "app".into(),
            plugin: "pgoutput".into(),
        }];
        let s = render_cluster_conf(&c);
        assert!(s.contains("wal_level = logical"), "{s}");
        assert!(!s.contains("wal_level = replica"), "{s}");
    }

    #[test]
    fn cluster_conf_has_replication_settings() {
        let s = render_cluster_conf(&config("async"));
        for want in [
            "wal_level = replica",
            "hot_standby = on",
            "wal_log_hints = on",
            "password_encryption = 'scram-sha-256'",
            "wal_keep_size = '512MB'",
            "synchronous_standby_names = ''",
        ] {
            assert!(s.contains(want), "missing {want}:\n{s}");
        }
        let sync = render_cluster_conf(&config("sync"));
        assert!(
            sync.contains(r#"synchronous_standby_names = 'ANY 1 ("n1", "n2")'"#),
            "{sync}"
        ); // With agents the leader sets it itself, after `/sync` names it: never rendered.
        let s = render_cluster_conf(&config_with(
            "sync",
            "[dcs]\netcd = [\"http://127.0.0.1:2379\"]",
        ));
        assert!(s.contains("synchronous_standby_names = ''"), "{s}");
    }

    #[test]
    fn replica_conf_points_at_upstream_without_password() {
        let c = config("async");
        let s = render_node_conf(&c, &c.nodes[1], Some(&c.nodes[0]));
        assert!(s.contains("port = 5433"), "{s}");
        assert!(
            s.contains(
                "host=''127.0.0.1'' port=5432 user=''replicator'' passfile=''/d/n2.pgpass''"
            ),
            "{s}"
        );
        assert!(s.contains("primary_slot_name = 'n2'"), "{s}");
        assert!(!s.contains("password="), "{s}");
    }

    #[test]
    fn a_nostream_replica_replays_from_the_archive_and_the_others_fall_back_to_it() {
        let mut c = config("async");
        c.replication.restore_command = Some("fetch %f %p".into());
        let streaming = render_node_conf(&c, &c.nodes[1], Some(&c.nodes[0]));
        assert!(
            streaming.contains("primary_slot_name = 'n2'"),
            "{streaming}"
        );
        assert!(
            streaming.contains("restore_command = 'fetch %f %p'"),
            "{streaming}"
        );
        let mut n2 = c.nodes[1].clone();
        n2.nostream = true;
        let s = render_node_conf(&c, &n2, Some(&c.nodes[0]));
        assert!(s.contains("primary_conninfo = ''"), "{s}");
        assert!(s.contains("primary_slot_name = ''"), "{s}");
        assert!(s.contains("restore_command = 'fetch %f %p'"), "{s}");
        // A primary restores nothing.
        let p = render_node_conf(&c, &c.nodes[0], None);
        assert!(!p.contains("restore_command"), "{p}");
    }

    #[test]
    fn standby_leader_streams_from_the_writable_primary_site_node() {
        let c = config("async");
        let source = pgha_config::StandbyClusterSection {
            primary_hosts: vec!["10.1.0.1:5432".into(), "10.1.0.2:5433".into()],
            primary_slot_name: Some("site_b".into()),
            restore_command: Some("fetch %f %p".into()),
        };
        let s = render_node_conf_for(&c, &c.nodes[0], NodeRole::StandbyLeader { source: &source });
        assert!(
            s.contains("host=''10.1.0.1,10.1.0.2'' port=5432,5433"),
            "{s}"
        );
        assert!(s.contains("application_name=''demo-n1''"), "{s}");
        assert!(s.contains("target_session_attrs=primary"), "{s}");
        assert!(s.contains("primary_slot_name = 'site_b'"), "{s}");
        assert!(s.contains("restore_command = 'fetch %f %p'"), "{s}");
        let replica = render_node_conf(&c, &c.nodes[1], Some(&c.nodes[0]));
        assert!(!replica.contains("restore_command"), "{replica}");
    }

    #[test]
    fn tls_renders_ssl_hostssl_and_verify_full_replication() {
        let mut c = config("async");
        c.tls = Some(pgha_config::TlsSection::default());
        let hba = render_hba(&c);
        assert!(
            hba.contains("hostnossl all         all             0.0.0.0/0"),
            "{hba}"
        );
        assert!(
            hba.contains("hostnossl replication all             ::/0"),
            "{hba}"
        );
        assert!(hba.contains("hostssl replication  replicator"), "{hba}");
        assert!(!hba.lines().any(|l| l.starts_with("host ")), "{hba}");
        let node = render_node_conf(&c, &c.nodes[1], Some(&c.nodes[0]));
        assert!(node.contains("ssl = on"), "{node}");
        assert!(node.contains("sslmode=verify-full sslrootcert="), "{node}");
        c.tls.as_mut().unwrap().required = false;
        assert!(!render_hba(&c).contains("reject"));
    }

    #[test]
    fn hba_is_scram_only_over_tcp() {
        let s = render_hba(&config("async"));
        assert!(
            s.contains("host    replication  replicator      10.0.0.0/24"),
            "{s}"
        );
        for line in s.lines().filter(|l| l.starts_with("host")) {
            assert!(line.ends_with("scram-sha-256"), "{line}");
        }
        assert!(!s.contains("trust"));
    }
}
