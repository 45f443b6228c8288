//! pgha-agent processes for a local cluster or a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{LocalClusterError, Result};

/// One running agent. Dropping it stops it gracefully (SIGTERM: it stops its PostgreSQL).
#[derive(Debug)]
pub struct AgentProcess {
    pub node: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// Starts `bin --config CONFIG --node NODE`, output appended to `log`, in its own process
    /// group so a terminal's Ctrl-C does not reach it.
    pub fn spawn(bin: &Path, config: &Path, node: &str, log: &Path) -> Result<Self> {
        Self::spawn_command(Command::new(bin), bin, config, node, log)
    }

    /// [`Self::spawn`] with `cmd` as the start of the command line: `ip netns exec <ns> <bin>`
    /// runs the agent on a simulated host. `bin` names the program in errors.
    pub fn spawn_command(
        mut cmd: Command,
        bin: &Path,
        config: &Path,
        node: &str,
        log: &Path,
    ) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(LocalClusterError::io("open", log))?;
        let err = out
            .try_clone()
            .map_err(LocalClusterError::io("open", log))?;
        let child = cmd
            .arg("--config")
            .arg(config)
            .args(["--node", node])
            .env(
                "RUST_LOG",
                std::env::var("PGHA_AGENT_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(LocalClusterError::io("start", bin))?;
        Ok(AgentProcess {
            node: node.into(),
            log: log.to_owned(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: the agent dies at once (its PostgreSQL gets the parent-death signal).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `timeout`, then SIGKILL.
    pub fn terminate(&mut self, timeout: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Leaves the agent running after this handle is gone; returns its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(20));
    }
}

/// Sends SIGTERM to `pid` and waits until it is gone (up to `timeout`), then SIGKILL.
pub fn stop_pid(pid: i32, timeout: Duration) -> bool {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if kill(p, None).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
    true
}
