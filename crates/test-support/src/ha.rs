//! A test cluster run by real pgha-agent processes over a real etcd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgha_local_cluster::{AgentProcess, EtcdServer};
use pgha_postgres::StopMode;

use crate::{TestCluster, TestClusterBuilder};

/// Agents + etcd + PostgreSQL. Drop order: agents (stop their PostgreSQL), cluster, etcd.
#[derive(Debug)]
pub struct HaCluster {
    pub agents: BTreeMap<String, AgentProcess>,
    pub cluster: TestCluster,
    pub etcd: EtcdServer,
    agent_bin: PathBuf,
    _etcd_dir: tempfile::TempDir,
}

/// Failover timings for tests: short, so tests are quick, and still valid.
pub const TEST_FAILOVER_TOML: &str =
    "ttl = \"3s\"\nloop_wait = \"250ms\"\npostgres_restart_timeout = \"1s\"\n";

impl HaCluster {
    /// Builds the cluster with `builder`, then hands every node to a pgha-agent (`agent_bin`).
    /// `failover_toml` is the body of the `[failover]` section.
    pub async fn start(
        agent_bin: &Path,
        builder: TestClusterBuilder,
        failover_toml: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(agent_bin, builder, failover_toml, false).await
    }

    /// [`Self::start`] with every data dir removed first: the agents bootstrap the cluster
    /// themselves (the config, secrets and ports are the builder's).
    pub async fn start_empty(
        agent_bin: &Path,
        builder: TestClusterBuilder,
        failover_toml: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(agent_bin, builder, failover_toml, true).await
    }

    /// [`Self::start_empty`], running `prepare` on the cluster the builder made (no agents
    /// yet) before its data dirs are removed: e.g. to take the backup a bootstrap restores.
    pub async fn start_empty_after(
        agent_bin: &Path,
        builder: TestClusterBuilder,
        failover_toml: &str,
        prepare: impl AsyncFnOnce(&TestCluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_prepared(agent_bin, builder, failover_toml, true, prepare).await
    }

    async fn start_with(
        agent_bin: &Path,
        builder: TestClusterBuilder,
        failover_toml: &str,
        empty: bool,
    ) -> anyhow::Result<Self> {
        Self::start_prepared(agent_bin, builder, failover_toml, empty, async |_| Ok(())).await
    }

    async fn start_prepared(
        agent_bin: &Path,
        builder: TestClusterBuilder,
        failover_toml: &str,
        empty: bool,
        prepare: impl AsyncFnOnce(&TestCluster) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let etcd_dir = tempfile::Builder::new().prefix("pgha-etcd-").tempdir()?;
        let etcd = EtcdServer::start(etcd_dir.path())?;
        let extra = format!(
            "[dcs]\netcd = [\"{}\"]\nrequest_timeout = \"500ms\"\n\n[failover]\n{failover_toml}",
            etcd.client_url
        );
        let cluster = builder.extra_toml(&extra).start().await?;
        prepare(&cluster).await?;
        // The agents run PostgreSQL as their child from now on.
        cluster.stop_all(StopMode::Fast).await?;
        if empty {
            for n in &cluster.config().nodes {
                std::fs::remove_dir_all(&n.data_dir)
                    .with_context(|| format!("remove {}", n.data_dir.display()))?;
            }
        }
        let mut ha = HaCluster {
            agents: BTreeMap::new(),
            cluster,
            etcd,
            agent_bin: agent_bin.to_owned(),
            _etcd_dir: etcd_dir,
        };
        for n in ha.cluster.node_names() {
            ha.start_agent(&n)?;
        }
        Ok(ha)
    }

    pub fn start_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let log = self.agent_log(node);
        let a = AgentProcess::spawn(&self.agent_bin, &self.cluster.config_path(), node, &log)?;
        self.agents.insert(node.into(), a);
        Ok(())
    }

    /// Adds `lines` (TOML, each ending in a newline) to `node`'s `[[nodes]]` table in the
    /// cluster's pgha.toml and sends SIGHUP to every running agent (a reload).
    pub fn edit_node_and_reload(&self, node: &str, lines: &str) -> anyhow::Result<()> {
        let path = self.cluster.config_path();
        let original = std::fs::read_to_string(&path)?;
        let at = format!("name = \"{node}\"\n");
        let edited = original.replacen(&at, &format!("{at}{lines}"), 1);
        anyhow::ensure!(
            edited != original,
            "{node}'s table not found in {}",
            path.display()
        );
        std::fs::write(&path, &edited)?;
        for a in self.agents.values() {
            if let Some(pid) = a.pid() {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGHUP,
                )?;
            }
        }
        Ok(())
    }

    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.cluster.root().join(format!("{node}-agent.log"))
    }

    /// SIGKILL of the agent alone.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(a) = self.agents.get_mut(node) {
            a.kill();
        }
    }

    /// SIGKILL of the agent and of its postmaster, together (the drill's fault).
    pub fn kill_node(&mut self, node: &str) -> anyhow::Result<()> {
        let running = self.cluster.instance(node)?.process_state()?;
        self.kill_agent(node);
        if let pgha_postgres::ProcessState::Running { pid } = running {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    /// Nodes whose PostgreSQL accepts a connection and is not in recovery, right now.
    pub async fn writable_nodes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.cluster.node_names() {
            let Ok(inst) = self.cluster.instance(&n) else {
                continue;
            };
            let mut p = inst.connect_params().clone();
            p.connect_timeout = Duration::from_millis(500);
            if let Ok(mut c) = p.connect().await {
                let rec: Result<bool, _> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(&mut c)
                    .await;
                if rec.is_ok_and(|r| !r) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Three nodes with [`TEST_FAILOVER_TOML`], once node1 leads and node2 and node3 stream.
    pub async fn start_three(agent_bin: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let h = Self::start(
            agent_bin,
            TestCluster::builder().replicas(2),
            TEST_FAILOVER_TOML,
        )
        .await?;
        let leader = h.wait_single_primary(timeout, None).await?;
        anyhow::ensure!(leader == "node1", "{leader} leads, not node1");
        for n in ["node2", "node3"] {
            h.wait_streaming_replica(n, timeout).await?;
        }
        Ok(h)
    }

    /// Waits until exactly one node is writable and returns it.
    pub async fn wait_single_primary(
        &self,
        timeout: Duration,
        not: Option<&str>,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let w = self.writable_nodes().await;
            if w.len() == 1 && Some(w[0].as_str()) != not {
                return Ok(w[0].clone());
            }
            anyhow::ensure!(w.len() <= 1, "two writable primaries: {w:?}");
            if Instant::now() > deadline {
                anyhow::bail!(
                    "no single writable primary{} within {timeout:?} (writable: {w:?})",
                    not.map(|n| format!(" other than {n}")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `node` is a streaming replica.
    pub async fn wait_streaming_replica(
        &self,
        node: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        TestCluster::eventually(timeout, &format!("{node} streaming"), || async {
            let mut c = self.cluster.conn(node).await?;
            let row: (bool, Option<String>) = sqlx::query_as(
                "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)",
            )
            .fetch_one(&mut c)
            .await?;
            Ok((row.0 && row.1.as_deref() == Some("streaming")).then_some(()))
        })
        .await
        .with_context(|| format!("agent log of {node}:\n{}", self.tail_agent_log(node, 30)))
    }

    pub fn tail_agent_log(&self, node: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.agent_log(node)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            a.terminate(Duration::from_secs(20));
        }
    }
}
