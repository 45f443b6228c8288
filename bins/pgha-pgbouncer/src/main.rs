//! `pgha-pgbouncer`: thin entry point; the work is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgha_pgbouncer::Cli::parse();
    let _logging = pgha_startup::init_logging(
        "pgha-pgbouncer",
        pgha_startup::LogProfile::Command {
            verbose: cli.verbose,
        },
        None,
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha-pgbouncer: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(pgha_pgbouncer::run(cli))
}
