//! `LocalInstance`: one PostgreSQL instance on this host, driven with pg_ctl.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgConnection;

use pgha_config::{NodeConfig, PghaConfig, Secret};

use crate::os_user::create_owned_dir;
use crate::{
    files, ConnectParams, OsUser, PgBinaries, PgControl, PgError, ProcessState, Result, StopMode,
};

/// Options for `initdb`.
#[derive(Debug, Clone)]
pub struct InitDbOptions {
    pub superuser: String,
    /// Set as the superuser's password (SCRAM); required for TCP logins.
    pub superuser_password: Option<Secret>,
    /// Page checksums: detect storage corruption, needed by pg_rewind without wal_log_hints.
    pub data_checksums: bool,
}

/// One PostgreSQL instance on this host.
#[derive(Debug, Clone)]
pub struct LocalInstance {
    name: String,
    data_dir: PathBuf,
    log_file: PathBuf,
    bins: PgBinaries,
    run_as: Option<OsUser>,
    connect: ConnectParams,
    timeout: Duration,
    /// CA the server tools verify TLS servers with (PGSSLROOTCERT); None without `[tls]`.
    tool_ssl_root_cert: Option<PathBuf>,
    /// `pg_ctl start -o` (a private port: [`LocalInstance::on_private_port`]).
    start_options: Option<String>,
}

/// libpq tools (and postgres) read PGHOST, PGPASSWORD, ... before a passfile: an operator's
/// variables must not redirect or re-authenticate what we run. Only what we set counts.
pub(crate) fn strip_libpq_env(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
}

