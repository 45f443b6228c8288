//! `Debug` (and `Display` of errors and descriptions) of every public type that holds connect
//! options never shows the password, wherever the password came from: the URL's user info, its
//! `password=` parameter, a read URL, a pgha.toml secret or a hand-built `PgConnectOptions`.
//! No PostgreSQL needed: the routers point at a closed port and start without a primary.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgha_router::url::{redact, MultiHostUrl};
use pgha_router::{
    AgentMembers, AppCredentials, Discovery, Member, Router, RouterOptions, StaticMembers,
    WriteToken,
};
use sqlx::postgres::PgConnectOptions;

const PW: &str = "Sup3rSecretPw";

fn options() -> RouterOptions {
    RouterOptions {
        check_timeout: Duration::from_millis(300),
        failover_wait: Duration::from_millis(300),
        ..RouterOptions::default()
    }
}

fn assert_hidden(what: &str, shown: &str) {
    assert!(!shown.contains(PW), "{what} shows the password: {shown}");
}

/// Builds a router from `b`, checks every handle's `Debug`, and the builder's before building.
async fn check_router(what: &str, b: pgha_router::RouterBuilder) {
    assert_hidden(&format!("{what}: RouterBuilder"), &format!("{b:?}"));
    let router = b.options(options()).build().await.unwrap();
    let shown = format!(
        "{router:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        router.writer(),
        router.reader(),
        router.reader_after(WriteToken(pgha_postgres::Lsn(1))),
        router.reader_for(None),
        router.nodes(),
        router.options(),
    );
    assert!(shown.contains("127.0.0.1:1"), "{what}: {shown}");
    assert_hidden(what, &shown);
    assert_hidden(what, &format!("{:#?}", router));
    if let Ok(pool) = router.primary_pool() {
        assert_hidden(what, &format!("{pool:?}"));
    }
    let err = router.primary_pool().unwrap_err();
    assert_hidden(what, &format!("{err} {err:?}"));
    router.close().await;
}

#[tokio::test]
async fn debug_of_routers_handles_and_members_never_shows_the_password() {
    for url in [
        format!("postgres://app:{PW}@127.0.0.1:1,127.0.0.1:2/app"),
        format!("postgres://app@127.0.0.1:1,127.0.0.1:2/app?password={PW}&sslmode=disable"),
        format!("postgresql://app:{PW}@127.0.0.1:1/app?target_session_attrs=read-write"),
    ] {
        check_router(&url, Router::builder().url(&url)).await;

        let u = MultiHostUrl::parse(&url).unwrap();
        assert_hidden("MultiHostUrl", &format!("{u:?} {}", u.redacted));
        assert_hidden("redact", &redact(&url));
        let m = StaticMembers::from_url(&url).unwrap();
        assert_hidden("StaticMembers", &format!("{m:?} {}", m.describe()));
        for member in m.members().await.unwrap() {
            assert_hidden("Member", &format!("{member:?}"));
        }
    }

    let read = format!("postgres://ro:{PW}@127.0.0.1:2/app?password={PW}");
    check_router(
        "url pair",
        Router::builder().urls("postgres://app:pw@127.0.0.1:1/app", Some(&read)),
    )
    .await;

    // Hand-built options, as a custom Discovery would make them.
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(1)
        .username("app")
        .password(PW);
    let member = Member::new("n1", opts.clone());
    assert_hidden("Member::new", &format!("{member:?}"));
    let members = StaticMembers::new("custom", vec![member]);
    check_router(
        "StaticMembers::new",
        Router::builder().discovery(std::sync::Arc::new(members)),
    )
    .await;
    let agents = AgentMembers::new(["127.0.0.1:9"], opts).unwrap();
    assert_hidden("AgentMembers", &format!("{agents:?} {}", agents.describe()));

    let creds = AppCredentials {
        user: "app".into(),
        password: Some(pgha_config::Secret::new(PW.to_owned())),
        database: None,
    };
    assert_hidden("AppCredentials", &format!("{creds:?}"));
}

#[tokio::test]
async fn refused_urls_never_show_the_password() {
    for url in [
        // A `/` or `?` in an unencoded password ends the authority for a parser.
        format!("postgres://app:{PW}/x@127.0.0.1:1/app"),
        format!("postgres://app:{PW}?x@127.0.0.1:1/app"),
        format!("postgres://app@127.0.0.1:notaport/app?password={PW}"),
        format!("postgres://app@127.0.0.1:1/app?password={PW}&target_session_attrs=master"),
    ] {
        assert_hidden(&url, &redact(&url));
        let Err(err) = Router::builder().url(&url).options(options()).build().await else {
            continue; // accepted; the router test above covers what it shows
        };
        assert_hidden(&url, &format!("{err} {err:?}"));
        let e: sqlx::Error = err.into();
        assert_hidden(&url, &format!("{e} {e:?}"));
    }
}
