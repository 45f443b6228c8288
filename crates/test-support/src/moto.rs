//! A real S3-compatible server for tests: moto's server from the venv xtask creates
//! (`$HOME/.cache/pgha-venv`, `moto[server]` pinned), on a free loopback port, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The moto version xtask installs.
pub const MOTO_VERSION: &str = "5.2.5";

/// Where xtask puts the venv.
pub fn venv_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/pgha-venv")
}

/// A running moto server.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    pub port: u16,
    _port: pgha_local_cluster::PortReservation,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers.
    pub fn start() -> anyhow::Result<MotoServer> {
        let bin = venv_dir().join("bin/moto_server");
        if !bin.exists() {
            bail!(
                "{} is missing: run `cargo xtask install-deps` (creates the venv with moto[server]=={MOTO_VERSION})",
                bin.display()
            );
        }
        let res = pgha_local_cluster::free_port("127.0.0.1")?;
        let port = res.port;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut server = MotoServer {
            child,
            port,
            _port: res,
        };
        let t = Instant::now();
        loop {
            if server.request("GET", "/").is_ok() {
                return Ok(server);
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                bail!("moto_server exited early ({st})");
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("moto_server did not answer on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto does not check signatures, so a plain request does).
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let status = self.request("PUT", &format!("/{name}"))?;
        if !(200..300).contains(&status) {
            bail!("creating bucket {name} answered HTTP {status}");
        }
        Ok(())
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let status = buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status in moto's answer")?;
        Ok(status)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
