//! The world a fault scenario runs in: simulated hosts (network namespaces on one bridge), a
//! 3-member etcd cluster on hosts of its own, PostgreSQL and pgha-agent on each node's host,
//! and a client host the observers connect from.
//!
//! Hosts: `h1..h3` the nodes (`node1..node3`, PostgreSQL on 5432, agent on 8008), `h4..h6`
//! the etcd members (`e1..e3`, 2379/2380), `h7` the client. Everything is removed by guards
//! when the world drops: agents (each stops its PostgreSQL), etcd members, the namespaces
//! (and with them every fault rule).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgha_config::ReplicationMode;
use pgha_local_cluster::{AgentProcess, ClusterSpec, LocalCluster};
use pgha_postgres::{ConnectParams, PgControl, ProcessState, StopMode};
use pgha_test_support::netns::Net;

use crate::drill::Profile;

/// Hosts of the nodes, of the etcd members, and the client; how many in all.
pub const HOSTS: usize = 7;
pub const NODES: [usize; 3] = [1, 2, 3];
pub const ETCD: [usize; 3] = [4, 5, 6];
pub const CLIENT: usize = 7;

/// One etcd member on its host.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub host: usize,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct World {
    pub net: Net,
    pub cluster: LocalCluster,
    pub agents: Vec<AgentProcess>,
    pub etcd: Vec<EtcdMember>,
    pub mode: ReplicationMode,
    pub profile: Profile,
    root: PathBuf,
    bin_dir: PathBuf,
}

impl World {
    /// Builds every host, etcd, the first primary (initdb on its host) and the agents, which
    /// clone the two replicas; returns once one node is writable and both others stream.
    /// Runs on the client host (see [`super::run`]).
    pub async fn create(
        net: Net,
        root: &Path,
        bin_dir: &Path,
        mode: ReplicationMode,
        profile: Profile,
    ) -> anyhow::Result<World> {
        std::fs::create_dir_all(root)?;
        let mut etcd = Vec::new();
        let peers: Vec<String> = ETCD
            .iter()
            .enumerate()
            .map(|(k, &h)| format!("e{}=http://{}:2380", k + 1, net.host(h).addr))
            .collect();
        for (k, &h) in ETCD.iter().enumerate() {
            let mut m = EtcdMember {
                name: format!("e{}", k + 1),
                host: h,
                child: None,
            };
            start_etcd(&net, root, &mut m, &peers.join(","))?;
            etcd.push(m);
        }
        let endpoints: Vec<String> = ETCD
            .iter()
            .map(|&h| format!("\"http://{}:2379\"", net.host(h).addr))
            .collect();
        let (ttl, loop_wait) = profile.timings();
        let mut spec = ClusterSpec::new("faults", root);
        spec.mode = mode;
        spec.node_hosts = NODES
            .iter()
            .map(|&h| net.host(h).addr.to_string())
            .collect();
        let a = net.host(1).addr.octets();
        // Loopback too: a copy restored beside the cluster is checked over 127.0.0.1.
        spec.allowed_networks = vec![
            format!("{}.{}.{}.0/24", a[0], a[1], a[2]),
            "127.0.0.1/32".into(),
        ];
        spec.extra_toml = format!(
            "[dcs]\netcd = [{}]\nrequest_timeout = \"{}\"\n\n[failover]\nttl = \"{ttl}\"\nloop_wait = \"{loop_wait}\"\npostgres_restart_timeout = \"1s\"\napi_token = {{ file = \"secrets/api.token\" }}\n",
            endpoints.join(", "),
            if matches!(profile, Profile::Fast) { "500ms" } else { "1s" },
        );
        // WAL archiving into a repository every host sees. archive_mode = always: a standby
        // archives what it receives too, so a failover leaves no segment of the old timeline
        // that only the lost primary had (with `on`, a promoted standby archives only what it
        // writes itself).
        let repo = root.join("backups");
        std::fs::create_dir_all(&repo)?;
        if let Some(u) = pgha_postgres::OsUser::for_server(&spec.os_user)? {
            u.chown(&repo)?;
        }
        crate::services::install_archive_bin(root, bin_dir)?;
        spec.parameters
            .insert("archive_mode".into(), "always".into());
        spec.parameters.insert(
            "archive_command".into(),
            format!(
                "'{}' --config '{}' wal-push %p",
                root.join("bin/pgha-backup").display(),
                root.join(pgha_local_cluster::CONFIG_FILE).display()
            ),
        );
        spec.extra_toml.push_str(&format!(
            "\n[backup]\nmetrics_file = \"{}\"\n\n[backup.repository]\npath = \"{}\"\n",
            repo.join("metrics.prom").display(),
            repo.display()
        ));
        write_token(&root.join("secrets/api.token"))?;
        let cluster = LocalCluster::prepare(&spec).context("write the cluster's config")?;
        for n in &cluster.config().nodes {
            cluster.instance(&n.name)?;
        }
        // initdb and the replication role on the first node's host; the agents take it from
        // there (node1 starts it and takes the lease, the others clone it).
        let r = root.to_owned();
        net.host(NODES[0]).block_on(move || async move {
            let c = LocalCluster::open_incomplete(&r)?;
            c.bootstrap_primary().await?;
            let node = c.first_node().name.clone();
            let inst = c.instance(&node)?;
            let mut conn = inst.connect_params().connect().await?;
            // Sync mode: no standby exists yet to acknowledge this commit.
            sqlx::query("SET synchronous_commit = local")
                .execute(&mut conn)
                .await?;
            sqlx::query(
                "CREATE TABLE faults (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
            )
            .execute(&mut conn)
            .await?;
            drop(conn);
            inst.stop(StopMode::Fast).await?;
            Ok(())
        })?;
        cluster.mark_complete()?;
        let mut w = World {
            net,
            cluster,
            agents: Vec::new(),
            etcd,
            mode,
            profile,
            root: root.to_owned(),
            bin_dir: bin_dir.to_owned(),
        };
        for n in w.node_names() {
            w.start_agent(&n)?;
        }
        w.wait_healthy(Duration::from_secs(120))
            .await
            .context("the agents did not bring the cluster up")?;
        Ok(w)
    }

