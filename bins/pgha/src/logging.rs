//! Log setup for the CLI (pgha-startup, the one place binaries set it up).

pub fn init(verbose: u8) {
    // A command's spans are not exported: no guard to keep.
    let _logging =
        pgha_startup::init_logging("pgha", pgha_startup::LogProfile::Command { verbose }, None);
}
