//! `ReadYourWritesLayer` in a real axum service over a real cluster whose only replica has
//! replay paused: a read carrying the cookie the write's answer set sees the write (the router
//! sends it where the write is), a read without it is served by the stale replica, and an
//! answer that failed sets no cookie.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Extension;
use pgha_router::layer::{ReadYourWritesLayer, Session, COOKIE_NAME};
use pgha_router::{Router, RouterOptions};
use pgha_test_support::TestCluster;

async fn add(Extension(s): Extension<Session>) -> StatusCode {
    match sqlx::query("INSERT INTO notes VALUES (1)")
        .execute(s.router().writer())
        .await
    {
        Ok(_) => StatusCode::CREATED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn fail(Extension(s): Extension<Session>) -> StatusCode {
    let _ = sqlx::query("INSERT INTO notes VALUES (2)")
        .execute(s.router().writer())
        .await;
    StatusCode::INTERNAL_SERVER_ERROR
}

/// "count in_recovery" as seen by the reader for this request.
async fn count(Extension(s): Extension<Session>) -> String {
    let (n, replica): (i64, bool) =
        sqlx::query_as("SELECT count(*), pg_is_in_recovery() FROM notes")
            .fetch_one(&s.reader())
            .await
            .unwrap();
    format!("{n} {replica}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_of_a_write_makes_the_next_read_see_it() -> anyhow::Result<()> {
    let c = TestCluster::start(1).await?;
    let router = Arc::new(
        Router::builder()
            .config(c.config(), None)
            .options(RouterOptions {
                health_interval: Duration::from_millis(100),
                max_lag_bytes: None,
                max_lag: None,
                ..RouterOptions::default()
            })
            .build()
            .await?,
    );
    sqlx::query("CREATE TABLE notes (v int)")
        .execute(router.writer())
        .await?;
    TestCluster::eventually(Duration::from_secs(10), "node2 has notes", || async {
        let (has, replica): (bool, bool) =
            sqlx::query_as("SELECT to_regclass('notes') IS NOT NULL, pg_is_in_recovery()")
                .fetch_one(router.reader())
                .await?;
        Ok((has && replica).then_some(()))
    })
    .await?;
    let mut r = c.conn("node2").await?;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut r)
        .await?;

    let app = axum::Router::new()
        .route("/notes", post(add).get(count))
        .route("/fail", post(fail))
        .layer(ReadYourWritesLayer::new(router.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let resp = http.post(format!("{base}/notes")).send().await?;
    assert_eq!(resp.status(), 201);
    let set = resp
        .headers()
        .get("set-cookie")
        .expect("a write's answer sets the token cookie")
        .to_str()?
        .to_owned();
    assert!(set.starts_with(&format!("{COOKIE_NAME}=")), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();

    // Without the cookie: the paused replica, which has not replayed the insert.
    let plain = http
        .get(format!("{base}/notes"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(plain, "0 true");
    // With it: wherever the insert is (the primary, the replica being paused).
    let seen = http
        .get(format!("{base}/notes"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(seen, "1 false");
    // A read sets no cookie; a failed write neither.
    let read = http.get(format!("{base}/notes")).send().await?;
    assert!(read.headers().get("set-cookie").is_none());
    let failed = http.post(format!("{base}/fail")).send().await?;
    assert_eq!(failed.status(), 500);
    assert!(failed.headers().get("set-cookie").is_none());

    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut r)
        .await?;
    server.abort();
    Ok(())
}
