//! `--web.config.file` against a real PostgreSQL with the cluster's TLS certificates: HTTPS
//! only, basic authentication with a bcrypt hash (401 with `WWW-Authenticate` without or with
//! wrong credentials), HEAD answered like GET without a body, other methods refused, and a bad
//! file stops the exporter with the file and field named.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgha_test_support::{free_port, TestCluster};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PW: &str = "scrape-Secret-9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_from_the_web_config_file() -> anyhow::Result<()> {
    let c = TestCluster::builder().replicas(0).tls().start().await?;
    let tls = c.config().tls.clone().unwrap();
    let node = c.config().node("node1").unwrap().clone();
    let dir = tempfile::tempdir()?;
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prom: '{}'\n",
            tls.cert_file(&node).display(),
            tls.key_file(&node).display(),
            bcrypt::hash(PW, 6)?
        ),
    )?;
    let port = free_port("127.0.0.1")?;
    let addr = format!("127.0.0.1:{}", port.port);
    drop(port);
    let _exporter = Proc(
        Command::new(env!("CARGO_BIN_EXE_pgha-exporter"))
            .arg("--config")
            .arg(c.config_path())
            .args(["--listen", &addr])
            .arg("--web.config.file")
            .arg(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "exporter did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.ca_file())?)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("https://{addr}/metrics");

    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("www-authenticate").unwrap(),
        "Basic realm=\"pgha-exporter\""
    );
    let r = http
        .get(&url)
        .basic_auth("prom", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = http.get(&url).basic_auth("prom", Some(PW)).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()?
        .starts_with("text/plain; version=0.0.4"),);
    let body = r.text().await?;
    assert!(body.lines().any(|l| l == "pg_up 1"), "{body}");
    let r = http.head(&url).basic_auth("prom", Some(PW)).send().await?;
    assert_eq!(r.status(), 200);
    assert!(r.text().await?.is_empty(), "HEAD has no body");
    let r = http.post(&url).basic_auth("prom", Some(PW)).send().await?;
    assert_eq!(r.status(), 405);
    let probe = http
        .get(format!("https://{addr}/probe?target=node1"))
        .basic_auth("prom", Some(PW))
        .send()
        .await?;
    assert_eq!(probe.status(), 200);
    // Plain HTTP on the TLS port gets nothing.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP was served"
    );

    // A bad file: the exporter refuses to start and says where.
    std::fs::write(&web, "basic_auth_users:\n  prom: plaintext\n")?;
    let out = Command::new(env!("CARGO_BIN_EXE_pgha-exporter"))
        .arg("--config")
        .arg(c.config_path())
        .args(["--listen", "127.0.0.1:0"])
        .arg("--web.config.file")
        .arg(&web)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&web.display().to_string())
            && err.contains("basic_auth_users.prom: not a bcrypt hash"),
        "{err}"
    );
    Ok(())
}
