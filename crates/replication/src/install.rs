//! Putting rendered settings into a data dir and making postgresql.conf include them.

use pgha_config::{NodeConfig, PghaConfig, StandbyClusterSection};
use pgha_postgres::{files, LocalInstance, OsUser, PgError};

use crate::settings::{TLS_CA, TLS_CERT, TLS_KEY};
use crate::{write_passfile, RenderedNode, ReplicationError, Result};

/// File (in the data dir) with the settings shared by every node.
pub const CLUSTER_CONF: &str = "pgha.conf";
/// File (in the data dir) with this node's own settings.
pub const NODE_CONF: &str = "pgha-node.conf";
/// Line that marks postgresql.conf as already including our files.
pub const INCLUDE_MARKER: &str = "# pgha includes (keep these last)";

/// What a node runs as, for rendering its settings.
#[derive(Debug, Clone, Copy)]
pub enum NodeRole<'a> {
    Primary,
    /// A standby streaming from `upstream`.
    Replica {
        upstream: &'a NodeConfig,
    },
    /// The leader of a standby cluster: a standby streaming from the primary site.
    StandbyLeader {
        source: &'a StandbyClusterSection,
    },
}

/// Writes pgha.conf, pgha-node.conf, pg_hba.conf (and standby.signal for a replica) into the
/// node's data dir, the replication passfile beside it, and the include lines into
/// postgresql.conf. Takes effect at the next start, or at reload for reloadable settings.
pub fn install_settings(
    config: &PghaConfig,
    node: &NodeConfig,
    role: NodeRole<'_>,
    instance: &LocalInstance,
) -> Result<()> {
    let rendered = RenderedNode::render_role(config, node, role);
    // pgha.conf as for this data dir: wal_level stays logical while it holds a logical slot.
    let on_disk = crate::logical::logical_slots_on_disk(instance.data_dir());
    let cluster_conf = crate::settings::render_cluster_conf_keeping(config, &on_disk);
    instance.write_data_file(CLUSTER_CONF, &cluster_conf)?;
    instance.write_data_file(NODE_CONF, &rendered.node_conf)?;
    instance.write_data_file("pg_hba.conf", &rendered.hba)?;
    ensure_includes(instance)?;
    let signal = instance.data_dir().join("standby.signal");
    match role {
        NodeRole::Replica { .. } | NodeRole::StandbyLeader { .. } => {
            instance.write_data_file("standby.signal", "")?
        }
        NodeRole::Primary => {
            if signal.exists() {
                std::fs::remove_file(&signal).map_err(|source| PgError::Io {
                    action: "remove",
                    path: signal.clone(),
                    source,
                })?;
            }
        }
    }
    if config.replication.password.is_some() {
        write_passfile(config, node, instance.run_as())?;
    }
    install_tls_files(config, node, instance.run_as())?;
    Ok(())
}

/// With `[tls]`: copies the node's certificate, key and the CA into its `tls_install_dir`,
/// owned by the server's OS user (PostgreSQL refuses a key it does not own, and the WAL
/// receiver and the server tools read the CA as that user). Re-run and reload to rotate.
pub fn install_tls_files(
    config: &PghaConfig,
    node: &NodeConfig,
    owner: Option<&OsUser>,
) -> Result<()> {
    let Some(tls) = &config.tls else {
        return Ok(());
    };
    let dir = node.tls_install_dir();
    std::fs::create_dir_all(&dir).map_err(|source| PgError::Io {
        action: "create directory",
        path: dir.clone(),
        source,
    })?;
    for (what, from, to, mode) in [
        ("certificate", tls.cert_file(node), TLS_CERT, 0o644),
        ("private key", tls.key_file(node), TLS_KEY, 0o600),
        ("CA certificate", tls.ca_file(), TLS_CA, 0o644),
    ] {
        let bytes = std::fs::read(&from).map_err(|source| ReplicationError::TlsFile {
            what,
            path: from.clone(),
            source,
        })?;
        files::write_atomic(&dir.join(to), &bytes, mode, owner)?;
    }
    Ok(())
}

fn ensure_includes(instance: &LocalInstance) -> Result<()> {
    let path = instance.data_dir().join("postgresql.conf");
    let text = std::fs::read_to_string(&path).map_err(|source| PgError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    if text.contains(INCLUDE_MARKER) {
        return Ok(());
    }
    let mut text = text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n{INCLUDE_MARKER}\ninclude_if_exists = '{CLUSTER_CONF}'\ninclude_if_exists = '{NODE_CONF}'\n"
    ));
    instance.write_data_file("postgresql.conf", &text)?;
    Ok(())
}
