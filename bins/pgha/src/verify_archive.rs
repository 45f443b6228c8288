//! The `archive` check of `pgha verify`: the WAL archive's continuity from every backup to its
//! end, from a listing (cheap: only history files are read), and the outcome of the last full
//! `pgha-backup verify`, which re-read every object.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgha_backup_core::verify::{archive_gaps, last_result};
use pgha_backup_core::Repository;
use pgha_config::PghaConfig;

use crate::verify::{check, skip, Check, Verdict};

const NAME: &str = "archive";

/// Fails on a gap or a missing history file, or when the last full verify found a problem.
/// Without a full verify on record it passes on continuity alone and says so.
pub async fn archive(config: &PghaConfig) -> Check {
    let Some(section) = &config.backup else {
        return skip(NAME, "no [backup] section");
    };
    let r = async {
        let repo = Repository::new(pgha_backup_core::storage::open(section)?);
        let manifests = repo.manifests().await?;
        let gaps = archive_gaps(&repo, &manifests).await?;
        let last = last_result(&repo).await?;
        anyhow::Ok((manifests.len(), gaps, last))
    }
    .await;
    let threshold = "no gap since the oldest backup; last full verify clean";
    let (n, gaps, last) = match r {
        Ok(x) => x,
        Err(e) => return check(NAME, Verdict::Fail, "-", threshold, crate::error_chain(&e)),
    };
    let value = format!(
        "{} objects, end {}",
        gaps.objects,
        gaps.end.as_deref().unwrap_or("none")
    );
    if !gaps.problems.is_empty() {
        return check(
            NAME,
            Verdict::Fail,
            value,
            threshold,
            format!(
                "{} problem(s): {}",
                gaps.problems.len(),
                gaps.problems.join("; ")
            ),
        );
    }
    let Some(last) = last else {
        return check(
            NAME,
            Verdict::Pass,
            value,
            threshold,
            format!("{n} backup(s) can replay to the end; objects not re-read yet (no `pgha-backup verify` on record)"),
        );
    };
    let age = Duration::from_secs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(last.finished),
    );
    let ago = humantime::format_duration(age);
    if !last.ok() {
        let p = last.problems();
        return check(
            NAME,
            Verdict::Fail,
            value,
            threshold,
            format!(
                "the last full verify ({ago} ago) found {} problem(s): {}",
                p.len(),
                p.join("; ")
            ),
        );
    }
    check(
        NAME,
        Verdict::Pass,
        value,
        threshold,
        format!("{n} backup(s) can replay to the end; last full verify {ago} ago: clean"),
    )
}
