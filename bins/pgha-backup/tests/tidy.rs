//! docs/QUICKREF.md has a line for every `pgha-backup` subcommand.

use clap::CommandFactory;
use pgha_test_support::tidy;

#[test]
fn quickref_names_every_pgha_backup_subcommand() -> anyhow::Result<()> {
    let quickref = std::fs::read_to_string(tidy::workspace_root().join("docs/QUICKREF.md"))?;
    let missing =
        tidy::quickref_missing("pgha-backup", &pgha_backup::cli::Cli::command(), &quickref);
    assert!(missing.is_empty(), "docs/QUICKREF.md lacks: {missing:?}");
    Ok(())
}
