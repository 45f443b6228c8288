//! The docs stay true to the code: docs/QUICKREF.md has a line for every `pgha` subcommand,
//! and docs/ARCHITECTURE.md's "may depend on" column matches every Cargo.toml.

use clap::CommandFactory;
use pgha_test_support::tidy;

#[test]
fn quickref_names_every_pgha_subcommand() -> anyhow::Result<()> {
    let root = tidy::workspace_root();
    let quickref = std::fs::read_to_string(root.join("docs/QUICKREF.md"))?;
    let missing = tidy::quickref_missing("pgha", &pgha::cli::Cli::command(), &quickref);
    assert!(missing.is_empty(), "docs/QUICKREF.md lacks: {missing:?}");
    // The check can fail: a made-up subcommand is reported.
    let fake = clap::Command::new("pgha").subcommand(clap::Command::new("frobnicate"));
    assert_eq!(
        tidy::quickref_missing("pgha", &fake, &quickref),
        ["pgha frobnicate"]
    );
    Ok(())
}

#[test]
fn architecture_dependency_column_matches_cargo_toml() -> anyhow::Result<()> {
    let problems = tidy::architecture_mismatches(&tidy::workspace_root())?;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
