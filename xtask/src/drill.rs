//! `cargo xtask drill failover|switchover`: the seed's test-failover.sh, measured.
//!
//! A fresh cluster (etcd, a primary, 2 replicas, their agents) in a temp dir; a client writes one
//! row every ~10 ms, recording each acknowledged id and when; a sampler watches every node for
//! writability. Failover trials SIGKILL the primary's postmaster and agent together; switchover
//! trials ask for a planned switchover. Per trial: RTO (kill to first acknowledged write on the
//! new primary) or write gap, acknowledged writes missing afterwards, two writable primaries seen.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use pgha_config::{PghaConfig, ReplicationMode};
use pgha_local_cluster::{AgentProcess, ClusterSpec, EtcdServer, LocalCluster};
use pgha_postgres::{ConnectParams, StopMode};

use crate::agents::build_binaries;
use crate::bench::median;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Profile {
    /// ttl 8s, loop_wait 500ms (the shipped defaults).
    Default,
    /// ttl 3s, loop_wait 200ms.
    Fast,
}

impl Profile {
    /// (ttl, loop_wait) as pgha.toml spells them.
    pub(crate) fn timings(self) -> (&'static str, &'static str) {
        match self {
            Profile::Default => ("8s", "500ms"),
            Profile::Fast => ("3s", "200ms"),
        }
    }

    pub(crate) fn ttl(self) -> Duration {
        match self {
            Profile::Default => Duration::from_secs(8),
            Profile::Fast => Duration::from_secs(3),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    #[arg(long, default_value_t = 5)]
    pub(crate) trials: usize,
    /// Synchronous replication (`FIRST n`).
    #[arg(long, conflicts_with = "quorum")]
    pub(crate) sync: bool,
    /// Quorum commit (`ANY k`): commits wait for any one of the two standbys.
    #[arg(long)]
    pub(crate) quorum: bool,
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub(crate) profile: Profile,
    /// Disable the confirmed-dead fast path: wait for the lease to expire (what a vanished host
    /// costs).
    #[arg(long)]
    pub(crate) no_fast_path: bool,
    /// Keep the drill's directory (agent and server logs) also when it succeeds.
    #[arg(long)]
    pub(crate) keep: bool,
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Kill the primary's postmaster and agent (SIGKILL) per trial.
    Failover(DrillArgs),
    /// Planned switchover per trial.
    Switchover(DrillArgs),
    /// Lose the primary site; `pgha promote-cluster` on the standby site (a second cluster).
    Dr(crate::drill_dr::DrArgs),
    /// Freeze (SIGSTOP) the primary's agent for 3 x TTL under a direct writer, then thaw it.
    FrozenAgent(crate::drill_frozen::FrozenArgs),
}

pub async fn run(cmd: DrillCommand) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    crate::deps::ensure_ha()?;
    let bin_dir = build_binaries()?;
    let (args, switchover) = match cmd {
        DrillCommand::Failover(a) => (a, false),
        DrillCommand::Switchover(a) => (a, true),
        DrillCommand::Dr(a) => return crate::drill_dr::run(&a, &bin_dir).await,
        DrillCommand::FrozenAgent(a) => return crate::drill_frozen::run(&a, &bin_dir).await,
    };
    let root = std::env::temp_dir().join(format!("pgha-drill-{}", std::process::id()));
    let result = drill(&root, &bin_dir, &args, switchover).await;
    match &result {
        Ok(ExitCode::SUCCESS) if !args.keep => {
            let _ = std::fs::remove_dir_all(&root);
        }
        _ => eprintln!(
            "drill: logs kept in {} (agents: *-agent.log, servers: nodes/*/*.log)",
            root.display()
        ),
    }
    result
}

pub(crate) struct Harness {
    pub(crate) cluster: LocalCluster,
    pub(crate) agents: Vec<AgentProcess>,
    _etcd: EtcdServer,
    bin_dir: std::path::PathBuf,
}

impl Harness {
    pub(crate) fn params(&self) -> Vec<(String, ConnectParams)> {
        node_params(&self.cluster)
    }

    pub(crate) fn agent_index(&self, node: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.node == node)
    }

    pub(crate) fn restart_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let log = self.cluster.root().join(format!("{node}-agent.log"));
        let a = AgentProcess::spawn(
            &self.bin_dir.join("pgha-agent"),
            &self.cluster.config_path(),
            node,
            &log,
        )?;
        match self.agent_index(node) {
            Some(i) => self.agents[i] = a,
            None => self.agents.push(a),
        }
        Ok(())
    }
}

/// Each node's connection parameters, with a short connect timeout (a dead node must not slow
/// a sampler down).
pub(crate) fn node_params(cluster: &LocalCluster) -> Vec<(String, ConnectParams)> {
    cluster
        .config()
        .nodes
        .iter()
        .filter_map(|n| {
            let mut p = cluster.instance(&n.name).ok()?.connect_params().clone();
            p.connect_timeout = Duration::from_millis(300);
            Some((n.name.clone(), p))
        })
        .collect()
}

