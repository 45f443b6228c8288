//! The PostgreSQL-control seam: what an agent or a tool may do to one instance.

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::Result;

/// How to stop: the pg_ctl shutdown modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Disconnect clients, checkpoint, stop (the usual one).
    Fast,
    /// Stop at once, crash recovery on next start (fencing).
    Immediate,
}

impl StopMode {
    pub fn as_pg_ctl(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Whether the postmaster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Running { pid: i32 },
    Stopped,
}

/// Control of one PostgreSQL instance. `dyn`-usable so the agent can hold a fake in unit tests.
#[async_trait]
pub trait PgControl: Send + Sync + std::fmt::Debug {
    /// Starts the server and waits until it accepts connections (or fails within the timeout).
    async fn start(&self) -> Result<()>;
    async fn stop(&self, mode: StopMode) -> Result<()>;
    /// Ends recovery: a standby becomes a writable primary.
    async fn promote(&self) -> Result<()>;
    /// Re-reads configuration files (SIGHUP).
    async fn reload(&self) -> Result<()>;
    async fn state(&self) -> Result<ProcessState>;
    /// A new superuser connection.
    async fn connect(&self) -> Result<PgConnection>;
}
