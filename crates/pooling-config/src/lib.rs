//! PgBouncer in front of a pgha cluster: `pgbouncer.ini` and `userlist.txt` rendered from
//! `[pooling]` in pgha.toml and the live cluster (who is primary, which replicas answer), the
//! admin console (RELOAD, PAUSE, RESUME), and a loop that follows the primary.
//!
//! Each database in `pooling.databases` gets a read-write entry (`app`, to the primary) and a
//! read-only entry (`app_ro`, to the replicas). Rendering is a pure function of the config, the
//! [`Topology`] and the users' SCRAM secrets, so `pgha-pgbouncer render` shows exactly what runs.

mod checks;
mod console;
mod error;
mod follow;
mod install;
mod process;
mod render;
mod secrets;
mod topology;

pub use checks::{auth_setup_sql, check, problems, AUTH_QUERY, RENDERED_KEYS};
pub use console::{paused, AdminConsole, ConsoleTarget};
pub use error::{PoolingError, Result};
pub use follow::{
    apply, follow, render_live, FollowEvent, Follower, LeaderSource, PollingLeaderSource,
};
pub use install::{install, InstalledFiles};
pub use process::{program as pgbouncer_program, start_detached, terminate, PgBouncerProcess};
pub use render::{render_ini, render_userlist, tls_dir, RenderedConfig, TlsFiles};
pub use secrets::{fetch_scram_secrets, userlist_roles, UserSecret};
pub use topology::{Backend, Topology};

/// The `[pooling]` section, or an error naming the config file's missing section.
pub fn section(config: &pgha_config::PghaConfig) -> Result<&pgha_config::PoolingSection> {
    config
        .pooling
        .as_ref()
        .ok_or(PoolingError::NoPoolingSection)
}
