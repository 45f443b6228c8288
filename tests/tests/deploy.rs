//! deploy/systemd: every unit passes `systemd-analyze verify` with no warning (an unknown key or
//! a bad value is only a warning to systemd, and a unit that silently lost its hardening or its
//! restart policy is what this test is for), its ExecStart pointed at the built binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    pgha_test_support::tidy::workspace_root()
}

/// target/debug (or release): the test executable lives in its deps/.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Copies the units with ExecStart under `bins` into `dir` (a template as instance `node1`).
fn stage(units: &Path, bins: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(units)? {
        let p = e?.path();
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if !name.ends_with(".service") && !name.ends_with(".timer") {
            continue;
        }
        let text = std::fs::read_to_string(&p)?;
        anyhow::ensure!(
            text.contains("ExecStart=/usr/local/bin/") || name.ends_with(".timer"),
            "{name}: ExecStart should run the installed binary under /usr/local/bin"
        );
        let staged = dir.join(name.replace("@.", "@node1."));
        std::fs::write(
            &staged,
            text.replace("/usr/local/bin/", &format!("{}/", bins.display())),
        )?;
        out.push(staged);
    }
    out.sort();
    Ok(out)
}

fn verify(files: &[PathBuf]) -> anyhow::Result<(bool, String)> {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(files)
        .output()?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok((o.status.success() && msg.trim().is_empty(), msg))
}

#[test]
fn systemd_units_verify_clean() -> anyhow::Result<()> {
    let units = root().join("deploy/systemd");
    let bins = bin_dir();
    for b in [
        "pgha-agent",
        "pgha-exporter",
        "pgha-backup",
        "pgha-pgbouncer",
    ] {
        anyhow::ensure!(
            bins.join(b).is_file(),
            "{} missing: build the workspace first (cargo xtask test does)",
            bins.join(b).display()
        );
    }
    let dir = tempfile::tempdir()?;
    let files = stage(&units, &bins, dir.path())?;
    assert_eq!(files.len(), 4, "{files:?}");
    let (ok, msg) = verify(&files)?;
    assert!(ok, "systemd-analyze verify:\n{msg}");
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        for key in [
            "User=postgres",
            "NoNewPrivileges=yes",
            "Restart=",
            "ProtectSystem=",
        ] {
            assert!(text.contains(key), "{}: no {key}", f.display());
        }
    }
    let agent = std::fs::read_to_string(dir.path().join("pgha-agent@node1.service"))?;
    // The agent stops its own PostgreSQL: systemd signals the agent alone.
    assert!(agent.contains("KillMode=mixed"), "{agent}");

    // The check can fail: a misspelt value is reported.
    let bad = dir.path().join("pgha-agent@node2.service");
    std::fs::write(&bad, agent.replace("Restart=always", "Restart=sometimes"))?;
    let (ok, msg) = verify(&[bad])?;
    assert!(!ok && msg.contains("sometimes"), "{msg}");
    Ok(())
}
