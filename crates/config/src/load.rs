//! Finding and loading `pgha.toml`: the file, then `PGHA_<SECTION>__<KEY>` environment overrides.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::{ConfigError, PghaConfig, Result, SecretSource};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "PGHA_CONFIG";

/// How the config file was chosen; printed with every config error so the operator knows
/// which file was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--config PATH`.
    Flag(PathBuf),
    /// `PGHA_CONFIG=PATH`.
    Env(PathBuf),
    /// `./pgha.toml`.
    Default(PathBuf),
}

impl ConfigSource {
    /// Picks the file: the flag, else `PGHA_CONFIG`, else `./pgha.toml`.
    pub fn locate(flag: Option<&Path>) -> ConfigSource {
        if let Some(p) = flag {
            return ConfigSource::Flag(p.to_owned());
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => ConfigSource::Env(PathBuf::from(p)),
            _ => ConfigSource::Default(PathBuf::from("pgha.toml")),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::Default(p) => p,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Flag(p) => write!(f, "{} (from --config)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (from {CONFIG_ENV})", p.display()),
            ConfigSource::Default(p) => {
                write!(f, "{} (default; set --config or {CONFIG_ENV})", p.display())
            }
        }
    }
}

/// A validated config and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: PghaConfig,
    pub source: ConfigSource,
}

/// Loads, applies environment overrides, resolves relative paths against the file's directory,
/// and validates.
pub fn load(source: ConfigSource) -> Result<LoadedConfig> {
    let path = source.path();
    let origin = source.to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        origin: origin.clone(),
        source: e,
    })?;
    let mut config = parse(&text, &origin, &env_overrides())?;
    let base = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    resolve_relative_paths(&mut config, &base);
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(ConfigError::Invalid { origin, errors });
    }
    Ok(LoadedConfig { config, source })
}

/// Parses and validates TOML text (no environment overrides); `origin` names it in errors.
pub fn load_from_str(text: &str, origin: &str) -> Result<PghaConfig> {
    let config = parse(text, origin, &HashMap::new())?;
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            errors,
        });
    }
    Ok(config)
}

fn parse(text: &str, origin: &str, env: &HashMap<String, String>) -> Result<PghaConfig> {
    // Strict pass on the file alone first: toml's errors carry line, column and key, which the
    // layered pass below loses.
    let from_file: PghaConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: toml_message(text, &e),
    })?;
    if env.is_empty() {
        return Ok(from_file);
    }
    let layered = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("PGHA")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.clone())),
        )
        .build()
        .and_then(|c| c.try_deserialize::<PghaConfig>())
        .map_err(|e| ConfigError::Parse {
            origin: format!(
                "{origin} with overrides from {}",
                env.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            message: e.to_string(),
        })?;
    Ok(layered)
}

/// "line L, column C: message", without toml's echo of the source line: that line may hold a
/// secret someone pasted inline.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let key = key_at(text, span.start)
                .map(|k| format!(" ({k})"))
                .unwrap_or_default();
            format!("line {line}, column {col}{key}: {}", e.message().trim_end())
        }
        None => e.message().trim_end().to_owned(),
    }
}

/// The dotted path of the key on the line holding `offset` (`nodes[1].port`), read from the
/// nearest table header above it; None when the line has no `key =`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let mut table = String::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some(name) = l
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim())
        {
            let n = array_counts.entry(name.to_owned()).or_insert(0);
            table = format!("{name}[{}]", *n);
            *n += 1;
        } else if let Some(name) = l
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim())
        {
            table = name.to_owned();
        }
    }
    Some(if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    })
}

/// `PGHA_<SECTION>__<KEY>` variables. Single-underscore `PGHA_*` names (PGHA_CONFIG, secret
/// variables) are not overrides and are left out.
fn env_overrides() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("PGHA_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect()
}

fn resolve_relative_paths(config: &mut PghaConfig, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    let fix_secret = |s: &mut Option<SecretSource>| {
        if let Some(SecretSource::File { file }) = s {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    };
    if let Some(p) = config.postgres.bin_dir.as_mut() {
        fix(p);
    }
    fix_secret(&mut config.postgres.superuser_password);
    fix_secret(&mut config.replication.password);
    fix_secret(&mut config.failover.api_token);
    if let Some(r) = config.router.as_mut() {
        fix_secret(&mut r.password);
    }
    if let Some(p) = config.monitoring.queries_file.as_mut() {
        fix(p);
    }
    if let Some(b) = config.backup.as_mut() {
        if let Some(p) = b.repository.path.as_mut() {
            fix(p);
        }
        if let Some(p) = b.metrics_file.as_mut() {
            fix(p);
        }
        fix_secret(&mut b.encryption_key);
        if let Some(s3) = b.repository.s3.as_mut() {
            for s in [&mut s3.access_key_id, &mut s3.secret_access_key] {
                if let SecretSource::File { file } = s {
                    if file.is_relative() {
                        *file = base.join(&*file);
                    }
                }
            }
        }
    }
    if let Some(t) = config.tls.as_mut() {
        t.resolve(base);
    }
    for node in &mut config.nodes {
        fix(&mut node.data_dir);
        for p in [&mut node.tls_cert_file, &mut node.tls_key_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        if let Some(p) = node.run_dir.as_mut() {
            fix(p);
        }
        if let Some(p) = node.socket_dir.as_mut() {
            fix(p);
        }
    }
    if let Some(pool) = config.pooling.as_mut() {
        fix(&mut pool.ini_path);
        fix(&mut pool.userlist_path);
        for p in [
            &mut pool.pid_file,
            &mut pool.log_file,
            &mut pool.unix_socket_dir,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Found by `cargo xtask faults`: a relative `failover.api_token` file was read relative
    /// to the agent's working directory, not to pgha.toml.
    #[test]
    fn every_relative_secret_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"
[cluster]
name = "demo"
[postgres]
superuser_password = { file = "secrets/su" }
[replication]
password = { file = "secrets/repl" }
[failover]
api_token = { file = "secrets/api.token" }
[router]
user = "app"
password = { file = "secrets/app" }
[[nodes]]
name = "node1"
host = "127.0.0.1"
port = 5432
data_dir = "/var/lib/pgha/node1"
"#;
        let path = dir.path().join("pgha.toml");
        std::fs::write(&path, text).unwrap();
        let c = load(ConfigSource::Flag(path)).unwrap().config;
        let file = |s: &Option<SecretSource>| match s {
            Some(SecretSource::File { file }) => file.clone(),
            other => panic!("not a file secret: {other:?}"),
        };
        let secrets = dir.path().join("secrets");
        assert_eq!(file(&c.postgres.superuser_password), secrets.join("su"));
        assert_eq!(file(&c.replication.password), secrets.join("repl"));
        assert_eq!(file(&c.failover.api_token), secrets.join("api.token"));
        assert_eq!(
            file(&c.router.as_ref().unwrap().password),
            secrets.join("app")
        );
    }
}
