//! libpq-style multi-host connection URLs:
//! `postgres://user:pass@h1:5432,h2:5433/db?target_session_attrs=read-write`.
//!
//! sqlx accepts one host only, so the host list is split off here and every other part (user,
//! password, database, sslmode, application_name, ...) is parsed by sqlx for each host.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::{Result, RouterError};

/// The libpq `target_session_attrs` parameter. The router discovers roles live whatever it
/// says; it is kept so a URL written for libpq keeps working and for [`MultiHostUrl::wants_writer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl FromStr for TargetSessionAttrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                return Err(format!(
                    "target_session_attrs `{other}` is not one of any, read-write, read-only, primary, standby, prefer-standby"
                ))
            }
        })
    }
}

/// One host of a multi-host URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed multi-host URL: the hosts, and per-host sqlx connect options. `Debug` shows no
/// password.
#[derive(Clone)]
pub struct MultiHostUrl {
    pub hosts: Vec<HostPort>,
    pub target_session_attrs: TargetSessionAttrs,
    /// The URL with its password replaced by `***`, for messages.
    pub redacted: String,
    base: PgConnectOptions,
}

impl fmt::Debug for MultiHostUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiHostUrl")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl MultiHostUrl {
    /// Parses `url`; an error names what is wrong and shows the URL without its password.
    pub fn parse(url: &str) -> Result<MultiHostUrl> {
        let redacted = redact(url);
        let bad = |problem: String| RouterError::InvalidUrl {
            url: redacted.clone(),
            problem,
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("the scheme must be postgres:// or postgresql://".into()))?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let cut_password = rest[authority_end..]
            .rfind('@')
            .is_some_and(|at| !rest[authority_end..authority_end + at].contains('='));
        if !rest[..authority_end].contains('@') && cut_password {
            // `u:p/w@h`: parsed on, the rest of the password would show up as a host in the
            // error (an `@` in a parameter value, `?application_name=a@b`, is fine).
            return Err(bad(
                "an `@` after the first `/` or `?`: a password with `/`, `?` or `@` must be \
                 percent-encoded (%2F, %3F, %40)"
                    .into(),
            ));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if hostlist.is_empty() {
            return Err(bad(
                "no host: expected host[:port][,host[:port]...] after `//` (or after `@`)".into(),
            ));
        }
        let mut hosts = Vec::new();
        for (i, item) in hostlist.split(',').enumerate() {
            hosts
                .push(parse_host(item).map_err(|p| bad(format!("host #{} `{item}`: {p}", i + 1)))?);
        }
        let mut tsa = TargetSessionAttrs::default();
        let mut kept = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "target_session_attrs" => tsa = v.parse().map_err(bad)?,
                "host" | "hostaddr" | "port" => {
                    return Err(bad(format!(
                        "the `{k}` parameter is not supported; list hosts as h1:port1,h2:port2"
                    )))
                }
                _ => kept.push(pair),
            }
        }
        // sqlx parses everything else, for the first host; the other hosts differ only in
        // host and port.
        let first = &hosts[0];
        let mut single = String::from("postgres://");
        if let Some(u) = userinfo {
            single.push_str(u);
            single.push('@');
        }
        single.push_str(&first.to_string());
        single.push_str(path);
        if !kept.is_empty() {
            single.push('?');
            single.push_str(&kept.join("&"));
        }
        let base = PgConnectOptions::from_str(&single).map_err(|e| bad(e.to_string()))?;
        if path.len() > 1 && path[1..].contains('/') {
            return Err(bad(format!(
                "the database name `{}` contains `/`",
                &path[1..]
            )));
        }
        Ok(MultiHostUrl {
            hosts,
            target_session_attrs: tsa,
            redacted,
            base,
        })
    }

    /// Connect options for one host of this URL.
    pub fn options_for(&self, host: &HostPort) -> PgConnectOptions {
        self.base.clone().host(&host.host).port(host.port)
    }

    /// True unless the URL asks for standbys only (`read-only`, `standby`, `prefer-standby`).
    pub fn wants_writer(&self) -> bool {
        !matches!(
            self.target_session_attrs,
            TargetSessionAttrs::ReadOnly
                | TargetSessionAttrs::Standby
                | TargetSessionAttrs::PreferStandby
        )
    }
}

