//! `pgha tls init`: a local CA (kept across runs) and a server certificate per node whose
//! subject alternative names are the node's `host` and its agent's address.

use std::path::{Path, PathBuf};

use pgha_config::{NodeConfig, PghaConfig};
use pgha_postgres::files::write_atomic;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::{Result, TlsError};

/// What `init` issues.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Validity of node certificates, in days.
    pub days: u32,
    /// Validity of a new CA, in days.
    pub ca_days: u32,
    /// Issue node certificates even when valid ones exist (rotation: then reload).
    pub renew: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            days: 825,
            ca_days: 3650,
            renew: false,
        }
    }
}

/// One file `init` looked at.
#[derive(Debug, Clone)]
pub struct Issued {
    pub what: String,
    pub path: PathBuf,
    /// False when an existing file was kept.
    pub created: bool,
}

/// Everything `init` did.
#[derive(Debug, Clone, Default)]
pub struct InitReport {
    pub files: Vec<Issued>,
}

/// Creates `[tls].dir` with `ca.crt`/`ca.key` (unless they exist) and `<node>.crt`/`<node>.key`
/// for every node that has none (or every node with `renew`). Keys are 0600; nothing is
/// half-written (temp file, fsync, rename).
pub fn init(config: &PghaConfig, opts: &InitOptions) -> Result<InitReport> {
    let tls = config.tls.as_ref().ok_or(TlsError::NotConfigured)?;
    std::fs::create_dir_all(&tls.dir).map_err(TlsError::io("create directory", &tls.dir))?;
    let mut report = InitReport::default();
    let (ca_cert, ca_key) = (tls.ca_file(), tls.ca_key_file());
    let now = OffsetDateTime::now_utc();
    let issuer = if ca_cert.exists() {
        let key = read(
            &ca_key,
            "read the CA key (needed to issue node certificates)",
        )?;
        let key = KeyPair::from_pem(&key).map_err(|e| bad_pem(&ca_key, e))?;
        let pem = read(&ca_cert, "read the CA certificate")?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| bad_pem(&ca_cert, e))?;
        report.files.push(Issued {
            what: "CA certificate (kept)".into(),
            path: ca_cert.clone(),
            created: false,
        });
        issuer
    } else {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(&format!("pgha CA for cluster {}", config.cluster.name));
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(i64::from(opts.ca_days));
        let key = KeyPair::generate().map_err(issue("the CA key"))?;
        let cert = p.self_signed(&key).map_err(issue("the CA certificate"))?;
        write_atomic(&ca_key, key.serialize_pem().as_bytes(), 0o600, None)?;
        write_atomic(&ca_cert, cert.pem().as_bytes(), 0o644, None)?;
        report.files.push(Issued {
            what: "CA certificate".into(),
            path: ca_cert.clone(),
            created: true,
        });
        Issuer::new(p, key)
    };
    let mut leaves: Vec<(String, Vec<String>, PathBuf, PathBuf)> = config
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                alt_names(n),
                tls.cert_file(n),
                tls.key_file(n),
            )
        })
        .collect();
    if let Some(pool) = &config.pooling {
        let names = pool
            .listen_addr
            .split(',')
            .map(|a| match a.trim() {
                "*" | "0.0.0.0" => "127.0.0.1".to_owned(),
                a => a.to_owned(),
            })
            .collect();
        leaves.push((
            "pgbouncer".into(),
            names,
            tls.pgbouncer_cert_file(),
            tls.pgbouncer_key_file(),
        ));
    }
    let etcd_hosts = etcd_hosts(config);
    if !etcd_hosts.is_empty() {
        leaves.push((
            "etcd".into(),
            etcd_hosts,
            tls.etcd_cert_file(),
            tls.etcd_key_file(),
        ));
    }
    for (cn, names, cert_path, key_path) in leaves {
        if !opts.renew && cert_path.exists() && key_path.exists() {
            report.files.push(Issued {
                what: format!("{cn} certificate (kept; --renew to reissue)"),
                path: cert_path,
                created: false,
            });
            continue;
        }
        let mut p = CertificateParams::new(names.clone()).map_err(issue(&cn))?;
        p.distinguished_name = name(&cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(i64::from(opts.days));
        let key = KeyPair::generate().map_err(issue(&cn))?;
        let cert = p.signed_by(&key, &issuer).map_err(issue(&cn))?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600, None)?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644, None)?;
        report.files.push(Issued {
            what: format!("{cn} certificate for {}", names.join(", ")),
            path: cert_path,
            created: true,
        });
    }
    Ok(report)
}

