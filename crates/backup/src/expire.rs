//! `expire`: retention by count and/or age; WAL older than the oldest kept backup's start is
//! removed, nothing else. Interrupted backups (no manifest) are removed too.

use std::time::{Duration, SystemTime};

use pgha_config::RetentionConfig;

use crate::manifest::{parse_segment, Manifest, BACKUPS};
use crate::repo::Repository;
use crate::storage::Storage;
use crate::wal::WAL;
use crate::Result;

/// What `expire` removes (or would, with --dry-run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpirePlan {
    pub keep: Vec<String>,
    pub remove_backups: Vec<String>,
    pub incomplete: Vec<String>,
    /// WAL object keys.
    pub remove_wal: Vec<String>,
}

/// Plans and (unless `dry_run`) applies retention under the repository lock, so that no
/// backup being written is taken for an interrupted one.
pub async fn expire(
    repo: &Repository,
    retention: &RetentionConfig,
    now: SystemTime,
    dry_run: bool,
) -> Result<ExpirePlan> {
    if dry_run {
        return plan(repo, retention, now).await;
    }
    let storage = repo.storage();
    let lock = crate::lock::acquire(&storage, "expire").await?;
    let r = async {
        let p = plan(repo, retention, now).await?;
        apply(repo, &p).await?;
        Ok(p)
    }
    .await;
    lock.release().await;
    r
}

/// Decides what to remove under `retention` at time `now`.
pub async fn plan(
    repo: &Repository,
    retention: &RetentionConfig,
    now: SystemTime,
) -> Result<ExpirePlan> {
    let manifests = repo.manifests().await?;
    let n = manifests.len();
    let mut plan = ExpirePlan {
        incomplete: repo.incomplete_ids().await?,
        ..Default::default()
    };
    let mut oldest_kept: Option<&Manifest> = None;
    for (i, m) in manifests.iter().enumerate() {
        let newest = i + 1 == n;
        let by_count = retention.full.is_some_and(|k| i + (k as usize) < n);
        let by_age = retention.max_age.is_some_and(|a| {
            humantime::parse_rfc3339_weak(m.finished_at.trim_end_matches('Z'))
                .is_ok_and(|t| now.duration_since(t).unwrap_or(Duration::ZERO) > a)
        });
        if !newest && (by_count || by_age) {
            plan.remove_backups.push(m.id.clone());
        } else {
            plan.keep.push(m.id.clone());
            oldest_kept.get_or_insert(m);
        }
    }
    if let Some(m) = oldest_kept {
        if let Some((_, keep_from)) = parse_segment(&m.start_wal, m.wal_segment_size) {
            for o in repo.storage().list(WAL).await? {
                let name = o.key.rsplit('/').next().unwrap_or("");
                if let Some((_, seg)) = parse_segment(name, m.wal_segment_size) {
                    if seg < keep_from {
                        plan.remove_wal.push(o.key);
                    }
                }
            }
        }
    }
    Ok(plan)
}

/// Removes what `plan` lists: each backup's manifest first (so it stops being listed), then its
/// packs; then the WAL.
pub async fn apply(repo: &Repository, plan: &ExpirePlan) -> Result<()> {
    let s = repo.storage();
    for id in &plan.remove_backups {
        s.delete(&Manifest::key(id)).await?;
        delete_prefix(s.as_ref(), &format!("{BACKUPS}{id}/")).await?;
    }
    for id in &plan.incomplete {
        delete_prefix(s.as_ref(), &format!("{BACKUPS}{id}/")).await?;
    }
    for k in &plan.remove_wal {
        s.delete(k).await?;
    }
    Ok(())
}

async fn delete_prefix(s: &dyn Storage, prefix: &str) -> Result<()> {
    for o in s.list(prefix).await? {
        s.delete(&o.key).await?;
    }
    Ok(())
}

/// Removes backups left without a manifest (one backup runs at a time per repository).
pub async fn remove_incomplete(repo: &Repository) -> Result<()> {
    let s = repo.storage();
    for id in repo.incomplete_ids().await? {
        tracing::warn!(%id, "removing interrupted backup");
        delete_prefix(s.as_ref(), &format!("{BACKUPS}{id}/")).await?;
    }
    Ok(())
}
