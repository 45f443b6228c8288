//! `cargo xtask drill dr`: the primary site is lost; how long until the standby site takes
//! writes, and how many acknowledged writes did not make it across.
//!
//! Per trial, on this machine's loopback: site A (etcd, a primary, 2 replicas, their agents,
//! WAL archiving into a repository) and site B (a standby cluster of A with its own etcd, a
//! standby leader and a replica). Writers commit rows on A; then every process of site A
//! (agents, postmasters, etcd) is SIGKILLed at once; site B is watched (`--watch`: it must
//! stay read-only, it never promotes by itself), then `pgha promote-cluster` runs against it.
//! Reported: time from `promote-cluster` to the first write acknowledged by site B, the
//! acknowledged writes site B does not have (replication across sites is asynchronous: some
//! may be lost, and they are counted, not hidden), and site B's replication lag at the loss.
//! Site B reaches site A through [`crate::wan::WanLink`] (`--wan-delay` one way).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgha_local_cluster::{AgentProcess, ClusterSpec, EtcdServer, LocalCluster};
use pgha_postgres::StopMode;

use crate::bench::median;
use crate::drill::{kill_postmaster, node_params, writable};

#[derive(Debug, clap::Args)]
pub struct DrArgs {
    /// Trials; each builds both sites afresh (about 20 s each).
    #[arg(long, default_value_t = 1)]
    trials: usize,
    /// Concurrent writers on site A.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Seconds of writes before site A is lost.
    #[arg(long, default_value_t = 3)]
    load_seconds: u64,
    /// One-way latency between the sites (a delaying TCP proxy in front of each site A node);
    /// 0s for plain loopback.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    wan_delay: Duration,
    /// After the loss, watch site B this long (it must stay read-only: it never promotes by
    /// itself) before running `promote-cluster`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    watch: Duration,
}

const FAILOVER_TOML: &str = "ttl = \"8s\"\nloop_wait = \"500ms\"\n";

/// One site: its cluster, agents and etcd.
struct Site {
    cluster: LocalCluster,
    agents: Vec<AgentProcess>,
    etcd: EtcdServer,
}

impl Site {
    async fn start(spec: ClusterSpec, etcd: EtcdServer, bin_dir: &Path) -> anyhow::Result<Self> {
        let cluster = LocalCluster::create(&spec)
            .await
            .with_context(|| format!("create site {}", spec.name))?;
        cluster.stop_all(StopMode::Fast).await?;
        let mut agents = Vec::new();
        for n in &cluster.config().nodes {
            let log = cluster.root().join(format!("{}-agent.log", n.name));
            agents.push(AgentProcess::spawn(
                &bin_dir.join("pgha-agent"),
                &cluster.config_path(),
                &n.name,
                &log,
            )?);
        }
        Ok(Site {
            cluster,
            agents,
            etcd,
        })
    }

    /// Writable nodes right now.
    async fn writable(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (n, p) in node_params(&self.cluster) {
            if writable(&p).await {
                w.push(n);
            }
        }
        w
    }

    /// SIGKILL of every agent, postmaster and the etcd of the site: the site is gone.
    fn lose(&mut self) {
        for a in &mut self.agents {
            a.kill();
        }
        for n in &self.cluster.config().nodes {
            kill_postmaster(&self.cluster, &n.name);
        }
        self.etcd.kill();
    }

    fn stop(&mut self) {
        for a in &mut self.agents {
            a.terminate(Duration::from_secs(20));
        }
        self.cluster.stop_all_blocking();
        self.etcd.kill();
    }
}

#[derive(Debug)]
struct Trial {
    /// `promote-cluster` run to the first write acknowledged by site B.
    seconds: f64,
    promote_cmd_seconds: f64,
    acked: usize,
    lost: usize,
    lag_bytes: Option<i64>,
    /// Site B accepted writes during the watch, before `promote-cluster`.
    b_writable_before: bool,
}

