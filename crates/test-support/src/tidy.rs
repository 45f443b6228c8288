//! Checks that keep the docs true to the code: every CLI subcommand has a line in
//! docs/QUICKREF.md; docs/ARCHITECTURE.md's "may depend on" column matches the Cargo.toml files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The workspace root (tests run with the package's dir as cwd).
pub fn workspace_root() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| ".".into());
    here.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .map_or(here.clone(), Path::to_path_buf)
}

/// Every subcommand path of `cmd` missing from QUICKREF: a path `a b` of binary `bin` needs a
/// line with `` `bin a `` that also names `b`.
pub fn quickref_missing(bin: &str, cmd: &clap::Command, quickref: &str) -> Vec<String> {
    let mut missing = Vec::new();
    walk(bin, cmd, &mut Vec::new(), quickref, &mut missing);
    missing
}

fn walk(
    bin: &str,
    cmd: &clap::Command,
    path: &mut Vec<String>,
    quickref: &str,
    missing: &mut Vec<String>,
) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_string();
        if name == "help" {
            continue;
        }
        let top = path.first().cloned().unwrap_or_else(|| name.clone());
        let prefix = format!("`{bin} {top}");
        let found = quickref.lines().any(|l| {
            l.contains(&prefix)
                && path
                    .iter()
                    .chain(std::iter::once(&name))
                    .all(|p| l.contains(p.as_str()))
        });
        path.push(name);
        if !found {
            missing.push(format!("{bin} {}", path.join(" ")));
        }
        walk(bin, sub, path, quickref, missing);
        path.pop();
    }
}

/// The workspace packages a Cargo.toml's `[dependencies]` names (not dev or build ones).
pub fn internal_deps(manifest: &str, packages: &BTreeSet<String>) -> BTreeSet<String> {
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        if !in_deps {
            continue;
        }
        let name = t
            .split(|c: char| c == '=' || c == '.' || c.is_whitespace())
            .next()
            .unwrap_or("");
        if packages.contains(name) {
            out.insert(name.to_string());
        }
    }
    out
}

/// Rows of ARCHITECTURE.md's crate table whose "may depend on" column (workspace packages
/// before an optional `;`, `—` for none) differs from the crate's Cargo.toml.
pub fn architecture_mismatches(root: &Path) -> anyhow::Result<Vec<String>> {
    let arch = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md"))?;
    let mut packages = BTreeSet::new();
    let mut dirs = Vec::new();
    for group in ["crates", "bins"] {
        for e in std::fs::read_dir(root.join(group))? {
            dirs.push(e?.path());
        }
    }
    dirs.push(root.join("xtask"));
    dirs.push(root.join("tests"));
    for d in &dirs {
        if let Ok(m) = std::fs::read_to_string(d.join("Cargo.toml")) {
            if let Some(n) = m
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \""))
                .and_then(|n| n.strip_suffix('"'))
            {
                packages.insert(n.to_string());
            }
        }
    }
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for line in arch.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let (Some(first), Some(last)) = (cols.first(), cols.last()) else {
            continue;
        };
        let Some(dir) = first.trim().split('`').nth(1) else {
            continue;
        };
        let manifest = root.join(dir).join("Cargo.toml");
        let Ok(m) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        seen.insert(dir.to_string());
        let documented: BTreeSet<String> = last
            .split(';')
            .next()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && s != "—")
            .collect();
        let actual = internal_deps(&m, &packages);
        if documented != actual {
            problems.push(format!(
                "{dir}: ARCHITECTURE.md says {documented:?}, {} has {actual:?}",
                manifest.display()
            ));
        }
    }
    for d in &dirs {
        let rel = d.strip_prefix(root).unwrap_or(d).display().to_string();
        if d.join("Cargo.toml").exists() && !seen.contains(&rel) {
            problems.push(format!(
                "{rel}: no row in docs/ARCHITECTURE.md's crate table"
            ));
        }
    }
    Ok(problems)
}
