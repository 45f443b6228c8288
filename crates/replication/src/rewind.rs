//! pg_rewind: a data dir that diverged from (or was the primary before) the leader follows it
//! again without a full copy.

use std::time::Instant;

use pgha_config::{NodeConfig, PghaConfig, Secret};
use pgha_postgres::sql::pgpass_field;
use pgha_postgres::{files, LocalInstance, PgError};

use crate::Result;

/// pg_rewind of `node`'s stopped data dir from `source` (a running node), as the superuser
/// through a 0600 passfile. It also finishes crash recovery first when needed, and says "no
/// rewind required" when the timelines did not diverge. Returns its last output line.
pub async fn rewind(
    config: &PghaConfig,
    node: &NodeConfig,
    source: &NodeConfig,
    instance: &LocalInstance,
) -> Result<String> {
    let started = Instant::now();
    let passfile = write_superuser_passfile(config, node, instance)?;
    let conninfo = format!(
        "host={} port={} user={} dbname={} passfile={}",
        source.host,
        source.port,
        config.postgres.superuser,
        config.postgres.database,
        passfile.display()
    );
    let mut cmd = instance.command("pg_rewind");
    cmd.arg("-D")
        .arg(instance.data_dir())
        .arg(format!("--source-server={conninfo}"));
    let out = cmd.output().await.map_err(|source| PgError::Spawn {
        program: "pg_rewind".into(),
        source,
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(PgError::CommandFailed {
            program: "pg_rewind".into(),
            action: format!("from {}", source.name),
            status: out.status.to_string(),
            stderr: text.trim().to_owned(),
        }
        .into());
    }
    let last = text.lines().last().unwrap_or("").to_owned();
    tracing::info!(
        node = %node.name,
        source = %source.name,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pg_rewind: {last}"
    );
    Ok(last)
}

/// `<run_dir>/<node>.su.pgpass`: the superuser's password for pg_rewind (0600, server user).
fn write_superuser_passfile(
    config: &PghaConfig,
    node: &NodeConfig,
    instance: &LocalInstance,
) -> Result<std::path::PathBuf> {
    let pw: Option<Secret> = config
        .postgres
        .superuser_password
        .as_ref()
        .map(|s| s.read())
        .transpose()?;
    let path = node.run_dir().join(format!("{}.su.pgpass", node.name));
    let line = format!(
        "*:*:*:{}:{}\n",
        pgpass_field(&config.postgres.superuser),
        pgpass_field(pw.as_ref().map(|p| p.expose()).unwrap_or(""))
    );
    files::write_atomic(&path, line.as_bytes(), 0o600, instance.run_as())?;
    Ok(path)
}
