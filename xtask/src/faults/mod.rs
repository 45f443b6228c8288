//! `cargo xtask faults`: the fault-injection suite. Real PostgreSQL, pgha-agent and a 3-member
//! etcd on simulated hosts (network namespaces); faults between "up" and "killed": vanished
//! hosts, partitions, resets, frozen processes, restarts, etcd member and leader loss. An
//! observer independent of the agents samples every node's writability every 50 ms and
//! records every acknowledged write. See docs/RELIABILITY.md.

mod archive;
mod observe;
mod scenarios;
mod steady;
mod world;

use std::process::ExitCode;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgha_config::ReplicationMode;
use pgha_test_support::netns::Net;

use crate::bench::median;
use crate::drill::Profile;
use scenarios::{Report, Run, Scenario};
use world::World;

#[derive(Debug, clap::Args)]
pub struct FaultsArgs {
    /// Run only this scenario (repeat the flag for several) [default: every scenario that
    /// applies to the mode].
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Trials per scenario.
    #[arg(long, default_value_t = 1)]
    trials: usize,
    /// Synchronous replication (no acknowledged write may be lost).
    #[arg(long)]
    sync: bool,
    /// Agent timings.
    #[arg(long, value_enum, default_value_t = Profile::Fast)]
    profile: Profile,
    /// How long etcd stays unreachable in etcd-all-cut.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// Keep the state dir (agent, etcd and server logs) also when every trial passed.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: FaultsArgs) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    crate::deps::ensure_ha()?;
    crate::deps::ensure_netns()?;
    let bin_dir = crate::agents::build_binaries()?;
    let root = std::env::temp_dir().join(format!("pgha-faults-{}", std::process::id()));
    let net = Net::create(world::HOSTS).context("simulated hosts")?;
    // Interrupted (Ctrl-C, SIGTERM): the guards would not run; kill what runs on the hosts
    // and remove them, then exit.
    let teardown = net.teardown();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            eprintln!("faults: cannot watch for SIGTERM");
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("faults: interrupted: stopping every process on the simulated hosts");
        teardown.run();
        std::process::exit(130);
    });
    // Everything below runs on the client host: the observers' connections come from there.
    let client = net.host(world::CLIENT).clone();
    let r2 = root.clone();
    let keep = args.keep;
    let result = std::thread::spawn(move || -> anyhow::Result<Vec<Report>> {
        client.enter()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(drive(net, &r2, &bin_dir, &args))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the faults driver panicked"))?;
    let reports = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faults: logs kept in {}", root.display());
            return Err(e);
        }
    };
    let ok = !reports.is_empty() && reports.iter().all(Report::passed);
    if ok && !keep {
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("faults: remove {}: {e}", root.display());
        }
    } else {
        eprintln!(
            "faults: logs kept in {} (agents: *-agent.log, etcd: etcd/*/etcd.log, servers: nodes/*/*.log)",
            root.display()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn drive(
    net: Net,
    root: &std::path::Path,
    bin_dir: &std::path::Path,
    args: &FaultsArgs,
) -> anyhow::Result<Vec<Report>> {
    let mode = if args.sync {
        ReplicationMode::Sync
    } else {
        ReplicationMode::Async
    };
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::all()
    } else {
        args.scenarios.clone()
    }
    .into_iter()
    .filter(|s| s.applies(mode))
    .collect();
    eprintln!(
        "faults: {} mode, profile {:?}, {} scenario(s) x {} trial(s); building 7 hosts (3 nodes, 3 etcd members, a client)",
        mode,
        args.profile,
        scenarios.len(),
        args.trials
    );
    let t = std::time::Instant::now();
    let mut w = World::create(net, root, bin_dir, mode, args.profile).await?;
    eprintln!("faults: cluster up in {:.1} s", t.elapsed().as_secs_f64());
    let url = w.url()?;
    let mut run = Run {
        w: &mut w,
        next_id: Arc::new(AtomicI64::new(1)),
        url,
        outage: args.outage,
        repeated: false,
    };
    let mut reports = Vec::new();
    'all: for s in &scenarios {
        for trial in 1..=args.trials {
            let t = std::time::Instant::now();
            let r = match run.run(*s).await {
                Ok(r) => r,
                Err(e) => Report {
                    scenario: s.name(),
                    failures: vec![format!("the trial did not complete: {e:#}")],
                    ..Report::default()
                },
            };
            eprintln!(
                "{} trial {trial}: {}  ({:.0} s){}",
                s.name(),
                line(&r),
                t.elapsed().as_secs_f64(),
                if r.passed() {
                    String::new()
                } else {
                    format!("\n  FAILED: {}", r.failures.join("\n  FAILED: "))
                }
            );
            let broken = r
                .failures
                .iter()
                .any(|f| f.starts_with("the trial did not"));
            reports.push(r);
            if broken && run.w.wait_healthy(Duration::from_secs(60)).await.is_err() {
                eprintln!(
                    "faults: the cluster did not recover; the remaining scenarios are not run"
                );
                break 'all;
            }
        }
    }
    w.shutdown();
    print_table(&reports, mode, args);
    Ok(reports)
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{s:.2} s"))
}