impl LocalInstance {
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        log_file: impl Into<PathBuf>,
        bins: PgBinaries,
        run_as: Option<OsUser>,
        connect: ConnectParams,
    ) -> Self {
        LocalInstance {
            name: name.into(),
            data_dir: data_dir.into(),
            log_file: log_file.into(),
            bins,
            run_as,
            connect,
            timeout: Duration::from_secs(60),
            tool_ssl_root_cert: None,
            start_options: None,
        }
    }

    /// The instance of `node` as `config` describes it: binaries found, secret read, OS user
    /// looked up (when we are root).
    pub fn from_config(config: &PghaConfig, node: &NodeConfig) -> Result<Self> {
        let bins = PgBinaries::discover(config.postgres.bin_dir.as_deref())?;
        let run_as = OsUser::for_server(config.os_user_of(node))?;
        let mut inst = Self::new(
            &node.name,
            &node.data_dir,
            node.log_file(),
            bins,
            run_as,
            connect_params(config, node)?,
        );
        if config.tls.is_some() {
            // The tools (pg_basebackup, pg_rewind, psql) run as the server's OS user and
            // verify servers with the CA copy installed beside the data dir for that user.
            inst.tool_ssl_root_cert =
                Some(node.tls_install_dir().join(pgha_config::TLS_INSTALLED_CA));
        }
        Ok(inst)
    }

    /// The same instance, started on a free port of its own host instead of its configured
    /// one (the command line overrides every config file) and connected to there: what runs
    /// while it is made (a bootstrap's recovery and role setup) reaches no client configured
    /// for the cluster, even if whoever started it dies.
    pub fn on_private_port(&self) -> Result<Self> {
        let host = self.bind_host();
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map_err(|source| PgError::Io {
                action: "find a free port on",
                path: PathBuf::from(host),
                source,
            })?
            .port();
        let mut me = self.clone();
        me.connect.port = port;
        me.start_options = Some(format!("-p {port}"));
        Ok(me)
    }

    /// How long start/stop/promote may take before we give up.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }
    pub fn bins(&self) -> &PgBinaries {
        &self.bins
    }
    pub fn run_as(&self) -> Option<&OsUser> {
        self.run_as.as_ref()
    }
    pub fn connect_params(&self) -> &ConnectParams {
        &self.connect
    }

    /// A command for one of the server tools, run as the instance's OS user.
    pub fn command(&self, tool: &str) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(tool))
    }

    /// Blocking form of [`Self::command`], for drop guards.
    pub fn std_command(&self, tool: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(self.bins.tool(tool));
        // The caller's cwd may be unreadable for the server user (e.g. /root): postgres
        // refuses to start when it cannot resolve it.
        cmd.current_dir("/");
        strip_libpq_env(&mut cmd);
        cmd.env("LC_ALL", "C.UTF-8");
        cmd.stdin(std::process::Stdio::null());
        if let Some(ca) = &self.tool_ssl_root_cert {
            // Ignored by libpq on the Unix socket; verify-full on every TCP connection.
            cmd.env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", ca);
        }
        if let Some(u) = &self.run_as {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        cmd
    }

    /// True when the data dir holds a cluster.
    pub fn is_initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Creates the cluster with `initdb` (data checksums, peer auth on the local socket,
    /// scram-sha-256 over TCP), as the server's OS user.
    pub async fn initdb(&self, opts: &InitDbOptions) -> Result<()> {
        if self.is_initialized() {
            return Err(PgError::AlreadyInitialized(self.data_dir.clone()));
        }
        self.prepare_dirs()?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", &opts.superuser, "--encoding=UTF8", "--locale=C"])
            .args([
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ]);
        if opts.data_checksums {
            cmd.arg("--data-checksums");
        }
        // The password reaches initdb through a 0600 file owned by the server user, never argv.
        let pwfile = match &opts.superuser_password {
            Some(pw) => {
                let dir = self.run_dir();
                let f = tempfile::Builder::new()
                    .prefix(".pgha-pw-")
                    .tempfile_in(&dir)
                    .map_err(PgError::io("create temp file in", dir))?;
                files::write_atomic(
                    f.path(),
                    pw.expose().as_bytes(),
                    0o600,
                    self.run_as.as_ref(),
                )?;
                cmd.arg(format!("--pwfile={}", f.path().display()));
                Some(f)
            }
            None => None,
        };
        let out = run(cmd, "initdb", &format!("-D {}", self.data_dir.display())).await;
        drop(pwfile);
        out.map(|_| ())
    }

    fn run_dir(&self) -> PathBuf {
        self.log_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Creates the data dir's parent and the log dir, owned by the server user, and checks that
    /// user can reach them.
    pub fn prepare_dirs(&self) -> Result<()> {
        let run_dir = self.run_dir();
        create_owned_dir(&run_dir, self.run_as.as_ref())?;
        if let Some(parent) = self.data_dir.parent() {
            create_owned_dir(parent, self.run_as.as_ref())?;
        }
        if let Some(u) = &self.run_as {
            u.check_traversable(&self.data_dir)?;
            u.check_traversable(&self.log_file)?;
        }
        Ok(())
    }

    /// Writes a file inside the data dir, atomically, owned by the server user, mode 0600.
    pub fn write_data_file(&self, relative: &str, contents: &str) -> Result<()> {
        files::write_atomic(
            &self.data_dir.join(relative),
            contents.as_bytes(),
            0o600,
            self.run_as.as_ref(),
        )
    }

    /// Polls until a connection succeeds and `SELECT 1` answers, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last;
            match self.connect.connect().await {
                Ok(mut c) => match sqlx::query("SELECT 1").execute(&mut c).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = Some(e.to_string()),
                },
                Err(e) => last = Some(e.to_string()),
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    what: format!("{} accepting connections", self.name),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads postmaster.pid: running when its PID is a live postgres process. A pid file whose
    /// process is gone (or is not postgres, the PID reused after a reboot) is removed so the next
    /// start does not fail on it.
    pub fn process_state(&self) -> Result<ProcessState> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let text = match std::fs::read_to_string(&pid_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ProcessState::Stopped),
            Err(e) => return Err(PgError::io("read", pid_file)(e)),
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<i32>().ok())
        else {
            return Ok(ProcessState::Stopped);
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // A killed postmaster whose parent is gone stays a zombie until init reaps it; it is dead.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'));
        if (comm.trim() == "postgres" || comm.trim() == "postmaster") && !zombie {
            return Ok(ProcessState::Running { pid });
        }
        tracing::warn!(
            "{}",
            PgError::StalePidFile {
                data_dir: self.data_dir.clone(),
                pid
            }
        );
        std::fs::remove_file(&pid_file).map_err(PgError::io("remove stale", pid_file))?;
        Ok(ProcessState::Stopped)
    }

    /// SIGKILL of the postmaster and of every process it started (the fence of last resort),
    /// then waits until it is gone (at most 2 s).
    pub async fn kill(&self) -> Result<()> {
        let ProcessState::Running { pid } = self.process_state()? else {
            return Ok(());
        };
        crate::supervisor::sigkill_tree(pid).map_err(|(p, source)| PgError::Kill {
            node: self.name.clone(),
            pid: p,
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.process_state()? != ProcessState::Stopped {
            if Instant::now() > deadline {
                return Err(PgError::Timeout {
                    what: format!("{} to die after SIGKILL", self.name),
                    timeout: Duration::from_secs(2),
                    last: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Fails with a clear message when something else listens on the instance's port.
    /// The address a port probe binds: the server's own when it is an IP, else loopback.
    fn bind_host(&self) -> &str {
        if self.connect.host.parse::<std::net::IpAddr>().is_ok() {
            self.connect.host.as_str()
        } else {
            "127.0.0.1"
        }
    }

    pub(crate) fn check_port_free(&self) -> Result<()> {
        match std::net::TcpListener::bind((self.bind_host(), self.connect.port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PgError::PortInUse {
                node: self.name.clone(),
                host: self.connect.host.clone(),
                port: self.connect.port,
            }),
            _ => Ok(()),
        }
    }

    /// Last lines of the server log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the server without async, for drop guards; errors are ignored (best effort).
    pub fn stop_blocking(&self, mode: StopMode) {
        if matches!(self.process_state(), Ok(ProcessState::Running { .. })) {
            let _ = self
                .std_command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode.as_pg_ctl(), "-w", "-t", "30", "-s"])
                .output();
        }
    }

    /// How long start/stop/promote may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn timeout_secs(&self) -> String {
        self.timeout.as_secs().max(1).to_string()
    }
}

#[async_trait]
impl PgControl for LocalInstance {
    async fn start(&self) -> Result<()> {
        if !self.is_initialized() {
            return Err(PgError::NotInitialized(self.data_dir.clone()));
        }
        if let ProcessState::Running { .. } = self.process_state()? {
            return Ok(());
        }
        self.check_port_free()?;
        self.prepare_dirs()?;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &self.timeout_secs(), "-s"]);
        if let Some(o) = &self.start_options {
            cmd.arg("-o").arg(o);
        }
        match run(cmd, "pg_ctl", "start").await {
            Ok(_) => Ok(()),
            Err(PgError::CommandFailed {
                program,
                action,
                status,
                stderr,
            }) => Err(PgError::CommandFailed {
                program,
                action: format!("{action} of {}", self.name),
                status,
                stderr: format!(
                    "{stderr}\n--- last lines of {} ---\n{}",
                    self.log_file.display(),
                    self.log_tail(15)
                ),
            }),
            Err(e) => Err(e),
        }
    }

    async fn stop(&self, mode: StopMode) -> Result<()> {
        if self.process_state()? == ProcessState::Stopped {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
            "-m",
            mode.as_pg_ctl(),
            "-w",
            "-t",
            &self.timeout_secs(),
            "-s",
        ]);
        run(
            cmd,
            "pg_ctl",
            &format!("stop -m {} of {}", mode.as_pg_ctl(), self.name),
        )
        .await
        .map(|_| ())
    }

    async fn promote(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote").arg("-D").arg(&self.data_dir).args([
            "-w",
            "-t",
            &self.timeout_secs(),
            "-s",
        ]);
        run(cmd, "pg_ctl", &format!("promote of {}", self.name))
            .await
            .map(|_| ())
    }

    async fn reload(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(&self.data_dir).arg("-s");
        run(cmd, "pg_ctl", &format!("reload of {}", self.name))
            .await
            .map(|_| ())
    }

    async fn state(&self) -> Result<ProcessState> {
        self.process_state()
    }

    async fn connect(&self) -> Result<PgConnection> {
        self.connect.connect().await
    }
}

