//! System packages the local cluster and tests need, installed with apt-get when missing
//! (Debian, as root). Anything else gets a message saying what to install.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

/// A package and how to tell it is installed.
struct Need {
    package: &'static str,
    present: fn() -> bool,
}

fn pg_server_present() -> bool {
    pgha_postgres::PgBinaries::discover(None).is_ok()
}

fn pgbouncer_present() -> bool {
    pgha_pooling_config::pgbouncer_program().is_file()
}

fn promtool_present() -> bool {
    Path::new("/usr/bin/promtool").exists()
}

fn postgres_exporter_present() -> bool {
    Path::new("/usr/bin/prometheus-postgres-exporter").exists()
}

fn haproxy_present() -> bool {
    Path::new("/usr/sbin/haproxy").exists()
}

fn python_venv_present() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

const NEEDS: &[Need] = &[
    Need {
        package: "postgresql-15",
        present: pg_server_present,
    },
    Need {
        package: "pgbouncer",
        present: pgbouncer_present,
    },
    // promtool: the monitoring tests check and unit-test the rendered alert rules.
    Need {
        package: "prometheus",
        present: promtool_present,
    },
    // The baseline the exporter test diffs metric names against and the bench compares with.
    Need {
        package: "prometheus-postgres-exporter",
        present: postgres_exporter_present,
    },
    // The load balancer the agent API's Patroni-compatible health checks are tested with.
    Need {
        package: "haproxy",
        present: haproxy_present,
    },
    // The venv that holds moto's S3 server for the backup tests.
    Need {
        package: "python3-venv",
        present: python_venv_present,
    },
];

/// moto's S3 server for the backup tests, pinned, in `$HOME/.cache/pgha-venv`.
const MOTO: &str = "moto[server]==5.2.5";

fn venv_dir() -> std::path::PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| "/root".into(), std::path::PathBuf::from);
    home.join(".cache/pgha-venv")
}

/// Creates the venv and installs the pinned moto server when `moto_server` is missing.
pub fn ensure_moto() -> anyhow::Result<()> {
    let venv = venv_dir();
    if venv.join("bin/moto_server").exists() {
        return Ok(());
    }
    eprintln!("xtask: creating {} with {MOTO}", venv.display());
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("run python3 -m venv")?;
    if !st.success() {
        bail!("python3 -m venv {} failed ({st})", venv.display());
    }
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", MOTO])
        .status()
        .context("run pip install")?;
    if !st.success() {
        bail!("pip install {MOTO} failed ({st})");
    }
    Ok(())
}

/// pgBackRest, for `cargo xtask bench backup` only.
pub fn ensure_pgbackrest() -> anyhow::Result<()> {
    if Path::new("/usr/bin/pgbackrest").exists() {
        return Ok(());
    }
    ensure(&["pgbackrest"])
}

fn is_root() -> bool {
    // SAFETY-free check: /proc/self/status would do too, but `id -u` is universal.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs every missing package in one apt-get call.
pub fn ensure(packages: &[&str]) -> anyhow::Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !(is_root() && Path::new("/usr/bin/apt-get").exists()) {
        bail!(
            "missing system packages: {}; install them (Debian: sudo apt-get install -y {})",
            packages.join(", "),
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("run apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get install")?;
    if !st.success() {
        bail!("apt-get install {} failed ({st})", packages.join(" "));
    }
    Ok(())
}

/// Ensures PostgreSQL server binaries and the `postgres` OS user.
pub fn ensure_postgres() -> anyhow::Result<()> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.package)
        .collect();
    ensure(&missing)?;
    if is_root() && pgha_postgres::OsUser::lookup("postgres").is_err() {
        let st = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/bin/bash",
                "postgres",
            ])
            .status()
            .context("run useradd")?;
        if !st.success() {
            bail!("useradd postgres failed ({st})");
        }
    }
    Ok(())
}

/// etcd (the DCS) and protoc (etcd-client's build needs it).
pub fn ensure_ha() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if pgha_local_cluster::etcd_binary().is_none() {
        missing.push("etcd-server");
    }
    if !(Path::new("/usr/bin/protoc").exists() || std::env::var_os("PROTOC").is_some()) {
        missing.push("protobuf-compiler");
    }
    ensure(&missing)
}

/// Simulated hosts for the fault tests: network namespaces and veth (iproute2), filtering
/// (nftables).
pub fn ensure_netns() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new("/usr/sbin/nft").exists() && !Path::new("/usr/bin/nft").exists() {
        missing.push("nftables");
    }
    if !Path::new("/usr/sbin/ip").exists() && !Path::new("/usr/bin/ip").exists() {
        missing.push("iproute2");
    }
    ensure(&missing)
}

pub fn ensure_all() -> anyhow::Result<ExitCode> {
    ensure_postgres()?;
    ensure_ha()?;
    ensure_netns()?;
    ensure_moto()?;
    eprintln!("xtask: system dependencies present");
    Ok(ExitCode::SUCCESS)
}
