//! Secrets (passwords, tokens) referenced from the config, never written inline.
//!
//! The config holds only where a secret comes from (`{ env = "VAR" }` or `{ file = "/path" }`);
//! the value is read on use into a [`Secret`], whose `Debug` and `Display` never show it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a secret comes from. Inline values are refused by the model on purpose.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SecretSource {
    /// An environment variable holding the secret.
    Env { env: String },
    /// A file holding the secret (trailing newline stripped); must not be readable by group/other.
    File { file: PathBuf },
}

impl fmt::Debug for SecretSource {
    // The source is not secret itself, but say so explicitly so nobody adds an inline variant
    // and leaks it through a derived Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env { env } => write!(f, "env:{env}"),
            SecretSource::File { file } => write!(f, "file:{}", file.display()),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            env: Option<String>,
            file: Option<PathBuf>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Table(Raw),
            // Accepted only to refuse it with a clear message; the value is dropped unread.
            Inline(serde::de::IgnoredAny),
        }
        const EXPECTED: &str =
            "a secret source: { env = \"VAR\" } or { file = \"/path/to/file\" }; inline secrets are not accepted";
        match Either::deserialize(d)? {
            Either::Table(Raw {
                env: Some(env),
                file: None,
            }) => Ok(SecretSource::Env { env }),
            Either::Table(Raw {
                env: None,
                file: Some(file),
            }) => Ok(SecretSource::File { file }),
            _ => Err(serde::de::Error::custom(format!("expected {EXPECTED}"))),
        }
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("environment variable {name} (a secret) is not set or not UTF-8")]
    EnvMissing { name: String },
    #[error("cannot read secret file {path}: {source}")]
    FileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    FileTooOpen { path: PathBuf, mode: u32 },
    #[error("secret from {origin} is empty")]
    Empty { origin: String },
}

impl SecretSource {
    /// Reads the secret now.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::Env { env } => {
                std::env::var(env).map_err(|_| SecretError::EnvMissing { name: env.clone() })?
            }
            SecretSource::File { file } => read_secret_file(file)?,
        };
        let value = value.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(SecretError::Empty {
                origin: format!("{self:?}"),
            });
        }
        Ok(Secret(value))
    }
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SecretError::FileRead {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::FileTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    std::fs::read_to_string(path).map_err(|source| SecretError::FileRead {
        path: path.to_owned(),
        source,
    })
}

/// A secret value. `Debug`/`Display` print `***`; use [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (e.g. generated).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_hides_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
    }

    #[test]
    fn file_secret_checks_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let src = SecretSource::File { file: p.clone() };
        let err = src.read().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(src.read().unwrap().expose(), "s3cret");
    }
}
