//! Test harness: real PostgreSQL clusters in per-test temp dirs on reserved free ports, stopped
//! on drop (also when the test panics), with a check that no server logged a PANIC.
//!
//! Clusters are built by `pgha-local-cluster`, the same code `cargo xtask cluster up` runs.

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_config::ReplicationMode;
use pgha_local_cluster::{ClusterSpec, LocalCluster};
use sqlx::PgConnection;

pub mod dashboards;
pub mod haproxy;
pub mod moto;
pub mod netns;
pub mod tidy;

pub use pgha_local_cluster::free_port;

mod ha;
pub use ha::{HaCluster, TEST_FAILOVER_TOML};

/// Logs at `info` for our crates, once per test process; `RUST_LOG` overrides.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// What cluster a test wants.
#[derive(Debug, Clone)]
pub struct TestClusterBuilder {
    spec_replicas: usize,
    mode: ReplicationMode,
    sync_standbys: u32,
    slots: bool,
    wal_keep_size_mb: Option<u64>,
    parameters: Vec<(String, String)>,
    extra_toml: String,
    tls: bool,
    name: String,
    replicate_from: Vec<(String, String)>,
    permanent_slots: Vec<String>,
    standby: Option<pgha_local_cluster::StandbySpec>,
    replication_toml: String,
}

impl TestClusterBuilder {
    /// TLS everywhere (`[tls]` required, certificates issued by `pgha tls init`).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Cluster name (its DCS scope); default `test`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    /// `node` is a cascading replica streaming from `upstream`.
    pub fn replicate_from(mut self, node: &str, upstream: &str) -> Self {
        self.replicate_from.push((node.into(), upstream.into()));
        self
    }
    /// A slot the leader keeps for a standby site.
    pub fn permanent_slot(mut self, slot: &str) -> Self {
        self.permanent_slots.push(slot.into());
        self
    }
    /// A standby cluster of the cluster in `primary_root`, streaming through `slot`.
    pub fn standby_of(
        mut self,
        primary_root: &Path,
        slot: Option<&str>,
        restore_command: Option<&str>,
    ) -> Self {
        self.standby = Some(pgha_local_cluster::StandbySpec {
            primary_root: primary_root.to_owned(),
            slot: slot.map(str::to_owned),
            restore_command: restore_command.map(str::to_owned),
            primary_hosts: None,
        });
        self
    }
    pub fn replicas(mut self, n: usize) -> Self {
        self.spec_replicas = n;
        self
    }
    pub fn sync(mut self) -> Self {
        self.mode = ReplicationMode::Sync;
        self
    }
    /// Sync mode with `n` synchronous standbys (`replication.sync_standbys`).
    pub fn sync_standbys(mut self, n: u32) -> Self {
        self.mode = ReplicationMode::Sync;
        self.sync_standbys = n;
        self
    }
    pub fn slots(mut self, on: bool) -> Self {
        self.slots = on;
        self
    }
    pub fn wal_keep_size_mb(mut self, mb: u64) -> Self {
        self.wal_keep_size_mb = Some(mb);
        self
    }
    /// TOML lines added to the `[replication]` section (each ending in a newline).
    pub fn replication_toml(mut self, toml: &str) -> Self {
        self.replication_toml.push_str(toml);
        self
    }
    /// TOML appended to the cluster's pgha.toml.
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }
    pub fn parameter(mut self, key: &str, value: &str) -> Self {
        self.parameters.push((key.into(), value.into()));
        self
    }

    /// Creates and starts the cluster; returns once every replica streams.
    pub async fn start(self) -> anyhow::Result<TestCluster> {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("pgha-test-")
            .tempdir()
            .context("create test dir")?;
        // The server user must traverse into it when tests run as root.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        }
        let mut spec = ClusterSpec::new(&self.name, dir.path());
        spec.permanent_slots = self.permanent_slots;
        spec.standby = self.standby;
        spec.replicate_from = self.replicate_from.into_iter().collect();
        spec.replicas = self.spec_replicas;
        spec.mode = self.mode;
        spec.sync_standbys = self.sync_standbys;
        spec.slots = self.slots;
        spec.wal_keep_size_mb = self.wal_keep_size_mb;
        // Small and fast: tests run several clusters at once on two cores.
        for (k, v) in [
            ("shared_buffers", "16MB"),
            ("max_connections", "30"),
            ("fsync", "off"),
        ] {
            spec.parameters.insert(k.into(), v.into());
        }
        spec.parameters.extend(self.parameters);
        spec.extra_toml = self.extra_toml;
        spec.replication_extra = self.replication_toml;
        spec.tls = self.tls;
        let t = Instant::now();
        let cluster = match LocalCluster::create(&spec).await {
            Ok(c) => c,
            Err(e) => {
                // Stop whatever did start before the temp dir goes away.
                if let Ok(c) = LocalCluster::open_incomplete(dir.path()) {
                    c.stop_all_blocking();
                }
                return Err(e).context(format!("create test cluster in {}", dir.path().display()));
            }
        };
        tracing::info!(elapsed_ms = t.elapsed().as_millis() as u64, root = %dir.path().display(), "test cluster up");
        Ok(TestCluster { cluster, _dir: dir })
    }
}

