//! `cargo xtask drill frozen-agent`: the primary's agent is frozen (SIGSTOP), not killed.
//!
//! A fresh cluster (etcd, a primary, 2 replicas, their agents). Two writers insert one row every
//! ~10 ms: one pinned to the first primary over a direct connection (it reconnects to that node
//! only, as a client with a stale address would), one that looks for whichever node is
//! writable. A sampler asks every node `pg_is_in_recovery()` every 50 ms. Each trial freezes
//! the primary's `pgha-agent` alone (its PostgreSQL keeps running) for `--freeze` (3 x TTL by
//! default), then thaws it. Reported per trial: when the old primary stopped taking writes and
//! when another node became writable (both from the SIGSTOP), samples with two writable nodes,
//! writes the old primary acknowledged after another node was writable, acknowledged writes
//! missing from the final primary, and how long the old primary took to rejoin as a streaming
//! replica after the thaw.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgha_postgres::ConnectParams;

use crate::bench::median;
use crate::drill::{harness, primary, writable, DrillArgs, Harness, Profile};

#[derive(Debug, clap::Args)]
pub struct FrozenArgs {
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Synchronous replication.
    #[arg(long)]
    sync: bool,
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    profile: Profile,
    /// How long the agent stays frozen [default: 3 x the profile's TTL].
    #[arg(long, value_parser = humantime::parse_duration)]
    freeze: Option<Duration>,
}

/// Acknowledged inserts: (id, when, node that acknowledged it).
type Acks = Arc<Mutex<Vec<(i64, Instant, String)>>>;

/// Writability samples: (when, the nodes that answered `pg_is_in_recovery() = false`).
type Samples = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

#[derive(Debug)]
struct Trial {
    old: String,
    new: Option<String>,
    /// SIGSTOP to the old primary's first sample as not writable.
    old_stopped_after: Option<f64>,
    /// SIGSTOP to the first sample with another node writable.
    new_writable_after: Option<f64>,
    two_writable_samples: usize,
    late_acks: usize,
    acked: usize,
    lost: usize,
    /// SIGCONT to the old primary streaming as a replica.
    rejoined_after: Option<f64>,
}

impl Trial {
    fn safe(&self, sync: bool) -> bool {
        self.two_writable_samples == 0
            && self.late_acks == 0
            && (!sync || self.lost == 0)
            && self.rejoined_after.is_some()
    }
}

pub async fn run(args: &FrozenArgs, bin_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let root = std::env::temp_dir().join(format!("pgha-drill-frozen-{}", std::process::id()));
    let result = drill(&root, bin_dir, args).await;
    match &result {
        Ok(ExitCode::SUCCESS) => {
            let _ = std::fs::remove_dir_all(&root);
        }
        _ => eprintln!(
            "drill: logs kept in {} (agents: *-agent.log, servers: nodes/*/*.log)",
            root.display()
        ),
    }
    result
}

