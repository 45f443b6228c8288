//! PostgreSQL as a child of the calling process that dies with it: the fencing that keeps an
//! orphaned primary from taking writes when its agent is killed.
//!
//! The postmaster is started through `setpriv --pdeathsig KILL` (which also drops to the server
//! user), so the kernel SIGKILLs it when its parent goes away; its backends then see the
//! postmaster gone and end their sessions. Linux delivers the parent-death signal when the
//! *thread* that forked exits, so every fork happens on one dedicated thread that lives as long
//! as the process.

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::{LocalInstance, PgControl, PgError, ProcessState, Result, StopMode};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<u32>>);

/// The forking thread: spawns on request, reaps exited children, never exits.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                let mut children: Vec<Child> = Vec::new();
                loop {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok((mut cmd, reply)) => {
                            let r = cmd.spawn().map(|c| {
                                let pid = c.id();
                                children.push(c);
                                pid
                            });
                            let _ = reply.send(r);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // The sender lives in a static: this cannot happen, but if it did the
                        // children would be killed by their parent-death signal on return.
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                }
            })
            .expect("spawning a thread at startup only fails when the process is out of resources"); // see message
        Mutex::new(tx)
    })
}

/// A [`LocalInstance`] whose postmaster runs as our child and dies with us.
#[derive(Debug, Clone)]
pub struct SupervisedInstance {
    inner: LocalInstance,
}

impl SupervisedInstance {
    pub fn new(inner: LocalInstance) -> Self {
        SupervisedInstance { inner }
    }

    pub fn local(&self) -> &LocalInstance {
        &self.inner
    }

    fn postmaster_command(&self) -> Result<Command> {
        let i = &self.inner;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(i.log_file())
            .map_err(PgError::io("open log", i.log_file()))?;
        let log2 = log
            .try_clone()
            .map_err(PgError::io("open log", i.log_file()))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL"]);
        if let Some(u) = i.run_as() {
            cmd.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .env("HOME", &u.home)
                .env("USER", &u.name);
        }
        cmd.arg("--")
            .arg(i.bins().tool("postgres"))
            .arg("-D")
            .arg(i.data_dir())
            .current_dir("/")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        Ok(cmd)
    }
}

#[async_trait]
impl PgControl for SupervisedInstance {
    async fn start(&self) -> Result<()> {
        let i = &self.inner;
        if !i.is_initialized() {
            return Err(PgError::NotInitialized(i.data_dir().to_owned()));
        }
        if let ProcessState::Running { .. } = i.process_state()? {
            return Ok(());
        }
        i.check_port_free()?;
        i.prepare_dirs()?;
        let cmd = self.postmaster_command()?;
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| PgError::Spawn {
                program: "postgres".into(),
                source: std::io::Error::other("spawner lock poisoned"),
            })?
            .send((cmd, tx))
            .map_err(|_| PgError::Spawn {
                program: "postgres".into(),
                source: std::io::Error::other("spawner thread gone"),
            })?;
        let pid = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .ok()
            .and_then(|r| r.ok())
            .ok_or_else(|| PgError::Spawn {
                program: "postgres".into(),
                source: std::io::Error::other("no reply from spawner thread"),
            })?
            .map_err(|source| PgError::Spawn {
                program: "setpriv/postgres".into(),
                source,
            })?;
        let deadline = Instant::now() + i.timeout();
        loop {
            if i.connect_params().connect().await.is_ok() {
                return Ok(());
            }
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            if !alive || Instant::now() > deadline {
                return Err(PgError::CommandFailed {
                    program: "postgres".into(),
                    action: format!("start of {}", i.name()),
                    status: if alive {
                        "timed out".into()
                    } else {
                        "exited".into()
                    },
                    stderr: format!(
                        "--- last lines of {} ---\n{}",
                        i.log_file().display(),
                        i.log_tail(15)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&self, mode: StopMode) -> Result<()> {
        self.inner.stop(mode).await
    }

    async fn promote(&self) -> Result<()> {
        self.inner.promote().await
    }

    async fn reload(&self) -> Result<()> {
        self.inner.reload().await
    }

    async fn state(&self) -> Result<ProcessState> {
        self.inner.state().await
    }

    async fn connect(&self) -> Result<PgConnection> {
        self.inner.connect().await
    }
}
