//! The one place every pgha binary sets up logging and tracing: [`init`] installs the
//! subscriber (stderr, `RUST_LOG` overrides the level) and, when `[monitoring] otlp_endpoint`
//! is set, a layer that exports finished spans over OTLP/HTTP (JSON encoding). [`otlp`] also
//! exports metric snapshots. No opentelemetry SDK: a small blocking HTTP client on a
//! background thread keeps build time and memory down.

pub mod otlp;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

pub use otlp::{Endpoint, MetricPoint, OtlpGuard};

/// How a binary wants its logs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// 0 warn, 1 info, 2+ debug; `RUST_LOG` overrides.
    pub verbose: u8,
    /// Show the module path of each event.
    pub with_target: bool,
    /// `[monitoring] otlp_endpoint` (`http://host:4318`): export spans there; off when None.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported telemetry.
    pub service_name: String,
    /// The filter when `RUST_LOG` is not set (else from `verbose`).
    pub default_filter: Option<String>,
}

/// Installs the global subscriber once (later calls are no-ops). Keep the returned guard alive:
/// dropping it flushes the spans not yet exported.
pub fn init(settings: &Settings) -> Option<OtlpGuard> {
    let default = match settings.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let default = settings.default_filter.as_deref().unwrap_or(default);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let with_target = settings.with_target;
    // Colour only for a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = move || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(with_target)
    };
    let endpoint = match settings.otlp_endpoint.as_deref().map(Endpoint::parse) {
        Some(Ok(ep)) => Some(ep),
        Some(Err(e)) => {
            eprintln!("otlp_endpoint ignored: {e}");
            None
        }
        None => None,
    };
    match endpoint {
        Some(ep) => {
            let (layer, guard) = otlp::SpanLayer::new(ep, settings.service_name.clone());
            // Spans are exported at info and above whatever the log level says.
            let span_filter = EnvFilter::new("info,sqlx=warn");
            let ok = tracing_subscriber::registry()
                .with(fmt().with_filter(filter))
                .with(layer.with_filter(span_filter))
                .try_init()
                .is_ok();
            ok.then_some(guard)
        }
        None => {
            let _ = tracing_subscriber::registry()
                .with(fmt().with_filter(filter))
                .try_init();
            None
        }
    }
}
