//! `pgha-exporter` entry point: parse the CLI, run the server on a tokio runtime.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgha_exporter::Cli::parse();
    // One thread: a scrape is a handful of queries in flight at once and a little encoding;
    // a second worker only adds cross-thread wakeups (measured: more CPU per scrape).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha-exporter: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(pgha_exporter::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgha-exporter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
