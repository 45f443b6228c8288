//! The `[pooling]` rules about what goes verbatim into pgbouncer.ini (`auth_*`,
//! `max_prepared_statements`, `[pooling.extra]`), each problem with its field path. Checked
//! before anything is rendered, so a bad key never reaches PgBouncer.

use pgha_config::{PoolingSection, ValidationError, ValidationErrors};

use crate::{PoolingError, Result};

/// Every `[pgbouncer]` key pgha renders itself (from `[pooling]`, `[tls]` or fixed), so
/// `[pooling.extra]` cannot set it a second time (PgBouncer would take the last one silently).
pub const RENDERED_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "unix_socket_dir",
    "auth_type",
    "auth_file",
    "auth_user",
    "auth_query",
    "auth_dbname",
    "admin_users",
    "stats_users",
    "pool_mode",
    "max_client_conn",
    "default_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_prepared_statements",
    "server_round_robin",
    "server_check_query",
    "ignore_startup_parameters",
    "server_fast_close",
    "server_connect_timeout",
    "server_login_retry",
    "client_tls_sslmode",
    "client_tls_cert_file",
    "client_tls_key_file",
    "client_tls_ca_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "pidfile",
    "logfile",
];

/// The `[pooling]` field a rendered key comes from, for the error message.
fn source_of(key: &str) -> &'static str {
    match key {
        "auth_type" | "auth_file" => "pooling.userlist_path (auth_type is always scram-sha-256)",
        "pidfile" => "pooling.pid_file",
        "logfile" => "pooling.log_file",
        k if k.contains("_tls_") => "[tls]",
        "server_round_robin" | "server_fast_close" | "server_connect_timeout" => {
            "pgha (fixed: the follower relies on it)"
        }
        _ => "the [pooling] field of the same name",
    }
}

/// Problems of the pass-through fields of `[pooling]`; empty when they are usable.
pub fn problems(pool: &PoolingSection) -> ValidationErrors {
    let mut errs = Vec::new();
    let mut push = |path: String, message: String| errs.push(ValidationError { path, message });
    match &pool.auth_user {
        Some(u) => {
            if pool.auth_password.is_none() {
                push(
                    "pooling.auth_password".into(),
                    format!(
                        "is required with auth_user `{u}`: PgBouncer logs in to PostgreSQL as \
                         it with no client proof to pass on; e.g. \
                         auth_password = {{ env = \"PGBOUNCER_AUTH_PASSWORD\" }}"
                    ),
                );
            }
            if !is_role_name(u) {
                push(
                    "pooling.auth_user".into(),
                    format!(
                        "`{u}` cannot be a role name in pgbouncer.ini: expected letters, digits, \
                         `_` or `-`, at most 63 bytes, e.g. \"pgbouncer_auth\""
                    ),
                );
            }
        }
        None => {
            for (field, set) in [
                ("auth_password", pool.auth_password.is_some()),
                ("auth_query", pool.auth_query.is_some()),
                ("auth_dbname", pool.auth_dbname.is_some()),
            ] {
                if set {
                    push(
                        format!("pooling.{field}"),
                        "is set but pooling.auth_user is not: PgBouncer runs the lookup as \
                         auth_user; set auth_user = \"pgbouncer_auth\" (a role in userlist.txt)"
                            .into(),
                    );
                }
            }
        }
    }
    if let Some(q) = &pool.auth_query {
        if q.contains(['\n', '\r']) {
            push("pooling.auth_query".into(), "must be one line".into());
        } else if !q.contains("$1") {
            push(
                "pooling.auth_query".into(),
                format!(
                    "`{q}` does not use `$1` (the client's user name): expected e.g. \
                     \"SELECT uname, phash FROM pgbouncer.user_lookup($1)\""
                ),
            );
        }
    }
    if let Some(db) = &pool.auth_dbname {
        if !is_role_name(db) {
            push(
                "pooling.auth_dbname".into(),
                format!(
                    "`{db}` cannot be a database name in pgbouncer.ini: expected letters, \
                     digits, `_` or `-`"
                ),
            );
        }
    }
    for (key, value) in &pool.extra {
        let path = format!("pooling.extra.{key}");
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            push(
                path,
                "is not a PgBouncer setting name: expected lowercase letters, digits and `_` \
                 (no `=`, spaces or newlines), e.g. query_wait_timeout"
                    .into(),
            );
            continue;
        }
        if RENDERED_KEYS.contains(&key.as_str()) {
            push(
                path,
                format!("pgha renders `{key}` itself from {}", source_of(key)),
            );
            continue;
        }
        let v = value.to_string();
        if v.contains(['\n', '\r', '\0']) {
            push(path, "must be one line (no newline)".into());
        }
    }
    ValidationErrors(errs)
}

/// [`problems`] as an error, when there are any.
pub fn check(pool: &PoolingSection) -> Result<()> {
    let errors = problems(pool);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PoolingError::Invalid { errors })
    }
}

fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The SQL an operator runs once on the primary (as a superuser, in every database clients reach
/// through PgBouncer, or in `auth_dbname`) so that `auth_user` can look up SCRAM secrets without
/// being a superuser: PgBouncer's documented `user_lookup`, SECURITY DEFINER, with a fixed
/// search_path, refusing superusers' secrets, executable only by `auth_user`. The matching
/// `auth_query` is [`AUTH_QUERY`]. `None` without `pooling.auth_user`.
pub fn auth_setup_sql(pool: &PoolingSection) -> Option<String> {
    let user = pool.auth_user.as_deref()?;
    // Validated as [A-Za-z0-9_-]: quoting as an identifier is enough.
    let role = format!("\"{user}\"");
    Some(format!(
        "-- Run as a superuser on the primary, in each database clients reach through PgBouncer\n\
         -- (or only in pooling.auth_dbname). Then give the role the password pooling.auth_password\n\
         -- names (psql: \\password {user}).\n\
         DO $$ BEGIN\n  \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN\n    \
             CREATE ROLE {role} LOGIN;\n  \
           END IF;\n\
         END $$;\n\
         CREATE SCHEMA IF NOT EXISTS pgbouncer;\n\
         GRANT USAGE ON SCHEMA pgbouncer TO {role};\n\
         CREATE OR REPLACE FUNCTION pgbouncer.user_lookup(i_username text, OUT uname text, OUT phash text)\n\
         RETURNS record LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$\n\
         BEGIN\n  \
           SELECT rolname, rolpassword FROM pg_authid\n   \
            WHERE rolname = i_username AND rolcanlogin AND NOT rolsuper\n    \
            INTO uname, phash;\n  \
           RETURN;\n\
         END $$;\n\
         REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;\n\
         GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO {role};\n\
         -- then: auth_query = \"{AUTH_QUERY}\" in [pooling]\n"
    ))
}

/// The `auth_query` that goes with [`auth_setup_sql`].
pub const AUTH_QUERY: &str = "SELECT uname, phash FROM pgbouncer.user_lookup($1)";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pgha_config::load_from_str;

    fn pool(extra: &str) -> PoolingSection {
        let text = format!(
            "[cluster]\nname = \"t\"\n[replication]\npassword = {{ env = \"X\" }}\n\
             [[nodes]]\nname = \"db1\"\nhost = \"127.0.0.1\"\ndata_dir = \"/d\"\n\
             [pooling]\n{extra}\n"
        );
        load_from_str(&text, "t").unwrap().pooling.unwrap()
    }

    fn messages(p: &PoolingSection) -> Vec<String> {
        problems(p).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn auth_query_needs_auth_user() {
        let p = pool("auth_query = \"SELECT uname, phash FROM f($1)\"\nauth_dbname = \"postgres\"");
        let m = messages(&p);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(
            m[0].starts_with("pooling.auth_query: is set but pooling.auth_user is not"),
            "{m:?}"
        );
        assert!(m[1].starts_with("pooling.auth_dbname: is set but"), "{m:?}");
        let ok = pool(&format!(
            "auth_user = \"pgbouncer_auth\"\nauth_password = {{ env = \"X\" }}\n\
             auth_query = \"{AUTH_QUERY}\""
        ));
        assert!(problems(&ok).is_empty(), "{:?}", messages(&ok));
        let bad = pool("auth_user = \"a b\"\nauth_query = \"SELECT 1\"");
        let m = messages(&bad);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(
            m[0].starts_with("pooling.auth_password: is required with auth_user `a b`"),
            "{m:?}"
        );
        assert!(
            m[1].starts_with("pooling.auth_user: `a b` cannot be"),
            "{m:?}"
        );
        assert!(m[2].contains("does not use `$1`"), "{m:?}");
        let e = check(&bad).unwrap_err().to_string();
        assert!(e.contains("pooling.auth_user"), "{e}");
    }

    #[test]
    fn extra_keys_are_checked() {
        let p = pool(
            "[pooling.extra]\nquery_wait_timeout = 60\ntcp_keepalive = true\n\
             application_name_add_host = 1\nserver_reset_query = \"DISCARD ALL\"\n\
             pool_mode = \"session\"\nlogfile = \"/tmp/x\"\n\"a=b\" = 1\n\"Bad\" = 2\n\
             client_tls_sslmode = \"disable\"\nnote = \"two\\nlines\"",
        );
        let m = messages(&p);
        for want in [
            "pooling.extra.a=b: is not a PgBouncer setting name",
            "pooling.extra.Bad: is not a PgBouncer setting name",
            "pooling.extra.client_tls_sslmode: pgha renders `client_tls_sslmode` itself from [tls]",
            "pooling.extra.logfile: pgha renders `logfile` itself from pooling.log_file",
            "pooling.extra.note: must be one line",
            "pooling.extra.pool_mode: pgha renders `pool_mode` itself",
        ] {
            assert!(
                m.iter().any(|e| e.starts_with(want)),
                "no `{want}` in {m:?}"
            );
        }
        assert_eq!(m.len(), 6, "{m:?}");
    }

    #[test]
    fn setup_sql_names_the_auth_user() {
        assert!(auth_setup_sql(&pool("")).is_none());
        let sql = auth_setup_sql(&pool("auth_user = \"pgbouncer_auth\"")).unwrap();
        assert!(sql.contains("SECURITY DEFINER"), "{sql}");
        assert!(
            sql.contains(
                "GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO \"pgbouncer_auth\""
            ),
            "{sql}"
        );
    }
}
