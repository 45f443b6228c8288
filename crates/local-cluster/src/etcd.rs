//! A single-node etcd on loopback for a local cluster or a test (Debian package etcd-server).
//!
//! Heartbeat and election timeouts are lowered so lease TTLs down to 1 s are honoured (etcd's
//! minimum TTL is 1.5 x its election timeout).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, LocalClusterError, PortReservation, Result};

/// A running etcd. Dropping it kills the process (tests); [`EtcdServer::detach`] keeps it.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    pub client_url: String,
    pub data_dir: PathBuf,
    _ports: Vec<PortReservation>,
}

/// Finds the etcd binary (Debian installs it in /usr/bin).
pub fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Server certificate, key and client CA of an etcd serving TLS ([`EtcdServer::start_tls`]).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdServer {
    /// Starts etcd on free ports with its data in `dir` and its log in `dir/etcd.log`; waits
    /// until it answers.
    pub fn start(dir: &Path) -> Result<Self> {
        let client = free_port("127.0.0.1")?;
        let peer = free_port("127.0.0.1")?;
        let metrics = free_port("127.0.0.1")?;
        Self::start_on(dir, client, peer, metrics, None)
    }

    /// [`Self::start`] serving clients over TLS with `tls`'s server certificate, and asking
    /// each client for a certificate signed by `tls.ca` (`--client-cert-auth`).
    pub fn start_tls(dir: &Path, tls: &EtcdTls) -> Result<Self> {
        let client = free_port("127.0.0.1")?;
        let peer = free_port("127.0.0.1")?;
        let metrics = free_port("127.0.0.1")?;
        Self::start_on(dir, client, peer, metrics, Some(tls))
    }

    /// The ports of the etcd last started in `dir` (written by [`Self::start_on`]).
    pub fn saved_ports(dir: &Path) -> Option<(u16, u16, u16)> {
        let text = std::fs::read_to_string(dir.join("ports")).ok()?;
        let p: Vec<u16> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (p.len() == 3).then(|| (p[0], p[1], p[2]))
    }

    /// Restarts etcd in `dir` on the ports it had, keeping its data.
    pub fn restart(dir: &Path) -> Result<Self> {
        let (c, p, m) = Self::saved_ports(dir).ok_or_else(|| LocalClusterError::Io {
            action: "read etcd ports in",
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no ports file"),
        })?;
        let lock = |port| PortReservation::unchecked(port);
        Self::start_on(dir, lock(c), lock(p), lock(m), None)
    }

    fn start_on(
        dir: &Path,
        client: PortReservation,
        peer: PortReservation,
        metrics: PortReservation,
        tls: Option<&EtcdTls>,
    ) -> Result<Self> {
        let bin = etcd_binary().ok_or_else(|| LocalClusterError::Io {
            action: "find",
            path: PathBuf::from("/usr/bin/etcd"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "etcd not installed (Debian: apt-get install etcd-server)",
            ),
        })?;
        std::fs::create_dir_all(dir).map_err(LocalClusterError::io("create", dir))?;
        let ports = format!("{} {} {}\n", client.port, peer.port, metrics.port);
        std::fs::write(dir.join("ports"), ports)
            .map_err(LocalClusterError::io("write", dir.join("ports")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", client.port);
        let peer_url = format!("http://127.0.0.1:{}", peer.port);
        let log_path = dir.join("etcd.log");
        let log =
            std::fs::File::create(&log_path).map_err(LocalClusterError::io("create", &log_path))?;
        let log2 = log
            .try_clone()
            .map_err(LocalClusterError::io("open", &log_path))?;
        let data_dir = dir.join("data");
        let mut cmd = Command::new(bin);
        if let Some(t) = tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "pgha"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("pgha={peer_url}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", metrics.port),
            ])
            .args([
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "250",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(LocalClusterError::io("start etcd in", dir))?;
        let mut server = EtcdServer {
            child: Some(child),
            client_url,
            data_dir,
            _ports: vec![client, peer, metrics],
        };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let addr = self
            .client_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned();
        loop {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(LocalClusterError::Io {
                        action: "start etcd",
                        path: self.data_dir.clone(),
                        source: std::io::Error::other(format!(
                            "etcd exited ({st}); see etcd.log beside its data dir"
                        )),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(LocalClusterError::Io {
                    action: "start etcd",
                    path: self.data_dir.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "etcd did not listen in time",
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills etcd (a DCS outage in tests).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves etcd running after this handle is gone; returns its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
