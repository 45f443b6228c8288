//! The SCRAM secrets of the roles that log in through PgBouncer, copied from pg_authid.
//!
//! With the server's own secret (same salt and iteration count) in userlist.txt, PgBouncer
//! authenticates the client and then logs in to PostgreSQL with the client's proof (SCRAM
//! pass-through): no plain password is stored anywhere.

use pgha_config::{PghaConfig, PoolingSection, Secret};
use pgha_postgres::connect_params;

use crate::{PoolingError, Result, Topology};

/// One userlist.txt line's content. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct UserSecret {
    pub user: String,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` as pg_authid holds it; for
    /// `pooling.auth_user`, its password (PgBouncer logs in as it on its own, with no client's
    /// SCRAM proof to pass on: a SCRAM secret alone cannot do that).
    pub scram: Secret,
}

impl std::fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserSecret({}, ***)", self.user)
    }
}

/// Every role userlist.txt must hold: `users`, then `admin_users`, then `stats_users`, then
/// `auth_user` (PgBouncer logs in as it to run `auth_query`), each once.
pub fn userlist_roles(pool: &PoolingSection) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in pool
        .users
        .iter()
        .chain(&pool.admin_users)
        .chain(&pool.stats_users)
        .chain(&pool.auth_user)
    {
        if !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

#[derive(sqlx::FromRow)]
struct AuthRow {
    rolname: String,
    rolpassword: Option<String>,
}

/// Reads the roles' secrets from pg_authid on the primary, else on the first replica that
/// answers (pg_authid is replicated, so any node has the same secrets).
pub async fn fetch_scram_secrets(
    config: &PghaConfig,
    topology: &Topology,
    roles: &[String],
) -> Result<Vec<UserSecret>> {
    let pool = config.pooling.as_ref();
    let pool_auth_user = pool.and_then(|p| p.auth_user.clone());
    let pool_auth_password = pool.and_then(|p| p.auth_password.clone());
    let mut tried = Vec::new();
    for b in std::iter::once(&topology.primary).chain(&topology.replicas) {
        let Some(node) = config.node(&b.node) else {
            continue;
        };
        let params = connect_params(config, node)?;
        let mut conn = match params.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %b.node, "cannot read pg_authid: {e}");
                tried.push(format!("{}: {e}", b.node));
                continue;
            }
        };
        let rows = sqlx::query_as::<_, AuthRow>(
            "SELECT rolname::text AS rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1)",
        )
        .bind(roles)
        .fetch_all(&mut conn)
        .await
        .map_err(|source| PoolingError::Query {
            target: format!("{} ({})", b.node, params.target()),
            source,
        })?;
        return roles
            .iter()
            .map(|user| {
                let row = rows.iter().find(|r| &r.rolname == user).ok_or_else(|| {
                    PoolingError::UnknownRole {
                        user: user.clone(),
                        node: b.node.clone(),
                    }
                })?;
                // auth_user: PgBouncer logs in with its password, whatever pg_authid keeps.
                if let (Some(a), Some(p)) = (&pool_auth_user, &pool_auth_password) {
                    if a == user {
                        return Ok(UserSecret {
                            user: user.clone(),
                            scram: p.read()?,
                        });
                    }
                }
                let secret =
                    row.rolpassword
                        .as_deref()
                        .ok_or_else(|| PoolingError::NoPassword {
                            user: user.clone(),
                            node: b.node.clone(),
                        })?;
                if !secret.starts_with("SCRAM-SHA-256$") {
                    return Err(PoolingError::NotScram {
                        user: user.clone(),
                        node: b.node.clone(),
                    });
                }
                Ok(UserSecret {
                    user: user.clone(),
                    scram: Secret::new(secret),
                })
            })
            .collect();
    }
    Err(PoolingError::NoNodeForSecrets {
        tried: tried.join("; "),
    })
}
