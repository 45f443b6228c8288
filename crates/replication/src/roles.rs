//! The replication role.

use sqlx::PgConnection;

use pgha_config::Secret;
use pgha_postgres::scram;
use pgha_postgres::sql::{quote_ident, quote_literal};

use crate::{ReplicationError, Result};

/// Creates `user` with REPLICATION LOGIN, or updates its password if it exists. The password
/// is sent as a SCRAM verifier computed here, so the plain text never reaches the server.
pub async fn ensure_replication_role(
    conn: &mut PgConnection,
    node: &str,
    user: &str,
    password: &Secret,
) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .map_err(ReplicationError::query(node, "look up replication role"))?;
    let verb = if exists { "ALTER" } else { "CREATE" };
    let stmt = format!(
        "{verb} ROLE {} WITH REPLICATION LOGIN PASSWORD {}",
        quote_ident(user),
        quote_literal(&scram::verifier(password))
    );
    sqlx::query(&stmt)
        .execute(&mut *conn)
        .await
        .map_err(ReplicationError::query(node, "create replication role"))?;
    Ok(())
}
