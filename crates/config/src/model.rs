//! The typed model of `pgha.toml`. Each section is its own struct so later sections slot in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BackupSection, ByteSize, IpNet, SecretSource};

/// The whole cluster description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PghaConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub replication: ReplicationSection,
    /// The PostgreSQL nodes; order is only the display order, roles are discovered live.
    pub nodes: Vec<NodeConfig>,
    /// Base backups, WAL archive, retention, schedule (`pgha-backup`).
    #[serde(default)]
    pub backup: Option<BackupSection>,
}

/// `[cluster]`: identity of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name: shown in process titles and used as the DCS namespace by later sections.
    pub name: String,
}

/// `[postgres]`: how to run and reach every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSection {
    /// Directory of the server binaries; found automatically when absent
    /// (`pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`).
    pub bin_dir: Option<PathBuf>,
    /// OS user that owns the data dirs and runs the servers (PostgreSQL refuses root).
    pub os_user: String,
    /// Database superuser our tools connect as.
    pub superuser: String,
    /// The superuser's password; required for TCP connections (scram-sha-256).
    pub superuser_password: Option<SecretSource>,
    /// Database to connect to for control and status queries.
    pub database: String,
    /// Timeout for one connection attempt from our tools.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra server settings rendered into every node's pgha.conf (e.g. `shared_buffers = "256MB"`).
    pub parameters: BTreeMap<String, String>,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            bin_dir: None,
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            superuser_password: None,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(5),
            parameters: BTreeMap::new(),
        }
    }
}

/// Asynchronous or synchronous replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Commits return once local; a failover may lose the last transactions.
    #[default]
    Async,
    /// Commits wait for `sync_standbys` standbys (synchronous_standby_names = ANY n (...)).
    Sync,
}

impl std::fmt::Display for ReplicationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicationMode::Async => "async",
            ReplicationMode::Sync => "sync",
        })
    }
}

/// `[replication]`: streaming replication between the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    pub mode: ReplicationMode,
    /// Number of standbys a commit waits for in sync mode.
    pub sync_standbys: u32,
    /// Role the replicas connect as (created with REPLICATION LOGIN).
    pub user: String,
    /// The replication role's password; required.
    pub password: Option<SecretSource>,
    /// One physical replication slot per replica, so the primary keeps the WAL it needs.
    pub slots: bool,
    /// Networks allowed to connect (pg_hba.conf `host` entries, scram-sha-256 only).
    pub allowed_networks: Vec<IpNet>,
    pub max_wal_senders: u32,
    pub max_replication_slots: u32,
    /// WAL kept for replicas without a slot (wal_keep_size).
    pub wal_keep_size: ByteSize,
    pub hot_standby_feedback: bool,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            mode: ReplicationMode::Async,
            sync_standbys: 1,
            user: "replicator".into(),
            password: None,
            slots: true,
            allowed_networks: vec![IpNet {
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                prefix: 32,
            }],
            max_wal_senders: 10,
            max_replication_slots: 10,
            wal_keep_size: ByteSize(512 << 20),
            hot_standby_feedback: true,
        }
    }
}

/// `[[nodes]]`: one PostgreSQL instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name: also the replica's application_name and its slot name, so `[a-z0-9_]`.
    pub name: String,
    /// Address others reach this node at (also listen_addresses).
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub data_dir: PathBuf,
    /// Overrides `postgres.os_user` for this node.
    #[serde(default)]
    pub os_user: Option<String>,
    /// Address of this node's pgha agent API.
    #[serde(default)]
    pub agent_address: Option<SocketAddr>,
    /// Directory for the server log and the replication passfile; default: the data dir's parent.
    #[serde(default)]
    pub run_dir: Option<PathBuf>,
    /// unix_socket_directories; PostgreSQL's compiled-in default when absent.
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
}

fn default_port() -> u16 {
    5432
}

impl PghaConfig {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The OS user that runs `node`.
    pub fn os_user_of<'a>(&'a self, node: &'a NodeConfig) -> &'a str {
        node.os_user.as_deref().unwrap_or(&self.postgres.os_user)
    }
}

impl NodeConfig {
    /// Directory holding this node's log and passfile.
    pub fn run_dir(&self) -> PathBuf {
        match &self.run_dir {
            Some(d) => d.clone(),
            None => self
                .data_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
        }
    }

    /// The server log pg_ctl writes to (kept outside the data dir so backups do not copy it).
    pub fn log_file(&self) -> PathBuf {
        self.run_dir().join(format!("{}.log", self.name))
    }

    /// The passfile the server's WAL receiver and our child tools use for the replication role.
    pub fn passfile(&self) -> PathBuf {
        self.run_dir().join(format!("{}.pgpass", self.name))
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
