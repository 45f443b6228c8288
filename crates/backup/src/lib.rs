//! Backup and restore for pgha: a repository (local directory or S3, optionally encrypted),
//! full base backups taken in parallel between pg_backup_start and pg_backup_stop, a WAL
//! archive (archive_command / restore_command), point-in-time restore, verification,
//! retention, a cron scheduler and logical dumps.
//!
//! The repository layout is described in [`storage`]. A backup exists once its manifest is
//! stored, and the manifest is stored last.

pub mod archive;
pub mod backup;
pub mod cron;
mod delta;

mod error;
pub mod expire;
pub mod lock;
pub mod logical;

pub mod manifest;
mod node;
mod progress;
pub mod push_batch;
mod recover;
pub mod repo;
pub mod restore;
pub mod schedule;

pub mod storage;
pub mod verify;
pub mod wal;
pub mod walk;

pub use backup::{take_backup, BackupKind, BackupOptions};
pub use error::{BackupError, Result};
pub use manifest::Manifest;
pub use recover::{clear_recovery_settings, restored_instance, start_and_wait, start_promoted};
pub use repo::Repository;
pub use restore::{
    restore, restore_counted, RecoveryTarget, RestoreOptions, RestoreStats, TargetAction,
};
pub use storage::{ObjectInfo, Storage};
