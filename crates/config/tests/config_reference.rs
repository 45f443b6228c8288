//! docs/CONFIG.md is the reference generated from the config types: fail when it is stale.

#[test]
fn config_reference_is_up_to_date() {
    // The runner's CARGO_MANIFEST_DIR first: a test binary reused from a checkout elsewhere
    // (one target dir for several clones) must read this clone's file.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/../../docs/CONFIG.md");
    let path = path.as_str();
    let want = pgha_config::reference::markdown();
    if std::env::var_os("PGHA_UPDATE_DOCS").is_some() {
        std::fs::write(path, &want).expect("write docs/CONFIG.md");
        return;
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/CONFIG.md is stale: regenerate it with \
         `PGHA_UPDATE_DOCS=1 cargo test -p pgha-config --test config_reference`"
    );
    // The reference covers every section and the keys an operator looks for first.
    for needle in [
        "## `[cluster]`",
        "## `[[nodes]]`",
        "## `[failover]`",
        "## `[tls]`",
        "## `[backup.repository.s3]`",
        "| `maximum_lag_on_failover` |",
        "`async` \\| `sync`",
    ] {
        assert!(want.contains(needle), "reference lacks {needle}");
    }
}