pub async fn run(args: &DrArgs, bin_dir: &Path) -> anyhow::Result<std::process::ExitCode> {
    let root = std::env::temp_dir().join(format!("pgha-drill-dr-{}", std::process::id()));
    eprintln!(
        "drill dr: {} trial(s), {} writer(s), {} s of load; sites on loopback, {:?} one way between them",
        args.trials, args.writers, args.load_seconds, args.wan_delay
    );
    let mut trials = Vec::new();
    let mut failed = false;
    for t in 1..=args.trials {
        let dir = root.join(format!("trial-{t}"));
        match trial(&dir, bin_dir, args).await {
            Ok(tr) => {
                eprintln!(
                    "trial {t}: promote-cluster -> first write on site B {:.3} s (the command {:.3} s)  acked {}  lost {}  lag at loss {}",
                    tr.seconds,
                    tr.promote_cmd_seconds,
                    tr.acked,
                    tr.lost,
                    tr.lag_bytes
                        .map(|b| format!("{b} bytes"))
                        .unwrap_or_else(|| "unknown".into())
                );
                if tr.b_writable_before {
                    eprintln!("trial {t}: SITE B WAS WRITABLE BEFORE promote-cluster");
                    failed = true;
                }
                trials.push(tr);
            }
            Err(e) => {
                eprintln!("trial {t} failed: {e:#}");
                failed = true;
                break;
            }
        }
    }
    if failed {
        eprintln!(
            "drill dr: logs kept in {} (agents: */*-agent.log, servers: */nodes/*/*.log)",
            root.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    if trials.is_empty() {
        bail!("no trial completed");
    }
    let mut secs: Vec<f64> = trials.iter().map(|t| t.seconds).collect();
    let lost: usize = trials.iter().map(|t| t.lost).sum();
    let acked: usize = trials.iter().map(|t| t.acked).sum();
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "\nDR drill (site A lost, site B watched, then `pgha promote-cluster` on site B), {} trial(s):",
        trials.len()
    );
    println!(
        "  promote-cluster to first acknowledged write on site B: min {:.3} s   median {:.3} s   max {:.3} s",
        sorted[0],
        median(&mut secs),
        sorted[sorted.len() - 1]
    );
    println!(
        "  acknowledged writes lost: {lost} of {acked} (asynchronous across sites: what had not reached site B)"
    );
    println!(
        "  one-way latency between the sites {:?}; site B stayed read-only for the {:?} watch after the loss in every trial: {}",
        args.wan_delay,
        args.watch,
        if trials.iter().any(|t| t.b_writable_before) { "NO" } else { "yes" }
    );
    println!("  (the operator's decision time comes on top: site B never promotes by itself)");
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

async fn trial(dir: &Path, bin_dir: &Path, args: &DrArgs) -> anyhow::Result<Trial> {
    let a_dir = dir.join("site-a");
    let b_dir = dir.join("site-b");
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d)?;
    }
    // Site A: archiving into its repository, a slot kept for site B.
    let etcd_a = EtcdServer::start(&a_dir.join("etcd"))?;
    let mut spec = ClusterSpec::new("drill_a", &a_dir);
    spec.permanent_slots = vec![crate::sites::SITE_B_SLOT.into()];
    spec.extra_toml = format!(
        "[dcs]\netcd = [\"{}\"]\n\n[failover]\n{FAILOVER_TOML}",
        etcd_a.client_url
    );
    let exporter_port = pgha_local_cluster::free_port("127.0.0.1")?;
    crate::services::configure(&mut spec, &a_dir, &exporter_port)?;
    crate::services::install_archive_bin(&a_dir, bin_dir)?;
    let mut a = Site::start(spec, etcd_a, bin_dir).await?;
    let a_primary = wait_single_writable(&a, Duration::from_secs(60)).await?;
    a.cluster.wait_streaming(Duration::from_secs(60)).await?;

    // Site B: a standby cluster of A.
    let etcd_b = EtcdServer::start(&b_dir.join("etcd"))?;
    let targets: Vec<String> = a
        .cluster
        .config()
        .nodes
        .iter()
        .map(|n| n.address())
        .collect();
    let wan = crate::wan::WanLink::start(&targets, args.wan_delay).await?;
    let mut spec_b = crate::sites::standby_spec(
        "drill_b",
        &b_dir,
        &a.cluster,
        &etcd_b.client_url,
        1,
        FAILOVER_TOML,
        None,
    );
    if let Some(standby) = spec_b.standby.as_mut() {
        standby.primary_hosts = Some(wan.addresses.clone());
    }
    let mut b = Site::start(spec_b, etcd_b, bin_dir).await?;
    b.cluster.wait_streaming(Duration::from_secs(60)).await?;
    let r = measure(&mut a, &mut b, &a_primary, bin_dir, args).await;
    a.stop();
    b.stop();
    drop(wan);
    r
}

