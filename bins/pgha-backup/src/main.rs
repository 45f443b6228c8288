//! `pgha-backup`: thin entry point; the commands live in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pgha_backup::cli::Cli::parse();
    let _logging = pgha_startup::init_logging(
        "pgha-backup",
        pgha_startup::LogProfile::Command {
            verbose: cli.verbose,
        },
        None,
    );
    if matches!(cli.command, pgha_backup::cli::Command::WalFetch { .. }) {
        // A panic exits 101, which PostgreSQL would read as "not archived" and end recovery
        // on: a panicking wal-fetch must abort recovery like any other failure.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::exit(i32::from(pgha_backup::EXIT_ABORT_RECOVERY));
        }));
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgha-backup: cannot start the async runtime: {e}");
            return pgha_backup::failure_code(&cli);
        }
    };
    rt.block_on(pgha_backup::run(cli))
}