pub(crate) fn parse_host(item: &str) -> Result<HostPort, String> {
    if item.is_empty() {
        return Err("empty host (two commas in a row or a trailing comma?)".into());
    }
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address opened with `[` is not closed with `]`")?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or("expected `:port` after the IPv6 address")?,
                ),
            ),
        }
    } else {
        match item.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    if host.is_empty() {
        return Err("empty host name".into());
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
        return Err("the host name contains a space, `/` or `@`".into());
    }
    let port = match port {
        None => 5432,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("port `{p}` is not a number from 1 to 65535")),
        },
    };
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// `url` with the password replaced by `***`: the one between `user:` and the `@` before the
/// hosts (also when an unencoded `/` or `?` in it would end the authority for a parser), and
/// the value of every `password=` parameter. When in doubt it hides more, never less.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // Not a URL we understand: show only that much, a password may be anywhere in it.
        return if url.contains('@') || url.contains("password") {
            "(not shown: not a postgres:// URL and it may hold a password)".into()
        } else {
            url.to_owned()
        };
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    // The `@` that ends the user info: the last one of the authority, else (a `/` or `?` in an
    // unencoded password cut the authority short) the last one anywhere.
    let at = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@'));
    let mut out = url[..scheme_end].to_owned();
    let after_userinfo = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    match after_userinfo.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            out.push_str(path);
            out.push('?');
            out.push_str(&query.join("&"));
        }
        None => out.push_str(after_userinfo),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_host_urls() {
        let u = MultiHostUrl::parse(
            "postgres://app:s3cr%40t@h1:5432,h2:5433,[::1]/appdb?target_session_attrs=read-write&application_name=svc",
        )
        .unwrap();
        assert_eq!(
            u.hosts,
            vec![
                HostPort {
                    host: "h1".into(),
                    port: 5432
                },
                HostPort {
                    host: "h2".into(),
                    port: 5433
                },
                HostPort {
                    host: "::1".into(),
                    port: 5432
                },
            ]
        );
        assert_eq!(u.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert!(u.wants_writer());
        let o = u.options_for(&u.hosts[1]);
        assert_eq!(o.get_host(), "h2");
        assert_eq!(o.get_port(), 5433);
        assert_eq!(o.get_username(), "app");
        assert_eq!(o.get_database(), Some("appdb"));
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(
            u.redacted,
            "postgres://app:***@h1:5432,h2:5433,[::1]/appdb?target_session_attrs=read-write&application_name=svc"
        );
    }

    #[test]
    fn malformed_urls_name_the_problem_and_hide_the_password() {
        let cases = [
            ("mysql://u:pw@h/db", "scheme"),
            ("postgres://u:pw@/db", "no host"),
            ("postgres://u:pw@h1,,h2/db", "host #2"),
            ("postgres://u:pw@h1:99999/db", "port `99999`"),
            ("postgres://u:pw@h1:abc/db", "port `abc`"),
            (
                "postgres://u:pw@h1/db?target_session_attrs=primry",
                "target_session_attrs `primry`",
            ),
            ("postgres://u:pw@[::1/db", "IPv6"),
            ("postgres://u:pw@h1/db?port=5", "`port` parameter"),
        ];
        for (url, want) in cases {
            let e = MultiHostUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw"), "{url} leaks the password: {e}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("postgres://u:p@w@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?x=@"), "postgres://h/db?x=@");
        assert_eq!(
            redact("postgres://u@h1,h2/db?password=pw&sslmode=disable"),
            "postgres://u@h1,h2/db?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://u:p/w@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u:p?w@h/db?a=1"),
            "postgres://u:***@h/db?a=1"
        );
        let e = MultiHostUrl::parse("postgres://u:p/w@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be percent-encoded") && !e.contains("p/w"),
            "{e}"
        );
        assert!(MultiHostUrl::parse("postgres://h:5432/db?application_name=a@b").is_ok());
        assert!(!redact("u:pw@h").contains("pw"));
    }
}
