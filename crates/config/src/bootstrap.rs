//! `[bootstrap]`: how the agents make the first primary of a new cluster (agents started on
//! empty data dirs race for the DCS `initialize` key; the winner bootstraps).

use serde::{Deserialize, Serialize};

use crate::ValidationErrors;

/// `[bootstrap]`: how the first primary of a new cluster is made, by the agent that wins the
/// DCS `initialize` key (the others clone from it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapSection {
    /// `initdb` (an empty cluster, data checksums on) or `backup` (restore a base backup from
    /// `[backup.repository]`, recover through the archived WAL, promote).
    pub method: BootstrapMethod,
    /// With `method = "backup"`: the backup id to restore; default the newest (or the newest
    /// that finished before `target_time`).
    pub backup: Option<String>,
    /// With `method = "backup"`: recover up to this time (PostgreSQL's `recovery_target_time`
    /// syntax, e.g. `"2026-12-01 10:00:00+00"`); default the end of the archive.
    pub target_time: Option<String>,
    /// With `method = "backup"`: the restore_command the recovering server runs, e.g.
    /// `"/usr/local/bin/pgha-backup --config /etc/pgha/pgha.toml wal-fetch %f %p"` (the
    /// server's OS user runs it).
    pub restore_command: Option<String>,
}

/// How the first primary is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapMethod {
    /// initdb: a new, empty cluster.
    #[default]
    Initdb,
    /// Restore a base backup from the repository and recover through the archived WAL.
    Backup,
}

impl BootstrapSection {
    /// `has_backup`: the config has a `[backup]` section.
    pub(crate) fn validate(&self, has_backup: bool, errs: &mut ValidationErrors) {
        let backup_only = [
            ("bootstrap.backup", self.backup.is_some()),
            ("bootstrap.target_time", self.target_time.is_some()),
            ("bootstrap.restore_command", self.restore_command.is_some()),
        ];
        match self.method {
            BootstrapMethod::Initdb => {
                for (path, set) in backup_only {
                    if set {
                        errs.push(path, "is only used with bootstrap.method = \"backup\"");
                    }
                }
            }
            BootstrapMethod::Backup => {
                if !has_backup {
                    errs.push(
                        "bootstrap.method",
                        "\"backup\" needs a [backup] section with the repository to restore from",
                    );
                }
                match self.restore_command.as_deref().map(str::trim) {
                    None | Some("") => errs.push(
                        "bootstrap.restore_command",
                        "is required with method = \"backup\", e.g. \
                         \"/usr/local/bin/pgha-backup --config /etc/pgha/pgha.toml wal-fetch %f %p\"",
                    ),
                    Some(c) if !c.contains("%f") || !c.contains("%p") => errs.push(
                        "bootstrap.restore_command",
                        format!("`{c}` must contain %f (the WAL file name) and %p (where to put it)"),
                    ),
                    Some(_) => {}
                }
                for (path, v) in [
                    ("bootstrap.backup", &self.backup),
                    ("bootstrap.target_time", &self.target_time),
                ] {
                    if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
                        errs.push(path, "is empty: remove it or give a value");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{load_from_str, BootstrapMethod};

    const BASE: &str = r#"
[cluster]
name = "demo"

[replication]
password = { env = "REPL_PW" }

[[nodes]]
name = "node1"
host = "127.0.0.1"
port = 5432
data_dir = "/var/lib/pgha/node1"
"#;

    const REPO: &str = "\n[backup.repository]\npath = \"/var/lib/pgha/backup\"\n";

    #[test]
    fn initdb_is_the_default() {
        let c = load_from_str(BASE, "t.toml").unwrap();
        assert_eq!(c.bootstrap.method, BootstrapMethod::Initdb);
    }

    #[test]
    fn backup_method_needs_a_repository_and_a_restore_command() {
        let text = format!("{BASE}\n[bootstrap]\nmethod = \"backup\"\n");
        let err = load_from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("bootstrap.method: \"backup\" needs a [backup] section"),
            "{err}"
        );
        assert!(
            err.contains("bootstrap.restore_command: is required"),
            "{err}"
        );
        let text = format!(
            "{BASE}\n[bootstrap]\nmethod = \"backup\"\nrestore_command = \"fetch %f\"\n{REPO}"
        );
        let err = load_from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("`fetch %f` must contain %f"), "{err}");
        let text = format!(
            "{BASE}\n[bootstrap]\nmethod = \"backup\"\nbackup = \"20261201T000000Z\"\n\
             restore_command = \"fetch %f %p\"\n{REPO}"
        );
        let c = load_from_str(&text, "t.toml").unwrap();
        assert_eq!(c.bootstrap.method, BootstrapMethod::Backup);
        assert_eq!(c.bootstrap.backup.as_deref(), Some("20261201T000000Z"));
    }

    #[test]
    fn backup_keys_without_the_backup_method_are_refused() {
        let text = format!("{BASE}\n[bootstrap]\ntarget_time = \"2026-12-01 10:00:00+00\"\n");
        let err = load_from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("bootstrap.target_time: is only used with bootstrap.method = \"backup\""),
            "{err}"
        );
        let text = format!("{BASE}\n[bootstrap]\nmethod = \"restore\"\n");
        let err = load_from_str(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("restore"), "{err}");
    }
}
