//! `expire`: retention by count and/or age of full backups; diff and incr backups live as
//! long as the full backup before them, and a backup another kept one references is kept.
//! WAL older than the oldest kept backup's start is removed, nothing else. Interrupted
//! backups (no manifest) are removed too.

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
    let mut plan = ExpirePlan {
        incomplete: repo.incomplete_ids().await?,
        ..Default::default()
    };
    let keep = kept(&manifests, retention, now);
    let mut oldest_kept: Option<&Manifest> = None;
    for m in &manifests {
        if keep.contains(&m.id) {
            plan.keep.push(m.id.clone());
            oldest_kept.get_or_insert(m);
        } else {
            plan.remove_backups.push(m.id.clone());
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

/// The ids to keep: retention counts and ages full backups (the newest full is always
/// kept); a diff or incr is kept while it is newer than the oldest kept full; and whatever a
/// kept backup references (its chunks' owners, its reference) is kept with it.
fn kept(
    manifests: &[Manifest],
    retention: &RetentionConfig,
    now: SystemTime,
) -> std::collections::BTreeSet<String> {
    let fulls: Vec<usize> = (0..manifests.len())
        .filter(|&i| manifests[i].kind == "full")
        .collect();
    let mut keep = std::collections::BTreeSet::new();
    let mut oldest_full = None;
    for (j, &i) in fulls.iter().enumerate() {
        let m = &manifests[i];
        let newest = j + 1 == fulls.len();
        let by_count = retention
            .full
            .is_some_and(|k| j + (k as usize) < fulls.len());
        let by_age = retention.max_age.is_some_and(|a| {
            humantime::parse_rfc3339_weak(m.finished_at.trim_end_matches('Z'))
                .is_ok_and(|t| now.duration_since(t).unwrap_or(Duration::ZERO) > a)
        });
        if newest || !(by_count || by_age) {
            keep.insert(m.id.clone());
            oldest_full.get_or_insert(i);
        }
    }
    for (i, m) in manifests.iter().enumerate() {
        if m.kind != "full" && oldest_full.is_none_or(|o| i > o) {
            keep.insert(m.id.clone());
        }
    }
    loop {
        let deps: Vec<String> = manifests
            .iter()
            .filter(|m| keep.contains(&m.id))
            .flat_map(Manifest::depends_on)
            .filter(|d| !keep.contains(d))
            .collect();
        if deps.is_empty() {
            return keep;
        }
        keep.extend(deps);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, kind: &str, reference: Option<&str>, owners: &[&str]) -> Manifest {
        let mut m = crate::manifest::tests::minimal(id);
        m.kind = kind.into();
        m.reference = reference.map(Into::into);
        m.files[0].chunks = owners
            .iter()
            .map(|o| crate::manifest::ChunkRef {
                backup: Some((*o).into()),
                pack: 0,
                pack_offset: 0,
                stored_len: 1,
                file_offset: 0,
                len: 1,
                sha256: String::new(),
            })
            .collect();
        m
    }

    #[test]
    fn retention_counts_full_backups_and_keeps_what_kept_ones_reference() {
        let r = RetentionConfig {
            full: Some(1),
            max_age: None,
        };
        // f1 <- i1 ; f2 <- d2 <- i2 (i2 references chunks of f2 and d2).
        let ms = vec![
            m("a-f1", "full", None, &[]),
            m("b-i1", "incr", Some("a-f1"), &["a-f1"]),
            m("c-f2", "full", None, &[]),
            m("d-d2", "diff", Some("c-f2"), &["c-f2"]),
            m("e-i2", "incr", Some("d-d2"), &["c-f2", "d-d2"]),
        ];
        let keep: Vec<String> = kept(&ms, &r, SystemTime::now()).into_iter().collect();
        assert_eq!(keep, ["c-f2", "d-d2", "e-i2"]);
        // An incr newer than the kept full that references an old full keeps that full.
        let ms2 = vec![
            m("a-f1", "full", None, &[]),
            m("c-f2", "full", None, &[]),
            m("e-i2", "incr", Some("c-f2"), &["c-f2", "a-f1"]),
        ];
        let keep: Vec<String> = kept(&ms2, &r, SystemTime::now()).into_iter().collect();
        assert_eq!(keep, ["a-f1", "c-f2", "e-i2"]);
    }
}
