//! Generated secrets for a local cluster, stored 0600 beside its pgha.toml.

use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};

use crate::Result;

/// Writes a fresh random password to `path` (0600) unless the file exists.
pub(crate) fn ensure_secret_file(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let value = Alphanumeric.sample_string(&mut rand::rng(), 32);
    pgha_postgres::files::write_atomic(path, format!("{value}\n").as_bytes(), 0o600, None)?;
    Ok(())
}
