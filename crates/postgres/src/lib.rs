//! Control of one PostgreSQL instance: find the binaries, `initdb`, start/stop/promote/reload,
//! wait until ready, connect with sqlx.
//!
//! [`PgControl`] is the seam the failover agent and tests swap; [`LocalInstance`] implements it
//! with `pg_ctl` on this host. When we run as root, every server process runs as the configured
//! unprivileged OS user ([`OsUser`]), because PostgreSQL refuses root.

mod binaries;
mod connect;
mod control;
mod controldata;
mod error;
pub mod files;
mod instance;
mod lsn;
mod os_user;
pub mod scram;
pub mod sql;
mod supervised;
pub mod supervisor;

pub use binaries::PgBinaries;
pub use connect::{verify_full, ConnectParams};
pub use control::{PgControl, ProcessState, StopMode};
pub use controldata::{control_data, ControlData};
pub use error::{PgError, Result};
pub use instance::{connect_params, InitDbOptions, LocalInstance};
pub use lsn::Lsn;
pub use os_user::OsUser;
pub use supervised::SupervisedInstance;
