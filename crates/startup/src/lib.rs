//! What every pgha binary does at start, in one place (so a binary needs neither the `pgha`
//! CLI crate nor etcd for it):
//!
//! - [`load_config`]: `--config PATH`, else `PGHA_CONFIG`, else `./pgha.toml`, loaded and
//!   validated; errors name the file and how it was chosen;
//! - [`error_chain`]: an error and its causes on one line, each cause once;
//! - [`init_logging`]: stderr logs (plain text unless stderr is a terminal), `RUST_LOG`
//!   overrides, OTLP span export when an endpoint is given.

use std::path::Path;

use pgha_config::{ConfigError, ConfigSource, LoadedConfig};

pub use pgha_config::error_chain;
pub use pgha_telemetry::OtlpGuard;

/// Loads the config chosen by `flag` / `PGHA_CONFIG` / `./pgha.toml`.
pub fn load_config(flag: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    pgha_config::load(ConfigSource::locate(flag))
}

/// How a binary logs.
#[derive(Debug, Clone, Copy)]
pub enum LogProfile {
    /// A command: warnings by default, `-v` info, `-vv` debug.
    Command { verbose: u8 },
    /// A long-running service: info by default (sqlx at warn), with module paths.
    Service,
}

/// Installs the logging of `service` (its `service.name` in exported telemetry). Keep the
/// guard alive: dropping it flushes spans not yet exported.
pub fn init_logging(
    service: &str,
    profile: LogProfile,
    otlp_endpoint: Option<&str>,
) -> Option<OtlpGuard> {
    let (verbose, with_target, default_filter) = match profile {
        LogProfile::Command { verbose } => (verbose, false, None),
        LogProfile::Service => (1, true, Some("info,sqlx=warn".to_string())),
    };
    pgha_telemetry::init(&pgha_telemetry::Settings {
        verbose,
        with_target,
        otlp_endpoint: otlp_endpoint.map(str::to_string),
        service_name: service.to_string(),
        default_filter,
    })
}
