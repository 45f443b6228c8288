//! A real S3-compatible server for tests: moto's server from the venv xtask creates
//! (`$HOME/.cache/pgha-venv`, `moto[server]` pinned), on a free loopback port, killed on drop.
//!
//! moto checks `If-None-Match: *` and then stores the object without a lock between the two
//! (`moto/s3/responses.py`, `put_object`), so two concurrent conditional puts of one key can
//! both succeed. AWS S3 decides them atomically (one wins, the others get 412 or 409), and
//! our repository lock and `wal-push` rely on that. The server is therefore started through
//! [`ATOMIC_CONDITIONAL_PUTS`]: moto's own app, with conditional requests serialized.

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

/// moto's `main()`, except that requests carrying `If-None-Match` or `If-Match` run one at a
/// time (others stay concurrent), which makes moto's check-then-store atomic as on AWS S3.
pub const ATOMIC_CONDITIONAL_PUTS: &str = r#"
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def serialized(environ, start_response):
    if "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ:
        with lock:
            # The body is produced inside the lock: moto stores the object while the
            # response is built.
            return list(app(environ, start_response))
    return app(environ, start_response)

run_simple(host, port, serialized, threaded=True, request_handler=MotoRequestHandler)
"#;

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
        let python = venv_dir().join("bin/python");
        if !bin.exists() || !python.exists() {
            bail!(
                "{} is missing: run `cargo xtask install-deps` (creates the venv with moto[server]=={MOTO_VERSION})",
                bin.display()
            );
        }
        let res = pgha_local_cluster::free_port("127.0.0.1")?;
        let port = res.port;
        let child = Command::new(&python)
            .args([
                "-c",
                ATOMIC_CONDITIONAL_PUTS,
                "127.0.0.1",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start moto with {}", python.display()))?;
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