fn line(r: &Report) -> String {
    format!(
        "two-writable samples {} of {}  lost {} of {}  late acks {}  promotions {}  to writable {}  primary gap {}{}  healthy after {}",
        r.two_writable,
        r.samples,
        r.lost,
        r.acked,
        r.late_acks,
        r.promotions,
        secs(r.to_writable),
        secs(r.primary_gap),
        r.stopped_after
            .map(|s| format!("  stopped taking writes after {s:.2} s"))
            .unwrap_or_default()
            + &r.restored_missing
                .map(|m| format!("  missing from the restored copy {m}"))
                .unwrap_or_default(),
        secs(r.healthy_after)
    )
}

fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    format!("{lo:.2}/{:.2}/{hi:.2}", median(&mut v))
}

fn print_table(reports: &[Report], mode: ReplicationMode, args: &FaultsArgs) {
    let mut names: Vec<String> = Vec::new();
    for r in reports {
        if !names.contains(&r.scenario) {
            names.push(r.scenario.clone());
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "\nfaults ({mode} mode, profile {:?}): times in seconds, min/median/max\n",
        args.profile
    ));
    out.push_str(&format!(
        "{:<24} {:>6} {:>9} {:>12} {:>6} {:>17} {:>17} {:>17}  {}\n",
        "scenario",
        "trials",
        "2-writ.",
        "lost/acked",
        "late",
        "to writable",
        "primary gap",
        "healthy after",
        "result"
    ));
    let mut json = Vec::new();
    for n in &names {
        let rs: Vec<&Report> = reports.iter().filter(|r| &r.scenario == n).collect();
        let two: usize = rs.iter().map(|r| r.two_writable).sum();
        let lost: usize = rs.iter().map(|r| r.lost).sum();
        let acked: usize = rs.iter().map(|r| r.acked).sum();
        let late: usize = rs.iter().map(|r| r.late_acks).sum();
        let pass = rs.iter().all(|r| r.passed());
        let f = |g: fn(&Report) -> Option<f64>| rs.iter().filter_map(|r| g(r)).collect::<Vec<_>>();
        out.push_str(&format!(
            "{:<24} {:>6} {:>9} {:>12} {:>6} {:>17} {:>17} {:>17}  {}\n",
            n,
            rs.len(),
            two,
            format!("{lost}/{acked}"),
            late,
            spread(f(|r| r.to_writable)),
            spread(f(|r| r.primary_gap)),
            spread(f(|r| r.healthy_after)),
            if pass { "pass" } else { "FAIL" }
        ));
        json.push(serde_json::json!({
            "scenario": n,
            "mode": mode.to_string(),
            "trials": rs.iter().map(|r| serde_json::json!({
                "samples": r.samples,
                "two_writable_samples": r.two_writable,
                "acked": r.acked,
                "lost": r.lost,
                "late_acks": r.late_acks,
                "promotions": r.promotions,
                "to_writable_s": r.to_writable,
                "primary_gap_s": r.primary_gap,
                "stopped_after_s": r.stopped_after,
                "restored_missing": r.restored_missing,
                "healthy_after_s": r.healthy_after,
                "failures": r.failures,
            })).collect::<Vec<_>>(),
            "pass": pass,
        }));
    }
    if args.json {
        eprint!("{out}");
        println!("{}", serde_json::Value::Array(json));
    } else {
        print!("{out}");
    }
}
