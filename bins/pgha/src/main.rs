//! `pgha`: the operator CLI. Thin: parsing and exit codes; the work is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgha::cli::Cli::parse();
    pgha::logging::init(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    rt.block_on(pgha::run(cli))
}