/// SIGKILL of `node`'s postmaster (its agent is the caller's to kill).
pub(crate) fn kill_postmaster(cluster: &LocalCluster, node: &str) {
    let running = cluster
        .instance(node)
        .ok()
        .and_then(|i| i.process_state().ok());
    if let Some(pgha_postgres::ProcessState::Running { pid }) = running {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub(crate) async fn writable(p: &ConnectParams) -> bool {
    match p.connect().await {
        Ok(mut c) => matches!(
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut c)
                .await,
            Ok(false)
        ),
        Err(_) => false,
    }
}

pub(crate) async fn primary(h: &Harness, timeout: Duration) -> anyhow::Result<String> {
    single_writable(&h.params(), timeout).await
}

/// The one node of `params` answering as writable, within `timeout`.
pub(crate) async fn single_writable(
    params: &[(String, ConnectParams)],
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut w = Vec::new();
        for (n, p) in params {
            if writable(p).await {
                w.push(n.clone());
            }
        }
        if w.len() == 1 {
            return Ok(w.remove(0));
        }
        if Instant::now() > deadline {
            bail!("no single primary within {timeout:?} (writable: {w:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug)]
struct Trial {
    old: String,
    new: String,
    seconds: f64,
    acked: usize,
    lost: usize,
    split_brain: bool,
}

/// Etcd, a primary and 2 replicas with their agents, in `root`; returns the harness, the
/// primary, and the cluster's spec. The table `drill (id bigint primary key, at timestamptz)`
/// exists on the primary.
pub(crate) async fn harness(
    root: &std::path::Path,
    bin_dir: &std::path::Path,
    args: &DrillArgs,
) -> anyhow::Result<(Harness, String, ClusterSpec)> {
    std::fs::create_dir_all(root)?;
    let etcd = EtcdServer::start(&root.join("etcd"))?;
    let (ttl, loop_wait) = args.profile.timings();
    let mut spec = ClusterSpec::new("drill", root);
    spec.mode = if args.quorum {
        ReplicationMode::Quorum
    } else if args.sync {
        ReplicationMode::Sync
    } else {
        ReplicationMode::Async
    };
    spec.extra_toml = format!(
        "[dcs]\netcd = [\"{}\"]\nrequest_timeout = \"{}\"\n\n[failover]\nttl = \"{ttl}\"\nloop_wait = \"{loop_wait}\"\npostgres_restart_timeout = \"1s\"\nfast_dead_detection = {}\n",
        etcd.client_url,
        if matches!(args.profile, Profile::Fast) { "500ms" } else { "1s" },
        !args.no_fast_path
    );
    let cluster = LocalCluster::create(&spec)
        .await
        .context("create drill cluster")?;
    cluster.stop_all(StopMode::Fast).await?;
    let mut h = Harness {
        cluster,
        agents: Vec::new(),
        _etcd: etcd,
        bin_dir: bin_dir.to_owned(),
    };
    for n in h
        .cluster
        .config()
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect::<Vec<_>>()
    {
        h.restart_agent(&n)?;
    }
    let current = primary(&h, Duration::from_secs(60)).await?;
    h.cluster.wait_streaming(Duration::from_secs(60)).await?;
    {
        let p = h.cluster.instance(&current)?;
        let mut c = p.connect_params().connect().await?;
        sqlx::query(
            "CREATE TABLE drill (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
        )
        .execute(&mut c)
        .await?;
    }
    Ok((h, current, spec))
}

async fn drill(
    root: &std::path::Path,
    bin_dir: &std::path::Path,
    args: &DrillArgs,
    switchover: bool,
) -> anyhow::Result<ExitCode> {
    let (mut h, mut current, spec) = harness(root, bin_dir, args).await?;
    eprintln!(
        "drill {}: profile {:?}, {} mode, fast path {}, {} trial(s)",
        if switchover { "switchover" } else { "failover" },
        args.profile,
        spec.mode,
        if args.no_fast_path { "off" } else { "on" },
        args.trials
    );
    let next_id = Arc::new(AtomicUsize::new(1));
    let mut trials = Vec::new();
    let config = h.cluster.config().clone();
    for t in 1..=args.trials {
        let trial = run_trial(
            &mut h,
            &current,
            switchover,
            next_id.clone(),
            config.clone(),
        )
        .await;
        match trial {
            Ok(tr) => {
                eprintln!(
                    "trial {t}: {} -> {}  {} {:.3} s  acked {}  lost {}  two writable: {}",
                    tr.old,
                    tr.new,
                    if switchover { "write gap" } else { "RTO" },
                    tr.seconds,
                    tr.acked,
                    tr.lost,
                    if tr.split_brain { "YES" } else { "no" }
                );
                current = tr.new.clone();
                trials.push(tr);
            }
            Err(e) => {
                eprintln!("trial {t} failed: {e:#}");
                break;
            }
        }
    }
    for a in &mut h.agents {
        a.terminate(Duration::from_secs(20));
    }
    h.cluster.stop_all_blocking();
    if trials.is_empty() {
        bail!("no trial completed");
    }
    let mut secs: Vec<f64> = trials.iter().map(|t| t.seconds).collect();
    let lost: usize = trials.iter().map(|t| t.lost).sum();
    let splits = trials.iter().filter(|t| t.split_brain).count();
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "\n{} ({} mode, profile {:?}, fast path {}), {} trials:",
        if switchover {
            "switchover write gap"
        } else {
            "failover RTO (kill to first acknowledged write on the new primary)"
        },
        spec.mode,
        args.profile,
        if args.no_fast_path { "off" } else { "on" },
        trials.len()
    );
    println!(
        "  min {:.3} s   median {:.3} s   max {:.3} s",
        sorted[0],
        median(&mut secs),
        sorted[sorted.len() - 1]
    );
    println!("  acknowledged writes lost: {lost}    trials with two writable primaries: {splits}");
    if lost > 0 && !spec.mode.waits() {
        println!("  (async replication: the last commits before a crash may not have reached any replica)");
    }
    Ok(
        if (lost == 0 || !spec.mode.waits()) && splits == 0 && trials.len() == args.trials {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

async fn run_trial(
    h: &mut Harness,
    old: &str,
    switchover: bool,
    next_id: Arc<AtomicUsize>,
    config: PghaConfig,
) -> anyhow::Result<Trial> {
    let params = h.params();
    let acks: Arc<Mutex<Vec<(i64, Instant, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acks, stop, params, next_id) =
            (acks.clone(), stop.clone(), params.clone(), next_id.clone());
        tokio::spawn(async move {
            let mut conn: Option<(String, sqlx::PgConnection)> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    for (n, p) in &params {
                        if let Ok(mut c) = p.connect().await {
                            if let Ok(false) =
                                sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                                    .fetch_one(&mut c)
                                    .await
                            {
                                conn = Some((n.clone(), c));
                                break;
                            }
                        }
                    }
                }
                if let Some((n, c)) = conn.as_mut() {
                    let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        sqlx::query("INSERT INTO drill (id) VALUES ($1)")
                            .bind(id)
                            .execute(&mut *c),
                    )
                    .await;
                    match r {
                        Ok(Ok(_)) => acks
                            .lock()
                            .map(|mut a| a.push((id, Instant::now(), n.clone())))
                            .unwrap_or(()),
                        _ => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let split = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, split, params) = (stop.clone(), split.clone(), params.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut n = 0;
                for (_, p) in &params {
                    if writable(p).await {
                        n += 1;
                    }
                }
                if n > 1 {
                    split.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    if switchover {
        let target = config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .find(|n| n != old)
            .context("no other node")?;
        let st = std::process::Command::new(h.bin_dir.join("pgha"))
            .args([
                "--config",
                &h.cluster.config_path().display().to_string(),
                "switchover",
                "--to",
                &target,
            ])
            .output()?;
        if !st.status.success() {
            bail!(
                "pgha switchover failed: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
    } else {
        if let Some(i) = h.agent_index(old) {
            h.agents[i].kill();
        }
        kill_postmaster(&h.cluster, old);
    }
    // Wait for a write acknowledged by another node.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (new, seconds) = loop {
        let found = acks.lock().ok().and_then(|a| {
            a.iter()
                .find(|(_, at, n)| *at > t0 && n != old)
                .map(|(_, at, n)| (n.clone(), *at))
        });
        if let Some((n, at)) = found {
            let gap = if switchover {
                // Longest pause between consecutive acknowledgements around the switchover.
                let a = acks.lock().map(|a| a.clone()).unwrap_or_default();
                a.windows(2)
                    .filter(|w| w[1].1 > t0 - Duration::from_millis(500))
                    .map(|w| (w[1].1 - w[0].1).as_secs_f64())
                    .fold(0.0, f64::max)
            } else {
                (at - t0).as_secs_f64()
            };
            break (n, gap);
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("no write acknowledged by a new primary within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let _ = sampler.await;
    if !switchover {
        h.restart_agent(old)?;
    }
    // The old primary rejoins; every node streams before the next trial.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if h.cluster
            .wait_streaming(Duration::from_secs(5))
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("{old} did not rejoin as a streaming replica within 90 s");
        }
    }
    let acked: Vec<i64> = acks
        .lock()
        .map(|a| a.iter().map(|x| x.0).collect())
        .unwrap_or_default();
    let p = h.cluster.instance(&new)?;
    let mut c = p.connect_params().connect().await?;
    let (lo, hi) = (
        acked.iter().min().copied().unwrap_or(0),
        acked.iter().max().copied().unwrap_or(0),
    );
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM drill WHERE id BETWEEN $1 AND $2")
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut c)
        .await?;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    let lost = acked.iter().filter(|i| !present.contains(i)).count();
    Ok(Trial {
        old: old.into(),
        new,
        seconds,
        acked: acked.len(),
        lost,
        split_brain: split.load(Ordering::Relaxed),
    })
}
