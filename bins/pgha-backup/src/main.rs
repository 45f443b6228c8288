//! `pgha-backup`: thin entry point; the commands live in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgha_backup::cli::Cli::parse();
    pgha::logging::init(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha-backup: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(pgha_backup::run(cli))
}
