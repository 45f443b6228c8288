//! `bootstrap.method = "backup"`: the first primary of a new cluster is a base backup from
//! the repository, recovered through the archived WAL (up to `bootstrap.target_time`, else to
//! the end of the archive) and promoted, with this node's settings and pgha.toml's
//! replication role. It keeps the backed-up roles and data: pgha.toml's superuser password
//! must be the one the backup has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use pgha_agent_core::CoreError;
use pgha_backup_core::{storage, RecoveryTarget, Repository, RestoreOptions, TargetAction};
use pgha_config::{NodeConfig, PghaConfig};
use pgha_failover::first::{FirstPrimary, Initdb};
use pgha_postgres::{LocalInstance, PgControl, StopMode};
use pgha_replication::{install_settings, NodeRole};

/// Longest the recovery of a restored backup may take before the bootstrap fails.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How this node's agent makes a new cluster's first primary, from `[bootstrap]`.
pub fn from_config(cfg: &PghaConfig) -> Arc<dyn FirstPrimary> {
    match cfg.bootstrap.method {
        pgha_config::BootstrapMethod::Initdb => Arc::new(Initdb),
        pgha_config::BootstrapMethod::Backup => Arc::new(FromBackup),
    }
}

/// Restores a backup as the first primary, as the config it is given says (`[bootstrap]`,
/// `[backup]`: the settings at the time of the bootstrap, reloads included).
#[derive(Debug)]
struct FromBackup;

fn failed(e: impl std::error::Error + Send + Sync + 'static) -> CoreError {
    CoreError::Bootstrap {
        from: "backup",
        source: Box::new(e),
    }
}

#[async_trait]
impl FirstPrimary for FromBackup {
    fn describe(&self) -> String {
        "restore a backup and recover through the archive".into()
    }

    async fn make(
        &self,
        cfg: &PghaConfig,
        node: &NodeConfig,
        instance: &LocalInstance,
    ) -> pgha_agent_core::Result<()> {
        let t = Instant::now();
        let b = &cfg.bootstrap;
        // validate() refuses a config without them.
        let (Some(section), Some(restore_command)) = (&cfg.backup, &b.restore_command) else {
            return Err(CoreError::refused(
                "bootstrap from a backup",
                "bootstrap.method = \"backup\" needs [backup] and bootstrap.restore_command",
            ));
        };
        tracing::info!(
            node = %node.name,
            "bootstrap: restoring {} and recovering to {}",
            b.backup.as_deref().unwrap_or("the newest backup"),
            b.target_time.as_deref().unwrap_or("the end of the archive")
        );
        let repo = Repository::new(storage::open(section).map_err(failed)?);
        let opts = RestoreOptions {
            backup: b.backup.clone(),
            to: instance.data_dir().to_owned(),
            target: match &b.target_time {
                Some(t) => RecoveryTarget::Time(t.clone()),
                None => RecoveryTarget::Latest,
            },
            action: TargetAction::Promote,
            force: false,
            delta: false,
            port: None,
            parallel: section.parallel,
            restore_command: restore_command.clone(),
            run_as: instance.run_as().cloned(),
            progress: false,
            keep_archiving: true,
        };
        let (m, stats) = pgha_backup_core::restore_counted(&repo, &opts)
            .await
            .map_err(failed)?;
        tracing::info!(
            node = %node.name,
            backup = %m.id,
            "bootstrap: restored backup {} of node {} (timeline {}, {:.1} MB written) in {:.1} s; recovering",
            m.id,
            m.node,
            m.timeline,
            stats.written as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        // This node's settings (its address, port, TLS, pg_hba) instead of the backed-up
        // node's; the restore's recovery settings in postgresql.auto.conf come on top.
        install_settings(cfg, node, NodeRole::Primary, instance)?;
        pgha_backup_core::start_promoted(instance, RECOVERY_TIMEOUT)
            .await
            .map_err(failed)?;
        let roles = pgha_replication::prepare_first_primary(cfg, node, instance).await;
        instance.stop(StopMode::Fast).await?;
        roles?;
        pgha_backup_core::clear_recovery_settings(instance.data_dir(), instance.run_as())
            .map_err(failed)?;
        tracing::info!(
            node = %node.name,
            "bootstrap: backup {} recovered and promoted in {:.1} s",
            m.id,
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