/// Superuser connection parameters for `node`.
pub fn connect_params(config: &PghaConfig, node: &NodeConfig) -> Result<ConnectParams> {
    let password = config
        .postgres
        .superuser_password
        .as_ref()
        .map(|s| s.read())
        .transpose()?;
    Ok(ConnectParams {
        host: node.host.clone(),
        port: node.port,
        user: config.postgres.superuser.clone(),
        password,
        database: config.postgres.database.clone(),
        application_name: "pgha".into(),
        connect_timeout: config.postgres.connect_timeout,
        statement_timeout: Some(Duration::from_secs(30)),
        ssl_root_cert: config.tls.as_ref().map(|t| t.ca_file()),
    })
}

/// The processes whose parent is `pid` (from /proc).
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| {
                    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
                    let rest = st.rsplit_once(") ")?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Runs `cmd`, returning its output, or `CommandFailed` with its stderr when it exits non-zero.
pub(crate) async fn run(
    mut cmd: tokio::process::Command,
    program: &str,
    action: &str,
) -> Result<Output> {
    let out = cmd.output().await.map_err(|source| PgError::Spawn {
        program: program.into(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        Err(PgError::CommandFailed {
            program: program.into(),
            action: action.into(),
            status: out.status.to_string(),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_tools_never_inherit_the_callers_libpq_variables() {
        // An operator's PGPASSWORD or PGHOST would override the passfile and the host we pass.
        std::env::set_var("PGPASSWORD", "wrong");
        std::env::set_var("PGHOST", "elsewhere.invalid");
        let bins = PgBinaries {
            dir: PathBuf::from("/nonexistent"),
        };
        let params = ConnectParams {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            application_name: "t".into(),
            connect_timeout: Duration::from_secs(1),
            statement_timeout: None,
            ssl_root_cert: None,
        };
        let inst = LocalInstance::new("n1", "/tmp/d", "/tmp/d.log", bins, None, params);
        let cmd = inst.std_command("pg_rewind");
        let envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(envs.contains(&("PGPASSWORD".into(), None)), "{envs:?}");
        assert!(envs.contains(&("PGHOST".into(), None)), "{envs:?}");
    }
}
