//! `pgha show-config` and `pgha edit-config`: the cluster settings in the DCS.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context};
use pgha_config::dynamic::{cli_value, merge_patch, patch_for};
use pgha_config::PghaConfig;
use pgha_failover::dcs::{Dcs, EtcdDcs};
use pgha_failover::settings::{self, Change, Edit};
use serde_json::Value;

use crate::cli::EditConfigArgs;

async fn dcs(config: &PghaConfig) -> anyhow::Result<EtcdDcs> {
    EtcdDcs::from_config(config, "pgha-cli")
        .await
        .context("connect to the DCS ([dcs] etcd endpoints)")
}

pub async fn show(config: &PghaConfig) -> anyhow::Result<()> {
    let view = dcs(config).await?.view().await?;
    if view.config.settings.is_none() {
        eprintln!("(not in the DCS yet: pgha.toml's values, which the first leader writes there)");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&settings::document(config, &view))?
    );
    Ok(())
}

/// `--set KEY=VALUE` and `--pg NAME=VALUE` as one merge patch.
fn patch(args: &EditConfigArgs) -> anyhow::Result<Value> {
    let mut p = Value::Object(Default::default());
    let pairs = args.set.iter().map(|s| ("--set", "", s)).chain(
        args.pg
            .iter()
            .map(|s| ("--pg", "postgresql.parameters.", s)),
    );
    for (flag, prefix, s) in pairs {
        let Some((k, v)) = s.split_once('=') else {
            bail!("{flag} {s}: expected KEY=VALUE");
        };
        let k = k.trim();
        if k.is_empty() || k.split('.').any(str::is_empty) {
            bail!("{flag} {s}: `{k}` is not a key (dotted names, e.g. postgresql.parameters.work_mem)");
        }
        merge_patch(
            &mut p,
            &patch_for(&format!("{prefix}{k}"), cli_value(v.trim())),
        );
    }
    Ok(p)
}

/// The document edited in $EDITOR: Err names the file and the JSON error.
fn in_editor(config: &PghaConfig, doc: &Value) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "pgha-{}-config-{}.json",
        config.cluster.name,
        std::process::id()
    ));
    // A new file only (never one someone placed there), readable by us alone.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all((serde_json::to_string_pretty(doc)? + "\n").as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    drop(f);
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // $EDITOR may carry arguments (`code --wait`): run it through the shell, the file as $1.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("pgha-edit-config")
        .arg(&path)
        .status()
        .with_context(|| format!("run the editor `{editor}`"))?;
    let text = std::fs::read_to_string(&path);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!("remove {}: {e}", path.display());
    }
    if !status.success() {
        bail!("the editor `{editor}` exited with {status}: nothing changed");
    }
    let text = text.with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the edited document is not JSON ({})", path.display()))
}

fn read_document(file: &std::path::Path) -> anyhow::Result<Value> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read standard input")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    }
    serde_json::from_str(&text).with_context(|| format!("{}: not a JSON document", file.display()))
}

fn ask(change: &Change, force: bool) -> bool {
    println!("Changes to the cluster settings:");
    for l in change.diff() {
        println!("  {l}");
    }
    if force {
        return true;
    }
    print!("Apply these changes? [y/N] ");
    if let Err(e) = std::io::stdout().flush() {
        tracing::warn!("flush: {e}");
    }
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(_) => matches!(line.trim(), "y" | "Y" | "yes"),
        Err(e) => {
            eprintln!("could not read the answer: {e}");
            false
        }
    }
}

pub async fn edit(config: &PghaConfig, args: &EditConfigArgs) -> anyhow::Result<()> {
    let edit = if args.editor {
        None
    } else if let Some(f) = &args.replace {
        Some(Edit::Replace(read_document(f)?))
    } else if args.set.is_empty() && args.pg.is_empty() {
        bail!("nothing to change: give --set KEY=VALUE, --pg NAME=VALUE, --replace FILE or -e");
    } else {
        Some(Edit::Patch(patch(args)?))
    };
    if !args.force && !std::io::stdin().is_terminal() {
        bail!("standard input is not a terminal, so nobody can confirm: pass --force to write without asking");
    }
    let d = dcs(config).await?;
    let edit = match edit {
        Some(e) => e,
        None => {
            let view = d.view().await?;
            Edit::Replace(in_editor(config, &settings::document(config, &view))?)
        }
    };
    match settings::edit(&d, config, &edit, |c| ask(c, args.force)).await? {
        Some(_) => println!(
            "written: every agent applies it within a loop (parameters that need a restart show under PENDING RESTART in `pgha list`)"
        ),
        None => println!("nothing written"),
    }
    Ok(())
}
