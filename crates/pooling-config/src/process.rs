//! Running PgBouncer: in the foreground (`pgbouncer FILE.ini`, no `-d`) as the unprivileged OS
//! user (PgBouncer refuses root), stopped on drop; or detached for a local cluster.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha_config::PoolingSection;
use pgha_postgres::OsUser;

use crate::{PoolingError, Result};

/// The `pgbouncer` program: `PGBOUNCER` when set, else found on PATH (Debian: /usr/sbin).
pub fn program() -> PathBuf {
    if let Some(p) = std::env::var_os("PGBOUNCER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join("pgbouncer");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("pgbouncer")
}

/// A PgBouncer process we started; SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct PgBouncerProcess {
    /// None once detached.
    child: Option<Child>,
    ini: PathBuf,
    log: PathBuf,
}

fn command(pool: &PoolingSection, log: &Path) -> Result<Command> {
    let run_as = OsUser::for_server(&pool.os_user)?;
    let program = program();
    let mut cmd = Command::new(&program);
    cmd.arg(&pool.ini_path);
    cmd.current_dir("/");
    cmd.stdin(Stdio::null());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(PoolingError::io("open", log))?;
    let err = out.try_clone().map_err(PoolingError::io("open", log))?;
    cmd.stdout(out).stderr(err);
    if let Some(u) = &run_as {
        u.chown(log)?;
        cmd.uid(u.uid).gid(u.gid);
        cmd.env("HOME", &u.home).env("USER", &u.name);
    }
    Ok(cmd)
}

/// Where PgBouncer's stdout/stderr go: `pgbouncer.out` beside the ini (with `logfile` set it
/// logs there too; stderr also carries what it says before opening the log).
fn output_file(pool: &PoolingSection) -> PathBuf {
    pool.ini_path
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("pgbouncer.out")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl PgBouncerProcess {
    /// Starts PgBouncer on the installed `pool.ini_path` and waits (blocking, polling every
    /// 20 ms) until it accepts TCP connections on `listen_addr:listen_port`.
    pub fn start(pool: &PoolingSection, timeout: Duration) -> Result<Self> {
        let log = output_file(pool);
        let mut cmd = command(pool, &log)?;
        let child = cmd.spawn().map_err(|source| PoolingError::Spawn {
            program: program(),
            source,
        })?;
        let mut p = PgBouncerProcess {
            child: Some(child),
            ini: pool.ini_path.clone(),
            log,
        };
        p.wait_ready(pool, timeout)?;
        Ok(p)
    }

    fn wait_ready(&mut self, pool: &PoolingSection, timeout: Duration) -> Result<()> {
        let addr = format!("{}:{}", connect_host(&pool.listen_addr), pool.listen_port);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(PoolingError::Exited {
                    ini: self.ini.clone(),
                    status: status.to_string(),
                    log: tail(&self.log, 15),
                });
            }
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PoolingError::NotReady {
                    ini: self.ini.clone(),
                    addr,
                    timeout,
                    log: tail(&self.log, 15),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (0 once detached).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// PgBouncer's output so far (its log when `logfile` is not set).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Leaves the process running (for `cargo xtask cluster up`); returns its pid.
    pub fn detach(mut self) -> u32 {
        self.child.take().map_or(0, |c| c.id())
    }

    /// SIGTERM and wait up to 5 s, then SIGKILL. Blocking (also used from Drop).
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        terminate(child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgBouncerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts PgBouncer in its own process group (so a terminal's Ctrl-C does not reach it) and
/// leaves it running; returns its pid once it accepts connections.
pub fn start_detached(pool: &PoolingSection, timeout: Duration) -> Result<u32> {
    let log = output_file(pool);
    let mut cmd = command(pool, &log)?;
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|source| PoolingError::Spawn {
        program: program(),
        source,
    })?;
    let mut p = PgBouncerProcess {
        child: Some(child),
        ini: pool.ini_path.clone(),
        log,
    };
    p.wait_ready(pool, timeout)?;
    Ok(p.detach())
}

/// SIGTERM to `pid` (PgBouncer: graceful shutdown). False when no such process.
pub fn terminate(pid: u32) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), Signal::SIGTERM).is_ok())
}

/// The address to reach a listener bound to `listen_addr`.
fn connect_host(listen_addr: &str) -> String {
    match listen_addr.split(',').next().unwrap_or("").trim() {
        "*" | "0.0.0.0" | "" => "127.0.0.1".into(),
        other => other.into(),
    }
}
