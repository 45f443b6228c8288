//! etcd and the pgha agents of the local cluster: built, started detached with pid files in the
//! state dir, stopped by `cluster down`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use pgha_local_cluster::{stop_pid, AgentProcess, EtcdServer};

/// Builds pgha-agent and pgha (same profile and target dir as xtask) and returns the dir holding
/// them.
pub fn build_binaries() -> anyhow::Result<PathBuf> {
    let release = std::env::current_exe()?
        .parent()
        .is_some_and(|d| d.ends_with("release"));
    let mut cmd = crate::cargo();
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "pgha-agent",
        "-p",
        "pgha",
        "-p",
        "pgha-exporter",
        "-p",
        "pgha-backup",
    ]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().context("cargo build of the pgha binaries")?;
    if !st.success() {
        bail!("building pgha-agent, pgha, pgha-exporter and pgha-backup failed ({st})");
    }
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("xtask binary has no parent dir")?;
    Ok(dir)
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The pid in `path` when that process is alive.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| pid_alive(*p))
}

/// Starts etcd in `<root>/etcd` (first time on free ports, later on the same ones) unless its
/// pid file names a live process. Returns the client URL.
pub fn ensure_etcd(root: &Path) -> anyhow::Result<String> {
    let dir = root.join("etcd");
    let pid_file = dir.join("etcd.pid");
    if read_pid(&pid_file).is_some() {
        let (c, _, _) = EtcdServer::saved_ports(&dir).context("etcd ports file missing")?;
        return Ok(format!("http://127.0.0.1:{c}"));
    }
    let server = if EtcdServer::saved_ports(&dir).is_some() {
        EtcdServer::restart(&dir)?
    } else {
        EtcdServer::start(&dir)?
    };
    let url = server.client_url.clone();
    if let Some(pid) = server.detach() {
        std::fs::write(&pid_file, pid.to_string())?;
    }
    Ok(url)
}

/// Starts the agent of every node whose pid file does not name a live process, then waits
/// until the agents have every node streaming (a standby site: every node but its first).
pub async fn ensure_agents(
    root: &Path,
    cluster: &pgha_local_cluster::LocalCluster,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let config_path = cluster.config_path();
    let nodes: Vec<String> = cluster
        .config()
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let dir = root.join("agents");
    std::fs::create_dir_all(&dir)?;
    for n in &nodes {
        let pid_file = dir.join(format!("{n}.pid"));
        if read_pid(&pid_file).is_some() {
            continue;
        }
        let a = AgentProcess::spawn(
            &bin_dir.join("pgha-agent"),
            &config_path,
            n,
            &dir.join(format!("{n}.log")),
        )?;
        if let Some(pid) = a.detach() {
            std::fs::write(&pid_file, pid.to_string())?;
        }
    }
    cluster
        .wait_streaming(Duration::from_secs(90))
        .await
        .with_context(|| {
            format!(
                "the agents did not bring the cluster in {} up; see {}/*.log",
                root.display(),
                dir.display()
            )
        })
}

/// Stops agents (each stops its PostgreSQL) and etcd.
pub fn stop_all(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root.join("agents")) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = read_pid(&e.path()) {
                    stop_pid(pid, Duration::from_secs(30));
                    eprintln!(
                        "xtask: agent {} stopped",
                        e.path().file_stem().unwrap_or_default().to_string_lossy()
                    );
                }
            }
        }
    }
    if let Some(pid) = read_pid(&root.join("etcd/etcd.pid")) {
        stop_pid(pid, Duration::from_secs(10));
        eprintln!("xtask: etcd stopped");
    }
}