async fn drill(
    root: &std::path::Path,
    bin_dir: &std::path::Path,
    args: &FrozenArgs,
) -> anyhow::Result<ExitCode> {
    let base = DrillArgs {
        trials: args.trials,
        sync: args.sync,
        quorum: false,
        profile: args.profile,
        no_fast_path: false,
        keep: false,
    };
    let (mut h, mut current, spec) = harness(root, bin_dir, &base).await?;
    let freeze = args.freeze.unwrap_or(args.profile.ttl() * 3);
    eprintln!(
        "drill frozen-agent: profile {:?}, {} mode, agent frozen for {freeze:?}, {} trial(s)",
        args.profile, spec.mode, args.trials
    );
    let next_id = Arc::new(AtomicUsize::new(1));
    let mut trials = Vec::new();
    for t in 1..=args.trials {
        match run_trial(&mut h, &current, freeze, next_id.clone()).await {
            Ok(tr) => {
                let f = |x: Option<f64>| x.map_or("-".into(), |s| format!("{s:.2} s"));
                eprintln!(
                    "trial {t}: {} -> {}  old stopped taking writes after {}  new writable after {}  two-writable samples {}  late acks on old {}  acked {}  lost {}  rejoined {}",
                    tr.old,
                    tr.new.as_deref().unwrap_or("-"),
                    f(tr.old_stopped_after),
                    f(tr.new_writable_after),
                    tr.two_writable_samples,
                    tr.late_acks,
                    tr.acked,
                    tr.lost,
                    f(tr.rejoined_after),
                );
                if let Some(n) = &tr.new {
                    current = n.clone();
                }
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
    let stat = |v: Vec<f64>| {
        let mut v = v;
        if v.is_empty() {
            return "-".to_string();
        }
        v.sort_by(f64::total_cmp);
        let (lo, hi) = (v[0], v[v.len() - 1]);
        format!("{lo:.2} / {:.2} / {hi:.2} s", median(&mut v))
    };
    println!(
        "\nfrozen agent ({} mode, profile {:?}, frozen {freeze:?}), {} trials (min / median / max):",
        spec.mode,
        args.profile,
        trials.len()
    );
    println!(
        "  old primary stops taking writes after SIGSTOP: {}",
        stat(trials.iter().filter_map(|t| t.old_stopped_after).collect())
    );
    println!(
        "  another node writable after SIGSTOP:           {}",
        stat(trials.iter().filter_map(|t| t.new_writable_after).collect())
    );
    println!(
        "  old primary streaming again after SIGCONT:     {}",
        stat(trials.iter().filter_map(|t| t.rejoined_after).collect())
    );
    println!(
        "  samples with two writable nodes: {}   acks on the old primary after another was writable: {}   acknowledged writes lost: {} of {}",
        trials.iter().map(|t| t.two_writable_samples).sum::<usize>(),
        trials.iter().map(|t| t.late_acks).sum::<usize>(),
        trials.iter().map(|t| t.lost).sum::<usize>(),
        trials.iter().map(|t| t.acked).sum::<usize>(),
    );
    let ok = trials.len() == args.trials && trials.iter().all(|t| t.safe(args.sync));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Inserts one row every ~10 ms until `stop`; `pinned` writes only to that node.
fn writer(
    params: Vec<(String, ConnectParams)>,
    pinned: Option<String>,
    next_id: Arc<AtomicUsize>,
    acks: Acks,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn: Option<(String, sqlx::PgConnection)> = None;
        while !stop.load(Ordering::Relaxed) {
            if conn.is_none() {
                for (n, p) in &params {
                    if pinned.as_ref().is_some_and(|pin| pin != n) {
                        continue;
                    }
                    if let Ok(mut c) = p.connect().await {
                        if pinned.is_some()
                            || matches!(
                                sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                                    .fetch_one(&mut c)
                                    .await,
                                Ok(false)
                            )
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
                    Ok(Ok(_)) => {
                        if let Ok(mut a) = acks.lock() {
                            a.push((id, Instant::now(), n.clone()));
                        }
                    }
                    _ => conn = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn signal(pid: Option<u32>, sig: Signal) -> anyhow::Result<()> {
    let pid = pid.context("the agent has no pid")?;
    kill(Pid::from_raw(pid as i32), sig).with_context(|| format!("{sig} to agent {pid}"))
}

async fn run_trial(
    h: &mut Harness,
    old: &str,
    freeze: Duration,
    next_id: Arc<AtomicUsize>,
) -> anyhow::Result<Trial> {
    let params = h.params();
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(
            params.clone(),
            Some(old.to_string()),
            next_id.clone(),
            acks.clone(),
            stop.clone(),
        ),
        writer(
            params.clone(),
            None,
            next_id.clone(),
            acks.clone(),
            stop.clone(),
        ),
    ];
    let samples: Samples = Arc::default();
    let sampler = {
        let (stop, samples, params) = (stop.clone(), samples.clone(), params.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let mut w = Vec::new();
                for (n, p) in &params {
                    if writable(p).await {
                        w.push(n.clone());
                    }
                }
                if let Ok(mut s) = samples.lock() {
                    s.push((at, w));
                }
                tokio::time::sleep(Duration::from_millis(50).saturating_sub(at.elapsed())).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent = h
        .agent_index(old)
        .with_context(|| format!("no agent for {old}"))?;
    let pid = h.agents[agent].pid();
    let t_stop = Instant::now();
    signal(pid, Signal::SIGSTOP)?;
    // The guard of this fault: whatever happens below, the agent is thawed.
    struct Thaw(Option<u32>);
    impl Drop for Thaw {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGCONT);
            }
        }
    }
    let thaw = Thaw(pid);
    tokio::time::sleep(freeze).await;
    let t_cont = Instant::now();
    drop(thaw);
    // The old primary must come back as a streaming replica.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rejoined_after = None;
    let old_params = params
        .iter()
        .find(|(n, _)| n == old)
        .map(|(_, p)| p.clone())
        .context("old primary's params")?;
    while Instant::now() < deadline {
        if streaming(&old_params).await {
            rejoined_after = Some(t_cont.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let _ = sampler.await;
    let new = primary(h, Duration::from_secs(30)).await.ok();

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let after: Vec<&(Instant, Vec<String>)> = samples.iter().filter(|s| s.0 >= t_stop).collect();
    let old_stopped_after = after
        .iter()
        .find(|s| !s.1.iter().any(|n| n == old))
        .map(|s| (s.0 - t_stop).as_secs_f64());
    let new_writable_at = after
        .iter()
        .find(|s| s.1.iter().any(|n| n != old))
        .map(|s| s.0);
    let two_writable_samples = samples.iter().filter(|s| s.1.len() > 1).count();
    let acks = acks.lock().map(|a| a.clone()).unwrap_or_default();
    let late_acks = match new_writable_at {
        Some(at) => acks.iter().filter(|a| a.2 == old && a.1 > at).count(),
        None => 0,
    };
    let lost = match &new {
        Some(n) => lost_on(h, n, &acks).await?,
        None => acks.len(),
    };
    Ok(Trial {
        old: old.into(),
        new,
        old_stopped_after,
        new_writable_after: new_writable_at.map(|at| (at - t_stop).as_secs_f64()),
        two_writable_samples,
        late_acks,
        acked: acks.len(),
        lost,
        rejoined_after,
    })
}

async fn streaming(p: &ConnectParams) -> bool {
    let Ok(mut c) = p.connect().await else {
        return false;
    };
    let row: Result<(bool, Option<String>), _> =
        sqlx::query_as("SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)")
            .fetch_one(&mut c)
            .await;
    matches!(row, Ok((true, Some(s))) if s == "streaming")
}

/// Acknowledged ids missing on `node`.
async fn lost_on(
    h: &Harness,
    node: &str,
    acks: &[(i64, Instant, String)],
) -> anyhow::Result<usize> {
    let p = h.cluster.instance(node)?;
    let mut c = p.connect_params().connect().await?;
    let present: Vec<i64> = sqlx::query_scalar("SELECT id FROM drill")
        .fetch_all(&mut c)
        .await?;
    let present: HashSet<i64> = present.into_iter().collect();
    Ok(acks.iter().filter(|a| !present.contains(&a.0)).count())
}
