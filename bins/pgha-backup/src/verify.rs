//! `pgha-backup verify`: every backup, the whole WAL archive and its continuity; a text or
//! JSON report; the result of a whole-repository run is stored for `pgha verify`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use pgha_backup_core::verify::{self, VerifyResult};
use pgha_backup_core::Repository;
use pgha_config::LoadedConfig;

use crate::cli::VerifyArgs;
use crate::mb;

/// Runs the verification; `Ok(false)` when a problem was found (all are printed).
pub async fn run(
    loaded: &LoadedConfig,
    repo: &Repository,
    a: &VerifyArgs,
    restore_command: String,
    run_as: Option<pgha_postgres::OsUser>,
    parallel: usize,
) -> anyhow::Result<bool> {
    let ids = match &a.id {
        Some(id) => vec![id.clone()],
        None => repo.backup_ids().await?,
    };
    if ids.is_empty() {
        bail!(
            "the repository {} holds no backup to verify",
            repo.storage().describe()
        );
    }
    let mut backups = Vec::new();
    let mut manifests = Vec::new();
    for id in &ids {
        let r = verify::verify_backup(repo, id).await?;
        if !a.json {
            if r.problems.is_empty() {
                println!(
                    "backup {id}: OK ({} packs, {:.1} MB checked, WAL for consistency present)",
                    r.packs,
                    mb(r.bytes)
                );
            } else {
                println!("backup {id}: FAILED");
                for p in &r.problems {
                    println!("  {p}");
                }
            }
        }
        if let Ok(m) = repo.manifest(id).await {
            manifests.push(m);
        }
        backups.push(r);
    }
    let archive = verify::verify_archive(
        repo,
        &manifests,
        a.parallel.unwrap_or(parallel),
        !a.no_progress,
    )
    .await?;
    let result = VerifyResult {
        finished: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        backups,
        archive,
    };
    if a.id.is_none() {
        if let Err(e) = verify::store_result(repo, &result).await {
            tracing::warn!("cannot store the verify result for `pgha verify`: {e}");
        }
    }
    let ar = &result.archive;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let tls: Vec<String> = ar.timelines.iter().map(u32::to_string).collect();
        println!(
            "WAL archive: {} ({} objects, {:.1} MB checked, timelines {}, end {})",
            if ar.problems.is_empty() {
                "OK"
            } else {
                "FAILED"
            },
            ar.objects,
            mb(ar.bytes),
            if tls.is_empty() {
                "none".into()
            } else {
                tls.join(", ")
            },
            ar.end.as_deref().unwrap_or("none")
        );
        for p in &ar.problems {
            println!("  {p}");
        }
        if !ar.skipped.is_empty() {
            println!(
                "  skipped {} object(s) removed by a concurrent expire",
                ar.skipped.len()
            );
        }
    }
    let ok = result.ok();
    if a.restore_test && ok {
        for id in &ids {
            let n = verify::restore_test(
                &loaded.config,
                repo,
                id,
                restore_command.clone(),
                run_as.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("restore test of backup {id}: {e}"))?;
            println!("backup {id}: restore test OK (instance started, {n} relations in pg_class)");
        }
    }
    if !ok {
        let n = result.problems().len();
        eprintln!("pgha-backup: verification failed: {n} problem(s), listed above");
    }
    Ok(ok)
}