    pub fn node_names(&self) -> Vec<String> {
        self.cluster
            .config()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// libpq-style URL over every node, for read-write sessions (holds the password: never
    /// printed).
    pub fn url(&self) -> anyhow::Result<pgha_router::url::MultiHostUrl> {
        let pw_file = self.root.join("secrets/superuser.password");
        let pw = std::fs::read_to_string(&pw_file)
            .with_context(|| format!("read {}", pw_file.display()))?;
        let hosts: Vec<String> = self
            .cluster
            .config()
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.port))
            .collect();
        let url = format!(
            "postgres://postgres:{}@{}/postgres?target_session_attrs=read-write",
            pw.trim(),
            hosts.join(",")
        );
        Ok(pgha_router::url::MultiHostUrl::parse(&url)?)
    }

    /// The host index of `node`.
    pub fn host_of(&self, node: &str) -> anyhow::Result<usize> {
        self.node_names()
            .iter()
            .position(|n| n == node)
            .map(|i| NODES[i])
            .with_context(|| format!("no node {node}"))
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ttl(&self) -> Duration {
        self.profile.ttl()
    }

    /// Each node's connection parameters, with a short connect timeout.
    pub fn params(&self) -> Vec<(String, ConnectParams)> {
        crate::drill::node_params(&self.cluster)
    }

    pub fn params_of(&self, node: &str) -> anyhow::Result<ConnectParams> {
        self.params()
            .into_iter()
            .find(|(n, _)| n == node)
            .map(|(_, p)| p)
            .with_context(|| format!("no node {node}"))
    }

    pub fn start_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let host = self.host_of(node)?;
        let bin = self.bin_dir.join("pgha-agent");
        let log = self.root.join(format!("{node}-agent.log"));
        let cmd = self.net.command(host, &bin.display().to_string());
        let a = AgentProcess::spawn_command(cmd, &bin, &self.cluster.config_path(), node, &log)?;
        match self.agents.iter().position(|a| a.node == node) {
            Some(i) => self.agents[i] = a,
            None => self.agents.push(a),
        }
        Ok(())
    }

    pub fn agent_pid(&self, node: &str) -> anyhow::Result<u32> {
        self.agents
            .iter()
            .find(|a| a.node == node)
            .and_then(AgentProcess::pid)
            .with_context(|| format!("no running agent for {node}"))
    }

    /// SIGKILL of `node`'s agent (its supervisor then kills its PostgreSQL).
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(a) = self.agents.iter_mut().find(|a| a.node == node) {
            a.kill();
        }
    }

    /// The postmaster's pid of `node`, when it runs.
    pub fn postmaster_pid(&self, node: &str) -> Option<i32> {
        match self.cluster.instance(node).ok()?.process_state().ok()? {
            ProcessState::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// The pid of `node`'s startup process (the one replaying WAL), when it runs.
    pub fn startup_pid(&self, node: &str) -> Option<i32> {
        let pm = self.postmaster_pid(node)?;
        children(pm).into_iter().find(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("startup"))
                .unwrap_or(false)
        })
    }

    /// The one writable node, within `timeout`.
    pub async fn primary(&self, timeout: Duration) -> anyhow::Result<String> {
        crate::drill::single_writable(&self.params(), timeout).await
    }

    /// One primary and every other node streaming from it, within `timeout`.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Ok(p) = self.primary(left.min(Duration::from_secs(5))).await {
                if self
                    .cluster
                    .wait_streaming(Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    return Ok(p);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the cluster was not healthy (one primary, the others streaming) within {timeout:?}; see {}/*-agent.log",
                    self.root.display()
                );
            }
        }
    }

    /// The synchronous standby the primary reports (sync mode).
    pub async fn sync_standby(&self, primary: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.params_of(primary)?.connect().await?;
        let name: Option<String> = sqlx::query_scalar(
            "SELECT application_name FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') LIMIT 1",
        )
        .fetch_optional(&mut c)
        .await?;
        Ok(name)
    }

    /// The standbys the DCS's `/sync` key names (sync mode): the only nodes that may be
    /// promoted.
    pub async fn sync_key_standbys(&self) -> anyhow::Result<Vec<String>> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = format!("/pgha/{}/sync", self.cluster.config().cluster.name);
        let mut last = None;
        for m in self.etcd.iter().filter(|m| m.child.is_some()) {
            let addr = self.net.host(m.host).addr;
            let body = serde_json::json!({ "key": b64.encode(&key) });
            let r = match etcd_post(addr, "/v3/kv/range", body).await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let Some(value) = r["kvs"][0]["value"].as_str() else {
                return Ok(Vec::new());
            };
            let bytes = b64.decode(value).with_context(|| format!("decode {key}"))?;
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("decode {key}"))?;
            return Ok(v["standbys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default());
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd member runs")))
    }

    /// Sync mode: waits (at most `timeout`) until `/sync` names a standby; whether it did.
    pub async fn wait_sync_standby(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.sync_key_standbys().await.is_ok_and(|s| !s.is_empty()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Data directories moved aside by a re-clone (`<data>.diverged-<ts>`) from `since` on,
    /// but for a node whose pg_rewind lost its source mid-copy in that time.
    pub fn reclones(&self, since: std::time::SystemTime) -> Vec<String> {
        let since_s = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The agent's log lines start with an RFC 3339 time in this form: they sort as text.
        let since_log = humantime::format_rfc3339_micros(since).to_string();
        let mut out = Vec::new();
        for n in self.node_names() {
            let Ok(inst) = self.cluster.instance(&n) else {
                continue;
            };
            let data = inst.data_dir().to_owned();
            let (Some(dir), Some(name)) = (data.parent(), data.file_name()) else {
                continue;
            };
            let prefix = format!("{}.diverged-", name.to_string_lossy());
            // A re-clone after pg_rewind lost its source mid-copy is what pg_rewind's docs ask
            // for (the target is then not in a recoverable state), not a missed rewind.
            let log = std::fs::read_to_string(self.root.join(format!("{n}-agent.log")))
                .unwrap_or_default();
            let interrupted = log.lines().any(|l| {
                l.get(..since_log.len())
                    .is_some_and(|t| t >= since_log.as_str())
                    && l.contains("unexpected result while fetching remote files")
            });
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let Some(at) = file.strip_prefix(&prefix) else {
                    continue;
                };
                // An earlier trial's (the suffix is its time in seconds).
                if at.parse::<u64>().is_ok_and(|at| at + 1 < since_s) {
                    continue;
                }
                if !interrupted {
                    out.push(format!("{n}: {}", e.path().display()));
                }
            }
        }
        out
    }

    /// The etcd leader's index in [`Self::etcd`].
    pub async fn etcd_leader(&self) -> anyhow::Result<usize> {
        for (k, m) in self.etcd.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let addr = self.net.host(m.host).addr;
            let Ok(st) = etcd_post(addr, "/v3/maintenance/status", serde_json::json!({})).await
            else {
                continue;
            };
            // uint64 ids are strings in etcd's JSON.
            let me = st["header"]["member_id"].as_str();
            if me.is_some() && me == st["leader"].as_str() {
                return Ok(k);
            }
        }
        bail!("no etcd member says it is the leader")
    }

    /// SIGKILL of etcd member `k`.
    pub fn kill_etcd(&mut self, k: usize) {
        if let Some(mut c) = self.etcd[k].child.take() {
            if let Err(e) = c.kill() {
                eprintln!("faults: kill etcd {}: {e}", self.etcd[k].name);
            }
            let _ = c.wait();
        }
    }

    /// Starts etcd member `k` again on its data.
    pub fn restart_etcd(&mut self, k: usize) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, self.net.host(m.host).addr))
            .collect();
        let peers = peers.join(",");
        start_etcd(&self.net, &self.root, &mut self.etcd[k], &peers)
    }

    /// Stops the agents (each stops its PostgreSQL), then etcd.
    pub fn shutdown(&mut self) {
        for a in &mut self.agents {
            a.terminate(Duration::from_secs(20));
        }
        self.cluster.stop_all_blocking();
        for k in 0..self.etcd.len() {
            self.kill_etcd(k);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_token(path: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    pgha_postgres::files::write_atomic(path, format!("{hex}\n").as_bytes(), 0o600, None)?;
    Ok(())
}

/// Starts `m` on its host with its data in `<root>/etcd/<name>` (kept across restarts).
fn start_etcd(net: &Net, root: &Path, m: &mut EtcdMember, peers: &str) -> anyhow::Result<()> {
    let bin = pgha_local_cluster::etcd_binary()
        .context("etcd not installed (cargo xtask install-deps installs etcd-server)")?;
    let dir = root.join("etcd").join(&m.name);
    std::fs::create_dir_all(&dir)?;
    let addr = net.host(m.host).addr;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))?;
    let client = format!("http://{addr}:2379");
    let peer = format!("http://{addr}:2380");
    let child = net
        .command(m.host, &bin.display().to_string())
        .args(["--name", &m.name])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", peers])
        .args(["--initial-cluster-token", "pgha-faults"])
        .args(["--listen-metrics-urls", &format!("http://{addr}:2381")])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start etcd {}", m.name))?;
    m.child = Some(child);
    Ok(())
}

/// A request to etcd's JSON gateway (`POST /v3/...`). xtask does not link etcd-client: its
/// build needs protoc, which `cargo xtask install-deps` installs.
async fn etcd_post(
    addr: std::net::Ipv4Addr,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let r = c
        .post(format!("http://{addr}:2379{path}"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(r.json().await?)
}

/// Direct children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: Signal) -> anyhow::Result<()> {
    kill(Pid::from_raw(pid), sig).with_context(|| format!("{sig} to {pid}"))
}

/// A stopped process, continued when this guard drops.
#[derive(Debug)]
pub struct Frozen(pub i32);

impl Frozen {
    pub fn new(pid: i32) -> anyhow::Result<Frozen> {
        signal(pid, Signal::SIGSTOP)?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // The process may be gone (killed meanwhile): nothing to continue then.
        if let Err(e) = signal(self.0, Signal::SIGCONT) {
            eprintln!("faults: {e:#}");
        }
    }
}