/// A running cluster owned by one test.
#[derive(Debug)]
pub struct TestCluster {
    cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            spec_replicas: 2,
            mode: ReplicationMode::Async,
            sync_standbys: 1,
            slots: true,
            wal_keep_size_mb: None,
            parameters: Vec::new(),
            extra_toml: String::new(),
            tls: false,
            name: "test".into(),
            replicate_from: Vec::new(),
            permanent_slots: Vec::new(),
            standby: None,
            replication_toml: String::new(),
        }
    }

    /// A primary and `replicas` async replicas.
    pub async fn start(replicas: usize) -> anyhow::Result<TestCluster> {
        Self::builder().replicas(replicas).start().await
    }

    /// Node names: node1 (the first primary), node2, ...
    pub fn node_names(&self) -> Vec<String> {
        self.cluster
            .config()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// A superuser connection to `node`.
    pub async fn conn(&self, node: &str) -> anyhow::Result<PgConnection> {
        let inst = self.cluster.instance(node)?;
        Ok(inst.connect_params().connect().await?)
    }

    /// Polls `probe` every 50 ms until it returns Some or `timeout` passes.
    pub async fn eventually<T, F, Fut>(
        timeout: Duration,
        what: &str,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match probe().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{what} did not happen within {timeout:?} (last error: {last_err:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Server log lines that say PANIC: a failed assertion or corruption in the server.
    pub fn panics_in_logs(&self) -> Vec<String> {
        let mut found = Vec::new();
        for n in &self.cluster.config().nodes {
            let text = std::fs::read_to_string(n.log_file()).unwrap_or_default();
            found.extend(
                text.lines()
                    .filter(|l| l.contains("PANIC:"))
                    .map(|l| format!("{}: {l}", n.name)),
            );
        }
        found
    }

    pub fn root(&self) -> &Path {
        self.cluster.root()
    }
}

/// When set, every test cluster copies its `*.log` files into `<dir>/<cluster dir>/` and adds
/// its secrets (the files of `secrets/`) to `<dir>/.secrets`, one per line, so CI can check
/// that no log of the whole suite contains a secret.
pub const KEEP_LOGS_ENV: &str = "PGHA_TEST_LOG_DIR";

fn keep_logs(root: &Path, dest: &Path) {
    let Some(name) = root.file_name() else { return };
    let into = dest.join(name);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.join("PG_VERSION").exists() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                if let Ok(rel) = p.strip_prefix(root) {
                    let to = into.join(rel);
                    if let Some(parent) = to.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::fs::copy(&p, &to);
                }
            }
        }
    }
    let mut secrets = String::new();
    if let Ok(entries) = std::fs::read_dir(root.join("secrets")) {
        for e in entries.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                let t = t.trim();
                if !t.is_empty() {
                    secrets.push_str(t);
                    secrets.push('\n');
                }
            }
        }
    }
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dest.join(".secrets"))
    {
        let _ = f.write_all(secrets.as_bytes());
    }
}

impl Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop_all_blocking();
        if let Some(dir) = std::env::var_os(KEEP_LOGS_ENV) {
            keep_logs(self.cluster.root(), Path::new(&dir));
        }
        let panics = self.panics_in_logs();
        if !panics.is_empty() && !std::thread::panicking() {
            panic!("server logs contain PANIC lines:\n{}", panics.join("\n"));
        }
    }
}
