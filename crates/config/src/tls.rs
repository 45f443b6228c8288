//! `[tls]`: TLS on every connection: PostgreSQL clients and replication (verify-full against
//! the cluster's CA), PgBouncer on both sides, and the agents' HTTP API.
//!
//! Files live in one directory (`pgha tls init` creates them): `ca.crt` (and `ca.key`, needed
//! only to issue more certificates), and per node `<node>.crt` / `<node>.key` whose subject
//! alternative names cover the node's `host`. Point `ca_file` and a node's `tls_cert_file` /
//! `tls_key_file` elsewhere to use certificates issued by your own CA.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::NodeConfig;

/// Names of the copies in a node's `tls_install_dir` (owned by the server's OS user): its
/// certificate, its key, and the CA the WAL receiver and the server tools verify with.
pub const TLS_INSTALLED_CERT: &str = "server.crt";
pub const TLS_INSTALLED_KEY: &str = "server.key";
pub const TLS_INSTALLED_CA: &str = "root.crt";

/// `[tls]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Directory of the CA and the per-node certificates; relative to the config file.
    pub dir: PathBuf,
    /// CA certificate clients verify servers against; `<dir>/ca.crt` when absent.
    pub ca_file: Option<PathBuf>,
    /// Refuse TCP connections to PostgreSQL that do not use TLS (`hostnossl ... reject`).
    pub required: bool,
    /// The agents' HTTP API serves HTTPS with the node's certificate.
    pub agent_api: bool,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            dir: PathBuf::from("tls"),
            ca_file: None,
            required: true,
            agent_api: true,
        }
    }
}

impl TlsSection {
    /// The CA certificate (PEM) clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file
            .clone()
            .unwrap_or_else(|| self.dir.join("ca.crt"))
    }

    /// The CA's private key (only `pgha tls init` reads it).
    pub fn ca_key_file(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// `node`'s server certificate chain (PEM).
    pub fn cert_file(&self, node: &NodeConfig) -> PathBuf {
        node.tls_cert_file
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}.crt", node.name)))
    }

    /// `node`'s server private key (PEM).
    pub fn key_file(&self, node: &NodeConfig) -> PathBuf {
        node.tls_key_file
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}.key", node.name)))
    }

    /// PgBouncer's certificate (issued by `pgha tls init` when `[pooling]` is configured).
    pub fn pgbouncer_cert_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.crt")
    }

    /// The certificate `pgha tls init` issues for the etcd members named by `https://`
    /// endpoints in `[dcs] etcd` (one for all of them: every member's host is in it).
    pub fn etcd_cert_file(&self) -> PathBuf {
        self.dir.join("etcd.crt")
    }

    /// The etcd members' private key.
    pub fn etcd_key_file(&self) -> PathBuf {
        self.dir.join("etcd.key")
    }

    /// PgBouncer's private key.
    pub fn pgbouncer_key_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.key")
    }

    pub(crate) fn resolve(&mut self, base: &Path) {
        if self.dir.is_relative() {
            self.dir = base.join(&self.dir);
        }
        if let Some(p) = self.ca_file.as_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}
