//! Log setup for the CLI: delegates to pgha-telemetry, the one place binaries set up tracing.

pub fn init(verbose: u8) {
    pgha_telemetry::init(&pgha_telemetry::Settings {
        verbose,
        with_target: false,
        otlp_endpoint: None,
        service_name: "pgha".into(),
    });
}
