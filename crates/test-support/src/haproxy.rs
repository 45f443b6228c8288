//! A real HAProxy (Debian's `haproxy`, installed by `cargo xtask install-deps`) for tests:
//! started in the foreground from a generated config, killed on drop, its server states read
//! from the admin socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    pub log: PathBuf,
}

/// One backend server as HAProxy sees it (`show stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub proxy: String,
    pub server: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `no check`, ...
    pub status: String,
}

impl Haproxy {
    /// Writes `dir/haproxy.cfg` (a `global` section with the admin socket, then `body`),
    /// checks it with `haproxy -c`, and starts HAProxy in the foreground.
    pub fn start(dir: &Path, body: &str) -> anyhow::Result<Haproxy> {
        if !Path::new(HAPROXY).exists() {
            bail!("{HAPROXY} is missing: run `cargo xtask install-deps` (Debian package haproxy)");
        }
        let socket = dir.join("haproxy.sock");
        let cfg = dir.join("haproxy.cfg");
        let text = format!(
            "global\n    maxconn 200\n    stats socket {} mode 600 level admin\n\n{body}",
            socket.display()
        );
        std::fs::write(&cfg, text).with_context(|| format!("write {}", cfg.display()))?;
        let check = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .context("run haproxy -c")?;
        if !check.status.success() {
            bail!(
                "haproxy -c -f {}: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start haproxy")?;
        let mut h = Haproxy { child, socket, log };
        let t = Instant::now();
        while h.servers().is_err() {
            if let Ok(Some(st)) = h.child.try_wait() {
                bail!(
                    "haproxy exited early ({st}): {}",
                    std::fs::read_to_string(&h.log).unwrap_or_default()
                );
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("haproxy's admin socket did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(h)
    }

    /// Every backend server's state (`show stat` on the admin socket).
    pub fn servers(&self) -> anyhow::Result<Vec<ServerState>> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"show stat\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let mut lines = text.lines();
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .with_context(|| format!("unexpected show stat answer: {text:?}"))?;
        let col = |name: &str| header.split(',').position(|c| c == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            bail!("show stat header lacks pxname/svname/status: {header}");
        };
        Ok(lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| !matches!(f.get(sv), Some(&"FRONTEND" | &"BACKEND")))
            .map(|f| ServerState {
                proxy: f.get(px).unwrap_or(&"").to_string(),
                server: f.get(sv).unwrap_or(&"").to_string(),
                status: f.get(st).unwrap_or(&"").to_string(),
            })
            .collect())
    }

    /// The servers of `proxy` HAProxy routes new connections to: `UP`, and also `UP 1/2`
    /// (one failed check, still routed until `fall` checks failed).
    pub fn up(&self, proxy: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .servers()?
            .into_iter()
            .filter(|s| s.proxy == proxy && s.status.starts_with("UP"))
            .map(|s| s.server)
            .collect())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            tracing::warn!("kill haproxy: {e}");
        }
        if let Err(e) = self.child.wait() {
            tracing::warn!("wait for haproxy: {e}");
        }
    }
}
