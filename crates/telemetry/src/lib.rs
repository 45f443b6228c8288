//! The one place every pgha binary sets up logging and tracing: `init(Settings)` installs the
//! subscriber (stderr, `RUST_LOG` overrides the level). OTLP export is configured by
//! `[monitoring] otlp_endpoint` and is not implemented yet: asking for it logs a warning.

use tracing_subscriber::EnvFilter;

/// How a binary wants its logs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// 0 warn, 1 info, 2+ debug; `RUST_LOG` overrides.
    pub verbose: u8,
    /// Show the module path of each event.
    pub with_target: bool,
    /// `[monitoring] otlp_endpoint`: where spans and metrics would be exported (OTLP/HTTP).
    pub otlp_endpoint: Option<String>,
}

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(settings: &Settings) {
    let default = match settings.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(settings.with_target)
        .try_init();
    if let Some(ep) = &settings.otlp_endpoint {
        tracing::warn!(endpoint = %ep, "monitoring.otlp_endpoint is set but OTLP export is not implemented in this build; spans and metrics stay local");
    }
}
