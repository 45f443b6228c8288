//! Shared by the pgha-backup integration tests: a real PostgreSQL archiving with
//! `pgha-backup wal-push` into a local or S3 (moto) repository, and helpers to run the binary.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context;
use pgha_config::{BackupSection, ConfigSource};
use pgha_postgres::{LocalInstance, OsUser, PgBinaries, StopMode};
use pgha_test_support::moto::MotoServer;
use pgha_test_support::TestCluster;

pub const TABLES: [&str; 2] = ["accounts", "small"];

pub struct Env {
    pub cluster: TestCluster,
    pub work: tempfile::TempDir,
    pub bin: PathBuf,
    pub cfg: PathBuf,
    _moto: Option<MotoServer>,
}

/// Stops a restored instance on drop.
pub struct Restored(pub LocalInstance);
impl Drop for Restored {
    fn drop(&mut self) {
        self.0.stop_blocking(StopMode::Immediate);
    }
}

pub fn postgres_user() -> Option<OsUser> {
    OsUser::for_server("postgres").unwrap()
}

pub fn give_to_postgres(p: &Path) {
    if let Some(u) = postgres_user() {
        u.chown(p).unwrap();
    }
}

pub fn secret_file(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to_postgres(path);
}

impl Env {
    pub async fn start(s3: bool, encrypt: bool) -> anyhow::Result<Env> {
        Env::start_with(s3, encrypt, 0, false).await
    }

    /// With `replicas` streaming replicas, and `[tls]` (required) when `tls`.
    pub async fn start_with(
        s3: bool,
        encrypt: bool,
        replicas: usize,
        tls: bool,
    ) -> anyhow::Result<Env> {
        let mut b = TestCluster::builder()
            .replicas(replicas)
            .parameter("archive_mode", "on");
        if tls {
            b = b.tls();
        }
        let cluster = b.start().await?;
        let work = tempfile::Builder::new()
            .prefix("pgha-backup-test-")
            .tempdir()?;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711))?;
        // The server runs archive_command as `postgres`: it needs a binary it can reach.
        let bin = work.path().join("pgha-backup");
        std::fs::copy(env!("CARGO_BIN_EXE_pgha-backup"), &bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        let restores = work.path().join("r");
        std::fs::create_dir(&restores)?;
        give_to_postgres(&restores);
        let mut section = format!(
            "\n[backup]\ncompression_level = 3\nparallel = 2\nmetrics_file = \"{}\"\n",
            work.path().join("metrics.prom").display()
        );
        if encrypt {
            let key = work.path().join("enc.key");
            secret_file(&key, "correct horse battery staple");
            section += &format!("encryption_key = {{ file = \"{}\" }}\n", key.display());
        }
        section += "[backup.retention]\nfull = 1\n";
        let moto = if s3 {
            let m = MotoServer::start()?;
            m.create_bucket("pgha-test")?;
            let kf = work.path().join("s3.key");
            let sf = work.path().join("s3.secret");
            secret_file(&kf, "testing");
            secret_file(&sf, "testing");
            section += &format!(
                "[backup.repository.s3]\nbucket = \"pgha-test\"\nendpoint = \"{}\"\npath_style = true\nprefix = \"cluster-a\"\naccess_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ file = \"{}\" }}\n",
                m.endpoint(),
                kf.display(),
                sf.display()
            );
            Some(m)
        } else {
            let repo = work.path().join("repo");
            std::fs::create_dir(&repo)?;
            give_to_postgres(&repo);
            section += &format!("[backup.repository]\npath = \"{}\"\n", repo.display());
            None
        };
        let cfg = cluster.config_path();
        let mut text = std::fs::read_to_string(&cfg)?;
        text += &section;
        std::fs::write(&cfg, text)?;
        let env = Env {
            cluster,
            work,
            bin,
            cfg,
            _moto: moto,
        };
        let cmd = format!(
            "{} --config {} wal-push %p",
            env.bin.display(),
            env.cfg.display()
        );
        env.sql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"))
            .await?;
        env.sql("SELECT pg_reload_conf()").await?;
        Ok(env)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--config")
            .arg(&self.cfg)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "pgha-backup {args:?} failed: {}{}",
            out(&o),
            err(&o)
        );
        out(&o)
    }

    pub async fn sql(&self, q: &str) -> anyhow::Result<()> {
        let mut c = self.cluster.conn("node1").await?;
        sqlx::query(q)
            .execute(&mut c)
            .await
            .with_context(|| q.to_owned())?;
        Ok(())
    }

    pub async fn scalar(&self, port: Option<u16>, q: &str) -> anyhow::Result<String> {
        let mut p = self.cluster.instance("node1")?.connect_params().clone();
        if let Some(port) = port {
            // A restored copy beside the cluster, on loopback without TLS.
            p.port = port;
            p.host = "127.0.0.1".into();
            p.ssl_root_cert = None;
        }
        let mut c = p.connect().await?;
        Ok(sqlx::query_scalar::<_, Option<String>>(q)
            .fetch_one(&mut c)
            .await
            .with_context(|| q.to_owned())?
            .unwrap_or_default())
    }

    pub async fn checksums(&self, port: Option<u16>) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        for t in TABLES {
            v.push(
                self.scalar(
                    port,
                    &format!("SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM {t} t"),
                )
                .await?,
            );
        }
        Ok(v)
    }

    /// Switches WAL and waits until the switched segment is archived.
    pub async fn archive_now(&self) -> anyhow::Result<()> {
        let seg = self
            .scalar(None, "SELECT pg_walfile_name(pg_switch_wal())")
            .await?;
        TestCluster::eventually(Duration::from_secs(30), "segment archived", || async {
            let last = self
                .scalar(
                    None,
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                )
                .await?;
            Ok((last >= seg).then_some(()))
        })
        .await
    }

    pub fn section(&self) -> BackupSection {
        pgha_config::load(ConfigSource::Flag(self.cfg.clone()))
            .unwrap()
            .config
            .backup
            .unwrap()
    }

    pub fn restored(&self, dir: &Path, port: u16) -> Restored {
        let mut p = self
            .cluster
            .instance("node1")
            .unwrap()
            .connect_params()
            .clone();
        p.port = port;
        Restored(LocalInstance::new(
            "restored",
            dir,
            dir.with_extension("log"),
            PgBinaries::discover(None).unwrap(),
            postgres_user(),
            p,
        ))
    }
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn backup_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .nth(1)
        .expect("backup id in output")
        .to_owned()
}
