//! `cargo xtask bench exporter`: our pgha-exporter (release build) and Debian's
//! prometheus-postgres-exporter against the same single instance in one run: scrape latency
//! median and p99, RSS, CPU time per scrape, number of series, and the ratios.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgha_local_cluster::{free_port, ClusterSpec, LocalCluster};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured scrapes per exporter (after 10 warm-up scrapes).
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
}

const BASELINE: &str = "/usr/bin/prometheus-postgres-exporter";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(Args { scrapes }: Args) -> anyhow::Result<ExitCode> {
    crate::deps::ensure_postgres()?;
    if !Path::new(BASELINE).exists() {
        crate::deps::ensure(&["prometheus-postgres-exporter"])?;
    }
    let ours_bin = build_release()?;
    let root = std::env::temp_dir().join(format!("pgha-bench-exporter-{}", std::process::id()));
    let mut spec = ClusterSpec::new("bench", &root);
    spec.replicas = 0;
    let cluster = LocalCluster::create(&spec)
        .await
        .context("create cluster")?;
    let result = measure(&cluster, &ours_bin, scrapes);
    cluster.purge().await.ok();
    let (ours, theirs) = result?;
    println!(
        "\nbench exporter: one PostgreSQL 15 instance, {scrapes} scrapes each, alternating (10 warm-up)"
    );
    println!(
        "  {:<26} {:>14} {:>16} {:>8}",
        "", "pgha-exporter", "postgres_exporter", "ratio"
    );
    let row = |name: &str, a: f64, b: f64, unit: &str, prec: usize| {
        println!(
            "  {name:<26} {:>11.prec$} {unit:<2} {:>13.prec$} {unit:<2} {:>7.2}x",
            a,
            b,
            a / b
        );
    };
    row(
        "scrape latency median",
        ours.median_ms,
        theirs.median_ms,
        "ms",
        2,
    );
    row("scrape latency p99", ours.p99_ms, theirs.p99_ms, "ms", 2);
    row("RSS after the scrapes", ours.rss_mb, theirs.rss_mb, "MB", 1);
    row("CPU time per scrape", ours.cpu_ms, theirs.cpu_ms, "ms", 2);
    row("series", ours.series as f64, theirs.series as f64, "", 0);
    println!("  goal: latency <= 0.5x and RSS <= 0.5x postgres_exporter's");
    let top: Vec<String> = ours
        .collectors
        .iter()
        .take(6)
        .map(|(name, ms)| format!("{name} {ms:.2}"))
        .collect();
    println!(
        "  pgha-exporter's slowest collectors (median ms): {}",
        top.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug)]
struct Figures {
    median_ms: f64,
    p99_ms: f64,
    rss_mb: f64,
    cpu_ms: f64,
    series: usize,
    /// (collector, median ms), slowest first; ours only.
    collectors: Vec<(String, f64)>,
}

fn build_release() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: building pgha-exporter (release)");
    let st = crate::cargo()
        .args(["build", "--release", "-p", "pgha-exporter"])
        .status()
        .context("run cargo build")?;
    if !st.success() {
        bail!("cargo build --release -p pgha-exporter failed ({st})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    Ok(target.join("release/pgha-exporter"))
}

fn measure(
    cluster: &LocalCluster,
    ours_bin: &Path,
    scrapes: usize,
) -> anyhow::Result<(Figures, Figures)> {
    let node = cluster.first_node().clone();
    let password = cluster
        .config()
        .postgres
        .superuser_password
        .as_ref()
        .context("cluster has no superuser password")?
        .read()?;
    let ours_addr = format!("127.0.0.1:{}", free_port("127.0.0.1")?.port);
    let ours = Proc(
        Command::new(ours_bin)
            .arg("--config")
            .arg(cluster.config_path())
            .args(["--listen", &ours_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start pgha-exporter")?,
    );
    let theirs_addr = format!("127.0.0.1:{}", free_port("127.0.0.1")?.port);
    let theirs = Proc(
        Command::new(BASELINE)
            .arg(format!("--web.listen-address={theirs_addr}"))
            // The password goes through the environment, never the command line.
            .env(
                "DATA_SOURCE_NAME",
                format!(
                    "postgresql://postgres:{}@{}/postgres?sslmode=disable",
                    password.expose(),
                    node.address()
                ),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start prometheus-postgres-exporter")?,
    );
    wait_listening(&ours_addr)?;
    wait_listening(&theirs_addr)?;
    run_scrapes(&ours, &ours_addr, &theirs, &theirs_addr, scrapes)
}

fn wait_listening(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// GET /metrics over HTTP/1.0; the body.
fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP head")?;
    if !head.contains(" 200 ") {
        bail!("{addr}: {head}");
    }
    Ok(body.to_owned())
}

/// (utime + stime in seconds, RSS in bytes) of `pid`.
fn proc_usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> f64 { f.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let cpu = (ticks(14) + ticks(15)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((cpu, rss_kb * 1024.0))
}

/// Warm-up, then `n` rounds each scraping ours then theirs, so both see the same load.
fn run_scrapes(
    ours: &Proc,
    ours_addr: &str,
    theirs: &Proc,
    theirs_addr: &str,
    n: usize,
) -> anyhow::Result<(Figures, Figures)> {
    let n = n.max(1);
    let (mut body_a, mut body_b) = (String::new(), String::new());
    for _ in 0..10 {
        body_a = scrape(ours_addr)?;
        body_b = scrape(theirs_addr)?;
    }
    let (cpu_a0, _) = proc_usage(ours.0.id())?;
    let (cpu_b0, _) = proc_usage(theirs.0.id())?;
    let (mut lat_a, mut lat_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut collectors: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..n {
        let t = Instant::now();
        body_a = scrape(ours_addr)?;
        lat_a.push(t.elapsed().as_secs_f64() * 1000.0);
        for (name, ms) in collector_durations(&body_a) {
            collectors.entry(name).or_default().push(ms);
        }
        let t = Instant::now();
        body_b = scrape(theirs_addr)?;
        lat_b.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (cpu_a1, rss_a) = proc_usage(ours.0.id())?;
    let (cpu_b1, rss_b) = proc_usage(theirs.0.id())?;
    let mut ours = figures(lat_a, &body_a, cpu_a1 - cpu_a0, rss_a, n);
    ours.collectors = collectors
        .into_iter()
        .map(|(name, mut v)| (name, super::median(&mut v)))
        .collect();
    ours.collectors.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok((ours, figures(lat_b, &body_b, cpu_b1 - cpu_b0, rss_b, n)))
}

/// `pg_scrape_collector_duration_seconds{collector}` of a scrape, in ms.
fn collector_durations(body: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("pg_scrape_collector_duration_seconds{collector=\""))
        .filter_map(|rest| {
            let (name, value) = rest.split_once("\"} ")?;
            Some((name.to_owned(), value.trim().parse::<f64>().ok()? * 1000.0))
        })
        .collect()
}

fn figures(mut lat: Vec<f64>, body: &str, cpu: f64, rss: f64, n: usize) -> Figures {
    lat.sort_by(f64::total_cmp);
    let p99 = lat[((lat.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(lat.len() - 1)];
    let series = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    Figures {
        median_ms: super::median(&mut lat),
        p99_ms: p99,
        rss_mb: rss / 1_048_576.0,
        cpu_ms: cpu * 1000.0 / n as f64,
        series,
        collectors: Vec::new(),
    }
}
