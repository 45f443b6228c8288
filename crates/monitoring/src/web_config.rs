//! `--web.config.file`: the Prometheus exporter-toolkit web configuration postgres_exporter
//! reads, for TLS and basic authentication of `/metrics` and `/probe`:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/pgha/tls/exporter.crt   # relative paths: to this file's directory
//!   key_file: /etc/pgha/tls/exporter.key
//! basic_auth_users:
//!   prometheus: $2y$10$...                  # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys pgha-exporter does not implement (client certificates, cipher and version choices,
//! `http_server_config`) are refused by name rather than ignored: a setting that silently
//! does nothing would look like protection.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{MonitoringError, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// What the file asks for.
#[derive(Debug)]
pub struct WebConfig {
    /// (certificate chain, private key), PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    users: BTreeMap<String, String>,
    /// sha256 of `user:password` pairs that passed bcrypt once (bcrypt costs tens of ms by
    /// design; Prometheus sends the same credentials at every scrape).
    verified: Mutex<HashSet<[u8; 32]>>,
}

fn invalid(path: &Path, message: impl Into<String>) -> MonitoringError {
    MonitoringError::WebConfig {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl WebConfig {
    /// No file: plain HTTP, no authentication.
    pub fn none() -> Self {
        WebConfig {
            tls: None,
            users: BTreeMap::new(),
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| MonitoringError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text` (read from `path`, which names it in errors and anchors relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let raw: RawFile = yaml_serde::from_str(text).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("unknown field") {
                invalid(
                    path,
                    format!("{msg} (pgha-exporter implements tls_server_config.cert_file/key_file and basic_auth_users)"),
                )
            } else {
                invalid(path, msg)
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match raw.tls_server_config {
            None => None,
            Some(RawTls {
                cert_file: Some(c),
                key_file: Some(k),
            }) => Some((base.join(c), base.join(k))),
            Some(_) => {
                return Err(invalid(
                    path,
                    "tls_server_config needs both cert_file and key_file",
                ))
            }
        };
        for (user, hash) in &raw.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(
                    path,
                    format!(
                        "basic_auth_users.{user}: not a bcrypt hash (expected $2y$..., e.g. from \
                         `htpasswd -nBC 10 {user}`)"
                    ),
                ));
            }
        }
        Ok(WebConfig {
            tls,
            users: raw.basic_auth_users,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Whether requests must authenticate.
    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks an `Authorization` header value (`Basic base64(user:password)`); true when no
    /// users are configured. Runs bcrypt for a pair not seen before: call it off the async
    /// threads unless [`WebConfig::known`] already said yes.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(decode_basic) else {
            return false;
        };
        let Some(hash) = self.users.get(&user) else {
            return false;
        };
        if self.known(header) {
            return true;
        }
        let ok = bcrypt::verify(&password, hash).unwrap_or(false);
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(pair_key(&user, &password));
            }
        }
        ok
    }

    /// True when no users are configured or these credentials passed bcrypt before (cheap: a
    /// SHA-256 and a set lookup, the path of every scrape after the first).
    pub fn known(&self, header: Option<&str>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(decode_basic) else {
            return false;
        };
        let key = pair_key(&user, &password);
        self.verified.lock().is_ok_and(|v| v.contains(&key))
    }
}

fn pair_key(user: &str, password: &str) -> [u8; 32] {
    Sha256::digest(format!("{user}:{password}").as_bytes()).into()
}

/// `Basic dXNlcjpwdw==` -> (user, password).
fn decode_basic(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ")?.trim();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_checks_and_authenticates() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let p = Path::new("/etc/pgha/web.yml");
        let c = WebConfig::parse(
            &format!(
                "tls_server_config:\n  cert_file: tls/x.crt\n  key_file: /k.key\n\
                 basic_auth_users:\n  prom: {hash}\n"
            ),
            p,
        )
        .unwrap();
        assert_eq!(c.tls, Some(("/etc/pgha/tls/x.crt".into(), "/k.key".into())));
        use base64::Engine;
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(!c.known(Some(&b("prom:s3cret"))), "not verified yet");
        assert!(c.authorized(Some(&b("prom:s3cret"))));
        assert!(c.known(Some(&b("prom:s3cret"))), "cached");
        assert!(c.authorized(Some(&b("prom:s3cret"))), "cached");
        assert!(!c.authorized(Some(&b("prom:wrong"))));
        assert!(!c.authorized(Some(&b("other:s3cret"))));
        assert!(!c.authorized(None));
        assert!(!c.authorized(Some("Bearer x")));

        let e = WebConfig::parse("basic_auth_users:\n  prom: plain\n", p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/pgha/web.yml")
                && e.contains("basic_auth_users.prom: not a bcrypt hash"),
            "{e}"
        );
        let e = WebConfig::parse(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("client_auth_type"), "{e}");
        let e = WebConfig::parse("tls_server_config:\n  cert_file: a\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both cert_file and key_file"), "{e}");
        let open = WebConfig::parse("{}", p).unwrap();
        assert!(open.authorized(None) && !open.requires_auth());
    }
}
