//! Creating, starting, stopping and inspecting a local cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgha_config::{ConfigSource, NodeConfig, PghaConfig, ReplicationMode};
use pgha_postgres::{LocalInstance, PgControl, StopMode};
use pgha_replication::{bootstrap_replica, ClusterStatus};

use crate::secrets::ensure_secret_file;
use crate::{free_port, LocalClusterError, PortReservation, Result};

/// The cluster's config file inside the state dir.
pub const CONFIG_FILE: &str = "pgha.toml";
/// Written last by a successful `create`; its absence means an interrupted one.
pub const COMPLETE_MARKER: &str = ".complete";

/// What to build.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    /// State dir: pgha.toml, secrets/, nodes/<name>/{data,<name>.log,<name>.pgpass}.
    pub root: PathBuf,
    pub replicas: usize,
    pub mode: ReplicationMode,
    /// `replication.sync_standbys` (sync mode; 1 when 0).
    pub sync_standbys: u32,
    pub host: String,
    /// OS user the servers run as when we are root.
    pub os_user: String,
    pub bin_dir: Option<PathBuf>,
    pub slots: bool,
    /// wal_keep_size in MB (None: the config default).
    pub wal_keep_size_mb: Option<u64>,
    /// Extra server settings for every node.
    pub parameters: BTreeMap<String, String>,
    /// TOML appended to the generated pgha.toml (e.g. `[dcs]` and `[failover]` sections).
    pub extra_toml: String,
    /// TLS everywhere: a `[tls]` section (required) and certificates from `pgha tls init`.
    pub tls: bool,
    /// `replication.permanent_slots`, e.g. the slot a standby site streams through.
    pub permanent_slots: Vec<String>,
    /// Build a standby cluster of another local cluster instead of a new one.
    pub standby: Option<StandbySpec>,
    /// One address per node (simulated hosts): node i listens on `node_hosts[i]`, PostgreSQL on
    /// 5432 and its agent on 8008. Empty: every node on `host`, on free ports.
    pub node_hosts: Vec<String>,
    /// `replication.allowed_networks` (default: 127.0.0.1/32).
    pub allowed_networks: Vec<String>,
    /// `replicate_from` per node name (cascading replicas).
    pub replicate_from: BTreeMap<String, String>,
    /// TOML lines added to the `[replication]` section, e.g. `restore_command = "..."`.
    pub replication_extra: String,
}

/// A standby site: a copy of the local cluster in `primary_root` (same secrets) with a
/// `[standby_cluster]` section pointing at its nodes.
#[derive(Debug, Clone)]
pub struct StandbySpec {
    pub primary_root: PathBuf,
    /// `standby_cluster.primary_slot_name` (list it in the primary's `permanent_slots`).
    pub slot: Option<String>,
    /// `standby_cluster.restore_command`.
    pub restore_command: Option<String>,
    /// `host:port` the standby site reaches the primary site's nodes at (e.g. a WAN
    /// simulation's proxies); default: the nodes' own addresses.
    pub primary_hosts: Option<Vec<String>>,
}

impl ClusterSpec {
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            name: name.into(),
            root: root.into(),
            replicas: 2,
            mode: ReplicationMode::Async,
            sync_standbys: 1,
            host: "127.0.0.1".into(),
            os_user: "postgres".into(),
            bin_dir: None,
            slots: true,
            wal_keep_size_mb: None,
            parameters: BTreeMap::new(),
            extra_toml: String::new(),
            tls: false,
            permanent_slots: Vec::new(),
            standby: None,
            replicate_from: BTreeMap::new(),
            node_hosts: Vec::new(),
            allowed_networks: Vec::new(),
            replication_extra: String::new(),
        }
    }
}

/// A cluster on this machine, described by its pgha.toml.
#[derive(Debug)]
pub struct LocalCluster {
    root: PathBuf,
    config: PghaConfig,
    /// Held while the cluster is created so parallel creators do not pick the same ports.
    _ports: Vec<PortReservation>,
}

