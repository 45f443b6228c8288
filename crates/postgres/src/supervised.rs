//! PostgreSQL as a child of the calling process that dies with it, and (with a supervisor)
//! that is killed at a deadline the caller keeps moving: the fencing that keeps an orphaned
//! or unsupervised primary from taking writes when its agent is killed or frozen.
//!
//! The postmaster is started through `setpriv --pdeathsig KILL` (which also drops to the
//! server user), so the kernel SIGKILLs it when its parent goes away; its backends then see
//! the postmaster gone and end their sessions. Linux delivers the parent-death signal when
//! the *thread* that forked exits, so every fork happens on one dedicated thread that lives as
//! long as the process. With [`SupervisedInstance::with_supervisor`] the parent is the
//! [supervisor](crate::supervisor), a process of its own that also enforces the deadline.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::supervisor::{deadline_line, SUPERVISE_ARG};
use crate::{LocalInstance, PgControl, PgError, ProcessState, Result, StopMode};

type Spawned = std::io::Result<(u32, Option<ChildStdin>)>;
type SpawnRequest = (Command, mpsc::Sender<Spawned>);

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
                            let r = cmd.spawn().map(|mut c| {
                                let pid = c.id();
                                let stdin = c.stdin.take();
                                children.push(c);
                                (pid, stdin)
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

/// The supervisor's control pipe and the deadline last given (on CLOCK_BOOTTIME).
#[derive(Debug, Default)]
struct Control {
    stdin: Option<ChildStdin>,
    deadline: Option<Duration>,
}

/// A [`LocalInstance`] whose postmaster runs as our child (or our supervisor's) and dies
/// with us.
#[derive(Debug, Clone)]
pub struct SupervisedInstance {
    inner: LocalInstance,
    /// The executable that runs the supervisor (`<it> __pgha-supervise ...`).
    supervisor: Option<PathBuf>,
    control: Arc<Mutex<Control>>,
}

impl SupervisedInstance {
    pub fn new(inner: LocalInstance) -> Self {
        SupervisedInstance {
            inner,
            supervisor: None,
            control: Arc::default(),
        }
    }

    /// Starts the postmaster under a supervisor run by `program` (an executable whose main
    /// hands `__pgha-supervise` to [`crate::supervisor::supervise_main`]), which kills it at
    /// the deadline set with [`Self::set_deadline`].
    pub fn with_supervisor(mut self, program: PathBuf) -> Self {
        self.supervisor = Some(program);
        self
    }

    pub fn local(&self) -> &LocalInstance {
        &self.inner
    }

    /// From now on PostgreSQL is killed at `deadline` (CLOCK_BOOTTIME; None: never) unless a
    /// later call moves it. Also given to the next supervisor started.
    pub fn set_deadline(&self, deadline: Option<Duration>) -> Result<()> {
        let mut c = self.control.lock().map_err(|_| PgError::Spawn {
            program: "supervisor".into(),
            source: std::io::Error::other("control lock poisoned"),
        })?;
        c.deadline = deadline;
        if let Some(stdin) = c.stdin.as_mut() {
            if let Err(e) = stdin
                .write_all(deadline_line(deadline).as_bytes())
                .and_then(|()| stdin.flush())
            {
                // The supervisor is gone (and PostgreSQL with it): the next start makes one.
                c.stdin = None;
                if self.supervisor.is_some()
                    && matches!(self.inner.process_state(), Ok(ProcessState::Running { .. }))
                {
                    return Err(PgError::Spawn {
                        program: "supervisor".into(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
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
        let mut cmd = match &self.supervisor {
            Some(program) => {
                let deadline = self.control.lock().ok().and_then(|c| c.deadline);
                let mut c = Command::new(program);
                c.arg(SUPERVISE_ARG)
                    .arg("--deadline")
                    .arg(
                        deadline
                            .map(|d| d.as_nanos().to_string())
                            .unwrap_or_else(|| "none".into()),
                    )
                    .arg("--")
                    .arg("setpriv")
                    .stdin(Stdio::piped());
                c
            }
            None => {
                let mut c = Command::new("setpriv");
                c.stdin(Stdio::null());
                c
            }
        };
        cmd.args(["--pdeathsig", "KILL"]);
        if let Some(u) = i.run_as() {
            cmd.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .env("HOME", &u.home)
                .env("USER", &u.name);
        }
        crate::instance::strip_libpq_env(&mut cmd);
        cmd.arg("--")
            .arg(i.bins().tool("postgres"))
            .arg("-D")
            .arg(i.data_dir())
            .current_dir("/")
            .env("LC_ALL", "C.UTF-8")
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
        let (pid, stdin) = tokio::task::spawn_blocking(move || rx.recv())
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
        if let Ok(mut c) = self.control.lock() {
            c.stdin = stdin;
        }
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