async fn wait_single_writable(site: &Site, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let w = site.writable().await;
        if w.len() == 1 {
            return Ok(w[0].clone());
        }
        if Instant::now() > deadline {
            bail!("no single writable node within {timeout:?} (writable: {w:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure(
    a: &mut Site,
    b: &mut Site,
    a_primary: &str,
    bin_dir: &Path,
    args: &DrArgs,
) -> anyhow::Result<Trial> {
    let a_params = a.cluster.instance(a_primary)?.connect_params().clone();
    {
        let mut c = a_params.connect().await?;
        sqlx::query(
            "CREATE TABLE drill (id bigint PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
        )
        .execute(&mut c)
        .await?;
    }
    let next_id = Arc::new(AtomicUsize::new(1));
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        let (p, next_id, acked, stop) = (
            a_params.clone(),
            next_id.clone(),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let Ok(mut c) = p.connect().await else { return };
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    sqlx::query("INSERT INTO drill (id) VALUES ($1)")
                        .bind(id)
                        .execute(&mut c),
                )
                .await;
                match r {
                    Ok(Ok(_)) => {
                        if let Ok(mut a) = acked.lock() {
                            a.push(id);
                        }
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.load_seconds)).await;
    // Site B's lag as site A sees it, right before the loss.
    let lag_bytes: Option<i64> = async {
        let mut c = a_params.connect().await.ok()?;
        sqlx::query_scalar(
            "SELECT (pg_current_wal_lsn() - flush_lsn)::bigint FROM pg_stat_replication \
             WHERE application_name LIKE 'drill_b-%'",
        )
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten()
    }
    .await;
    a.lose();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<i64> = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let watch_end = Instant::now() + args.watch;
    let mut b_writable_before = false;
    while Instant::now() < watch_end {
        b_writable_before |= !b.writable().await.is_empty();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The operator's action.
    let t0 = Instant::now();
    let t_cmd = t0;
    let out = tokio::process::Command::new(bin_dir.join("pgha"))
        .arg("--config")
        .arg(b.cluster.config_path())
        .args(["promote-cluster", "--no-wait"])
        .output()
        .await
        .context("run pgha promote-cluster")?;
    let promote_cmd_seconds = t_cmd.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "pgha promote-cluster failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // First write acknowledged by site B.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (new, seconds) = 'found: loop {
        for (n, p) in node_params(&b.cluster) {
            if let Ok(mut c) = p.connect().await {
                if sqlx::query("INSERT INTO drill (id) VALUES (-1)")
                    .execute(&mut c)
                    .await
                    .is_ok()
                {
                    break 'found (n, t0.elapsed().as_secs_f64());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("site B took no write within 90 s of promote-cluster");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let w = b.writable().await;
    if w.len() != 1 {
        bail!(
            "site B has {} writable nodes after promote-cluster: {w:?}",
            w.len()
        );
    }
    let mut c = b.cluster.instance(&new)?.connect_params().connect().await?;
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM drill WHERE id > 0")
        .fetch_all(&mut c)
        .await?;
    let present: std::collections::HashSet<i64> = present.into_iter().collect();
    let lost = acked.iter().filter(|i| !present.contains(i)).count();
    Ok(Trial {
        seconds,
        promote_cmd_seconds,
        acked: acked.len(),
        lost,
        lag_bytes,
        b_writable_before,
    })
}