/// The names clients use for `node`: its host (IP or DNS name) and its agent's IP.
fn alt_names(node: &NodeConfig) -> Vec<String> {
    let mut names = vec![node.host.clone()];
    if let Some(a) = node.agent_address {
        let ip = a.ip().to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "pgha");
    dn
}

fn read(path: &Path, action: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(TlsError::io(action, path))
}

fn bad_pem(path: &Path, e: rcgen::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_owned(),
        problem: format!("not a usable PEM certificate or key: {e}"),
    }
}

/// The hosts of `[dcs] etcd`'s `https://` endpoints (`https://10.0.0.21:2379` -> `10.0.0.21`,
/// `https://[::1]:2379` -> `::1`), in order, once each.
fn etcd_hosts(config: &PghaConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in config.dcs.iter().flat_map(|d| d.etcd.iter()) {
        let Some(rest) = e.strip_prefix("https://") else {
            continue;
        };
        let authority = rest.split('/').next().unwrap_or(rest);
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        if !host.is_empty() && !out.iter().any(|h| h == host) {
            out.push(host.to_string());
        }
    }
    out
}

fn issue(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.to_owned();
    move |source| TlsError::Issue { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> PghaConfig {
        pgha_config::load_from_str(
            &format!(
                r#"
[cluster]
name = "t"
[replication]
password = {{ env = "UNUSED" }}
[tls]
dir = "{}"
[[nodes]]
name = "n1"
host = "127.0.0.1"
data_dir = "/d/n1"
agent_address = "127.0.0.2:8008"
[[nodes]]
name = "n2"
host = "db2.example"
port = 5433
data_dir = "/d/n2"
"#,
                dir.display()
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn etcd_certificate_names_the_hosts_of_https_endpoints() {
        let mut c = config(Path::new("/t"));
        c.dcs = Some(
            pgha_config::load_from_str(
                "[cluster]\nname = \"t\"\n[replication]\npassword = { env = \"U\" }\n[dcs]\n\
                 etcd = [\"https://10.0.0.21:2379\", \"https://[fd00::22]:2379\", \"https://etcd3.example:2379/\", \"https://10.0.0.21:2380\"]\n\
                 ca_file = \"/t/ca.crt\"\n[[nodes]]\nname = \"n\"\nhost = \"h\"\ndata_dir = \"/d\"\n",
                "dcs",
            )
            .unwrap()
            .dcs
            .unwrap(),
        );
        assert_eq!(etcd_hosts(&c), ["10.0.0.21", "fd00::22", "etcd3.example"]);
        c.dcs.as_mut().unwrap().etcd = vec!["http://10.0.0.21:2379".into()];
        assert!(etcd_hosts(&c).is_empty(), "plain http: no etcd certificate");
    }

    #[test]
    fn issues_a_ca_once_and_node_certificates_with_their_names() {
        let d = tempfile::tempdir().unwrap();
        let c = config(&d.path().join("tls"));
        let r = init(&c, &InitOptions::default()).unwrap();
        assert!(r.files.iter().all(|f| f.created), "{r:?}");
        let ca1 = std::fs::read(d.path().join("tls/ca.crt")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "n1.key", "n2.key"] {
            let mode = std::fs::metadata(d.path().join("tls").join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let n1 = std::fs::read_to_string(d.path().join("tls/n1.crt")).unwrap();
        assert!(n1.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(r.files[1].what.contains("127.0.0.1, 127.0.0.2"), "{r:?}");
        assert!(r.files[2].what.contains("db2.example"), "{r:?}");
        // A second run keeps everything; --renew reissues node certificates with the same CA.
        let again = init(&c, &InitOptions::default()).unwrap();
        assert!(again.files.iter().all(|f| !f.created), "{again:?}");
        let renew = init(
            &c,
            &InitOptions {
                renew: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(renew.files.iter().filter(|f| f.created).count(), 2);
        assert_eq!(std::fs::read(d.path().join("tls/ca.crt")).unwrap(), ca1);
        assert_ne!(
            std::fs::read_to_string(d.path().join("tls/n1.crt")).unwrap(),
            n1
        );
    }

    #[test]
    fn no_tls_section_is_a_clear_error() {
        let mut c = config(Path::new("/nonexistent"));
        c.tls = None;
        let e = init(&c, &InitOptions::default()).unwrap_err().to_string();
        assert!(e.contains("[tls]"), "{e}");
    }
}
