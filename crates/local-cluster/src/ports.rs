//! Free loopback ports, reserved across processes so parallel tests do not collide.
//!
//! The OS picks a free port (bind to port 0); we then hold an exclusive lock on
//! `/tmp/pgha-ports/<port>.lock` until the reservation drops. The kernel releases the lock when
//! the holder dies, so a crashed test never leaks a reservation.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;

use crate::{LocalClusterError, Result};

/// A port picked as free and locked against other pgha processes while this lives.
#[derive(Debug)]
pub struct PortReservation {
    pub port: u16,
    _lock: Option<File>,
}

impl PortReservation {
    /// A known port (e.g. one a service had before), locked when the lock is free.
    pub fn unchecked(port: u16) -> Self {
        let path = lock_dir().join(format!("{port}.lock"));
        let _ = std::fs::create_dir_all(lock_dir());
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()
            .filter(|f| f.try_lock().is_ok());
        PortReservation { port, _lock: lock }
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("pgha-ports")
}

/// A free TCP port on `host`, reserved until the returned guard drops.
pub fn free_port(host: &str) -> Result<PortReservation> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).map_err(LocalClusterError::io("create", &dir))?;
    for _ in 0..64 {
        let listener =
            TcpListener::bind((host, 0)).map_err(|source| LocalClusterError::NoFreePort {
                host: host.into(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| LocalClusterError::NoFreePort {
                host: host.into(),
                source,
            })?
            .port();
        let path = dir.join(format!("{port}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(LocalClusterError::io("open", &path))?;
        if file.try_lock().is_ok() {
            return Ok(PortReservation {
                port,
                _lock: Some(file),
            });
        }
    }
    Err(LocalClusterError::NoFreePort {
        host: host.into(),
        source: std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every candidate port was reserved",
        ),
    })
}