impl LocalCluster {
    /// Opens the cluster whose pgha.toml is in `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join(CONFIG_FILE);
        if !path.exists() {
            return Err(LocalClusterError::NoCluster(root.to_owned()));
        }
        if !root.join(COMPLETE_MARKER).exists() {
            return Err(LocalClusterError::Incomplete(root.to_owned()));
        }
        let loaded = pgha_config::load(ConfigSource::Flag(path))?;
        Ok(LocalCluster {
            root: root.to_owned(),
            config: loaded.config,
            _ports: Vec::new(),
        })
    }

    /// Opens a cluster whose creation did not finish, to stop what did start.
    pub fn open_incomplete(root: &Path) -> Result<Self> {
        let loaded = pgha_config::load(ConfigSource::Flag(root.join(CONFIG_FILE)))?;
        Ok(LocalCluster {
            root: root.to_owned(),
            config: loaded.config,
            _ports: Vec::new(),
        })
    }

    /// Builds a new cluster: writes secrets and pgha.toml, initdb + start of the primary,
    /// replication role, then each replica by pg_basebackup; returns once every replica streams.
    pub async fn create(spec: &ClusterSpec) -> Result<Self> {
        let cluster = Self::prepare(spec)?;
        cluster.build().await?;
        cluster.mark_complete()?;
        Ok(cluster)
    }

    /// The first half of [`Self::create`]: secrets, pgha.toml and TLS certificates, no server.
    /// Follow it with [`Self::bootstrap_primary`] (the agents can clone the replicas) and
    /// [`Self::mark_complete`].
    pub fn prepare(spec: &ClusterSpec) -> Result<Self> {
        let root = &spec.root;
        std::fs::create_dir_all(root.join("secrets"))
            .map_err(LocalClusterError::io("create", root.join("secrets")))?;
        // The server user must reach nodes/ under the state dir.
        set_mode(root, 0o711)?;
        std::fs::create_dir_all(root.join("nodes"))
            .map_err(LocalClusterError::io("create", root.join("nodes")))?;
        set_mode(&root.join("nodes"), 0o711)?;
        set_mode(&root.join("secrets"), 0o700)?;
        if let Some(standby) = &spec.standby {
            // A physical copy carries the primary site's roles: same passwords.
            for f in ["superuser.password", "replication.password"] {
                let from = standby.primary_root.join("secrets").join(f);
                let bytes = std::fs::read(&from).map_err(LocalClusterError::io("read", &from))?;
                pgha_postgres::files::write_atomic(
                    &root.join("secrets").join(f),
                    &bytes,
                    0o600,
                    None,
                )?;
            }
        }
        ensure_secret_file(&root.join("secrets/superuser.password"))?;
        ensure_secret_file(&root.join("secrets/replication.password"))?;

        let mut ports = Vec::new();
        let numbers: Vec<u16> = if spec.node_hosts.is_empty() {
            for _ in 0..(spec.replicas + 1) * 2 {
                ports.push(free_port(&spec.host)?);
            }
            ports.iter().map(|p| p.port).collect()
        } else {
            // A host of its own per node: the well-known ports.
            (0..=spec.replicas).flat_map(|_| [5432, 8008]).collect()
        };
        let mut text = render_config(spec, &numbers);
        // A standby site: the primary site's config names its nodes and its CA.
        let primary_site = match &spec.standby {
            Some(standby) => {
                let path = standby.primary_root.join(CONFIG_FILE);
                let primary = pgha_config::load(ConfigSource::Flag(path))?.config;
                text.push_str(&render_standby_section(standby, &primary));
                Some(primary)
            }
            None => None,
        };
        pgha_postgres::files::write_atomic(&root.join(CONFIG_FILE), text.as_bytes(), 0o644, None)?;
        let loaded = pgha_config::load(ConfigSource::Flag(root.join(CONFIG_FILE)))?;
        let primary_tls = primary_site.as_ref().and_then(|p| p.tls.as_ref());
        if let (Some(tls), Some(ptls)) = (&loaded.config.tls, primary_tls) {
            share_ca(ptls, tls)?;
        }
        if loaded.config.tls.is_some() {
            let report = pgha_tls::init(&loaded.config, &pgha_tls::InitOptions::default())?;
            tracing::info!(files = report.files.len(), "TLS certificates issued");
        }
        Ok(LocalCluster {
            root: root.clone(),
            config: loaded.config,
            _ports: ports,
        })
    }

    /// Marks a cluster made by [`Self::prepare`] as complete ([`Self::open`] accepts it).
    pub fn mark_complete(&self) -> Result<()> {
        pgha_postgres::files::write_atomic(&self.root.join(COMPLETE_MARKER), b"", 0o644, None)?;
        Ok(())
    }

    async fn build(&self) -> Result<()> {
        if let Some(source) = &self.config.standby_cluster {
            return self.build_standby(source).await;
        }
        self.bootstrap_primary().await?;
        let config = &self.config;
        let primary = &config.nodes[0];
        let pi = self.instance(&primary.name)?;
        for node in &config.nodes[1..] {
            let ri = self.instance(&node.name)?;
            let t = Instant::now();
            bootstrap_replica(config, node, primary, &ri, pi.connect_params()).await?;
            ri.start().await?;
            tracing::info!(node = %node.name, elapsed_ms = t.elapsed().as_millis() as u64, "replica started");
        }
        self.wait_streaming(Duration::from_secs(60)).await
    }

    /// initdb, settings and start of the first node, and the replication role; the primary is
    /// left running.
    pub async fn bootstrap_primary(&self) -> Result<()> {
        let config = &self.config;
        let primary = &config.nodes[0];
        let pi = self.instance(&primary.name)?;
        let t = Instant::now();
        pgha_replication::bootstrap_primary(config, primary, &pi, true).await?;
        tracing::info!(node = %primary.name, elapsed_ms = t.elapsed().as_millis() as u64, "initdb done");
        Ok(())
    }

    /// A standby site: the first node copies the primary site, the others copy it.
    async fn build_standby(&self, source: &pgha_config::StandbyClusterSection) -> Result<()> {
        let config = &self.config;
        let leader = &config.nodes[0];
        let li = self.instance(&leader.name)?;
        pgha_replication::bootstrap_standby_leader(config, leader, source, &li).await?;
        li.start().await?;
        for node in &config.nodes[1..] {
            let ri = self.instance(&node.name)?;
            bootstrap_replica(config, node, leader, &ri, li.connect_params()).await?;
            ri.start().await?;
        }
        self.wait_streaming(Duration::from_secs(60)).await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &PghaConfig {
        &self.config
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// The node first created as primary (roles may have changed since; ask [`Self::status`]).
    pub fn first_node(&self) -> &NodeConfig {
        &self.config.nodes[0]
    }

    /// The instance of `node`, with its socket dir in place (postgres does not create it).
    pub fn instance(&self, node: &str) -> Result<LocalInstance> {
        let n = self
            .config
            .node(node)
            .ok_or_else(|| pgha_replication::ReplicationError::UnknownNode(node.into()))?;
        let inst = LocalInstance::from_config(&self.config, n)?;
        if let Some(dir) = &n.socket_dir {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(LocalClusterError::io("create", dir))?;
                if let Some(u) = inst.run_as() {
                    u.chown(dir)?;
                }
                set_mode(dir, 0o700)?;
            }
        }
        Ok(inst)
    }

    /// Starts every stopped node (primary first); running ones are left alone.
    pub async fn start_all(&self) -> Result<()> {
        for n in &self.config.nodes {
            self.instance(&n.name)?.start().await?;
        }
        Ok(())
    }

    /// Stops every node (replicas first, so the primary's shutdown checkpoint streams to them).
    pub async fn stop_all(&self, mode: StopMode) -> Result<()> {
        let mut first_err = None;
        for n in self.config.nodes.iter().rev() {
            if let Err(e) = self.instance(&n.name)?.stop(mode).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Blocking immediate stop of every node, for drop guards.
    pub fn stop_all_blocking(&self) {
        for n in &self.config.nodes {
            if let Ok(i) = self.instance(&n.name) {
                i.stop_blocking(StopMode::Immediate);
            }
        }
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        Ok(ClusterStatus::collect(&self.config).await?)
    }

    /// Waits until the primary reports every other node as a streaming standby.
    pub async fn wait_streaming(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status().await?;
            let missing: Vec<String> = self
                .config
                .nodes
                .iter()
                .filter(|n| Some(&n.name) != st.primary.as_ref())
                // A new standby site's first node may have only the archive to follow.
                .filter(|n| {
                    self.config.standby_cluster.is_none() || n.name != self.config.nodes[0].name
                })
                .filter(|n| st.node(&n.name).and_then(|s| s.streaming) != Some(true))
                .map(|n| n.name.clone())
                .collect();
            // A standby site has no primary: its leader streams from the other site.
            let standby = self.config.standby_cluster.is_some();
            if (st.primary.is_some() || standby) && missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let detail = if st.primary.is_none() {
                    format!("no single primary (writable: {:?})", st.writable)
                } else {
                    format!("not streaming: {}", missing.join(", "))
                };
                return Err(LocalClusterError::NotStreaming {
                    seconds: timeout.as_secs(),
                    detail,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops everything and deletes the state dir.
    pub async fn purge(self) -> Result<()> {
        let _ = self.stop_all(StopMode::Immediate).await;
        std::fs::remove_dir_all(&self.root).map_err(LocalClusterError::io("remove", &self.root))
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(LocalClusterError::io("chmod", path))
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The pgha.toml of a local cluster, written by hand (not serialized) so it reads as an example.
fn render_config(spec: &ClusterSpec, ports: &[u16]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Local pgha cluster made by `cargo xtask cluster up`.");
    let _ = writeln!(s, "# Relative paths are relative to this file.\n");
    let _ = writeln!(s, "[cluster]\nname = {}\n", toml_str(&spec.name));
    let _ = writeln!(s, "[postgres]");
    if let Some(b) = &spec.bin_dir {
        let _ = writeln!(s, "bin_dir = {}", toml_str(&b.display().to_string()));
    }
    let _ = writeln!(s, "os_user = {}", toml_str(&spec.os_user));
    let _ = writeln!(s, "superuser = \"postgres\"");
    let _ = writeln!(
        s,
        "superuser_password = {{ file = \"secrets/superuser.password\" }}"
    );
    let _ = writeln!(s, "connect_timeout = \"3s\"");
    if !spec.parameters.is_empty() {
        let _ = writeln!(s, "[postgres.parameters]");
        for (k, v) in &spec.parameters {
            let _ = writeln!(s, "{k} = {}", toml_str(v));
        }
    }
    let _ = writeln!(s, "\n[replication]");
    let _ = writeln!(s, "mode = \"{}\"", spec.mode);
    if spec.sync_standbys > 1 {
        let _ = writeln!(s, "sync_standbys = {}", spec.sync_standbys);
    }
    let _ = writeln!(s, "user = \"replicator\"");
    let _ = writeln!(
        s,
        "password = {{ file = \"secrets/replication.password\" }}"
    );
    let _ = writeln!(s, "slots = {}", spec.slots);
    if !spec.permanent_slots.is_empty() {
        let list: Vec<String> = spec.permanent_slots.iter().map(|x| toml_str(x)).collect();
        let _ = writeln!(s, "permanent_slots = [{}]", list.join(", "));
    }
    let nets: Vec<String> = if spec.allowed_networks.is_empty() {
        vec![toml_str("127.0.0.1/32")]
    } else {
        spec.allowed_networks.iter().map(|n| toml_str(n)).collect()
    };
    let _ = writeln!(s, "allowed_networks = [{}]", nets.join(", "));
    if let Some(mb) = spec.wal_keep_size_mb {
        let _ = writeln!(s, "wal_keep_size = \"{mb}MB\"");
    }
    s.push_str(&spec.replication_extra);
    for i in 0..=spec.replicas {
        let name = format!("node{}", i + 1);
        let dir = spec.root.join("nodes").join(&name);
        let _ = writeln!(s, "\n[[nodes]]");
        let _ = writeln!(s, "name = \"{name}\"");
        let host = spec.node_hosts.get(i).unwrap_or(&spec.host);
        let _ = writeln!(s, "host = {}", toml_str(host));
        let _ = writeln!(s, "port = {}", ports[i * 2]);
        let _ = writeln!(
            s,
            "data_dir = {}",
            toml_str(&dir.join("data").display().to_string())
        );
        let _ = writeln!(s, "run_dir = {}", toml_str(&dir.display().to_string()));
        let _ = writeln!(
            s,
            "socket_dir = {}",
            toml_str(&socket_dir(&dir).display().to_string())
        );
        let _ = writeln!(s, "agent_address = \"{host}:{}\"", ports[i * 2 + 1]);
        if let Some(up) = spec.replicate_from.get(&name) {
            let _ = writeln!(s, "replicate_from = {}", toml_str(up));
        }
    }
    if spec.tls {
        let _ = writeln!(
            s,
            "\n[tls]\ndir = \"tls\"\nrequired = true\nagent_api = true"
        );
    }
    if !spec.extra_toml.is_empty() {
        let _ = writeln!(s, "\n{}", spec.extra_toml);
    }
    s
}

/// One CA for both sites (each side verifies the other's certificates): copies the primary
/// site's CA certificate and key where `pgha tls init` then finds and keeps them.
fn share_ca(from: &pgha_config::TlsSection, to: &pgha_config::TlsSection) -> Result<()> {
    std::fs::create_dir_all(&to.dir).map_err(LocalClusterError::io("create", &to.dir))?;
    for (src, dst, mode) in [
        (from.ca_file(), to.ca_file(), 0o644),
        (from.ca_key_file(), to.ca_key_file(), 0o600),
    ] {
        let bytes = std::fs::read(&src).map_err(LocalClusterError::io("read", &src))?;
        pgha_postgres::files::write_atomic(&dst, &bytes, mode, None)?;
    }
    Ok(())
}

/// `[standby_cluster]` pointing at every node of the primary site (or `standby.primary_hosts`).
fn render_standby_section(standby: &StandbySpec, primary: &PghaConfig) -> String {
    let hosts: Vec<String> = match &standby.primary_hosts {
        Some(h) => h.iter().map(|a| toml_str(a)).collect(),
        None => primary
            .nodes
            .iter()
            .map(|n| toml_str(&n.address()))
            .collect(),
    };
    let mut s = format!(
        "\n[standby_cluster]\nprimary_hosts = [{}]\n",
        hosts.join(", ")
    );
    if let Some(slot) = &standby.slot {
        let _ = writeln!(s, "primary_slot_name = {}", toml_str(slot));
    }
    if let Some(cmd) = &standby.restore_command {
        let _ = writeln!(s, "restore_command = {}", toml_str(cmd));
    }
    s
}

/// The node dir itself when short enough for a unix socket path, else a short dir under /tmp.
fn socket_dir(node_dir: &Path) -> PathBuf {
    if node_dir.as_os_str().len() <= 80 {
        return node_dir.to_owned();
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node_dir.hash(&mut h);
    std::env::temp_dir().join(format!("pgha-sock-{:08x}", h.finish() as u32))
}
