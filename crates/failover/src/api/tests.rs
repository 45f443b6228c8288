//! The HTTP layer: every health path × GET/HEAD/OPTIONS × role over raw HTTP/1.0 without a
//! Host header (what HAProxy's `option httpchk` sends), and the mutations' Patroni codes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use pgha_agent_core::dcs::{
    ClusterView, DynamicConfig, LeaderInfo, LeaderStatus, LeaseId, MemberRole, MemberState,
    PgState, SwitchoverRequest, SyncState,
};
use pgha_postgres::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::agent::Snapshot;

/// A DCS holding one view; writes of a switchover request land in it.
#[derive(Debug, Default)]
struct ViewDcs(Mutex<ClusterView>);

fn unsupported<T>(op: &'static str) -> pgha_agent_core::Result<T> {
    Err(pgha_agent_core::CoreError::Dcs {
        op,
        source: "not in this fake".into(),
    })
}

#[async_trait]
impl Dcs for ViewDcs {
    async fn grant_session(&self, _: std::time::Duration) -> pgha_agent_core::Result<LeaseId> {
        unsupported("grant")
    }
    fn set_request_timeout(&self, _: std::time::Duration) {}
    async fn keep_alive(&self, _: LeaseId) -> pgha_agent_core::Result<bool> {
        unsupported("keep_alive")
    }
    async fn view(&self) -> pgha_agent_core::Result<ClusterView> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn publish_member(&self, _: LeaseId, _: &MemberState) -> pgha_agent_core::Result<()> {
        unsupported("publish_member")
    }
    async fn try_acquire_leader(&self, _: LeaseId) -> pgha_agent_core::Result<bool> {
        unsupported("acquire")
    }
    async fn take_over_leader(&self, _: LeaseId, _: i64) -> pgha_agent_core::Result<bool> {
        unsupported("take_over")
    }
    async fn release_leader(&self, _: LeaseId) -> pgha_agent_core::Result<bool> {
        unsupported("release")
    }
    async fn try_initialize(&self, _: LeaseId) -> pgha_agent_core::Result<bool> {
        unsupported("initialize")
    }
    async fn finish_initialize(&self, _: Option<LeaseId>) -> pgha_agent_core::Result<bool> {
        unsupported("initialize")
    }
    async fn end_session(&self, _: LeaseId) -> pgha_agent_core::Result<()> {
        unsupported("end session")
    }
    async fn revoke_leader(&self, _: &LeaderInfo) -> pgha_agent_core::Result<bool> {
        unsupported("revoke")
    }
    async fn put_status(&self, _: LeaseId, _: &LeaderStatus) -> pgha_agent_core::Result<bool> {
        unsupported("put_status")
    }
    async fn put_config(&self, c: &DynamicConfig, _: i64) -> pgha_agent_core::Result<bool> {
        self.0.lock().unwrap().config = c.clone();
        Ok(true)
    }
    async fn put_switchover(&self, r: &SwitchoverRequest) -> pgha_agent_core::Result<()> {
        self.0.lock().unwrap().switchover = Some(r.clone());
        Ok(())
    }
    async fn clear_switchover(&self) -> pgha_agent_core::Result<()> {
        self.0.lock().unwrap().switchover = None;
        Ok(())
    }
    async fn put_sync(&self, _: LeaseId, _: &SyncState, _: i64) -> pgha_agent_core::Result<bool> {
        unsupported("put_sync")
    }
    async fn delete_sync(&self, _: LeaseId, _: i64) -> pgha_agent_core::Result<bool> {
        unsupported("delete_sync")
    }
    async fn allocate_timeline(&self, _: i64) -> pgha_agent_core::Result<i64> {
        unsupported("timeline")
    }
    async fn append_history(
        &self,
        e: &pgha_agent_core::dcs::HistoryEntry,
    ) -> pgha_agent_core::Result<()> {
        self.0.lock().unwrap().history.push(e.clone());
        Ok(())
    }
    async fn watch(&self) -> pgha_agent_core::Result<mpsc::Receiver<()>> {
        unsupported("watch")
    }
}

#[derive(Debug)]
struct NoPromises;
impl pgha_agent_core::ports::PromiseStore for NoPromises {
    fn save(&self, _: u64) -> pgha_agent_core::Result<()> {
        Ok(())
    }
    fn load(&self) -> Option<u64> {
        None
    }
}

fn config(sync: bool, token: bool) -> Arc<PghaConfig> {
    let mut s = format!(
        "[cluster]\nname = \"api\"\n[replication]\npassword = {{ env = \"PGHA_API_TEST_UNUSED\" }}\nmode = \"{}\"\n[dcs]\netcd = [\"http://127.0.0.1:1\"]\n",
        if sync { "sync" } else { "async" }
    );
    if token {
        s.push_str("[failover]\napi_token = { env = \"PGHA_API_TEST_UNUSED\" }\n");
    }
    for i in 1..=3 {
        s.push_str(&format!(
            "[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.{i}\"\ndata_dir = \"/t/node{i}\"\nagent_address = \"127.0.0.{i}:8008\"\n"
        ));
    }
    Arc::new(pgha_config::load_from_str(&s, "test").unwrap())
}

fn member(name: &str, role: MemberRole, running: bool, lsn: u64) -> MemberState {
    MemberState {
        name: name.into(),
        pg_address: format!("127.0.0.{}:5432", &name[4..]),
        api_address: Some(format!("127.0.0.{}:8008", &name[4..])),
        pg_state: if running {
            PgState::Running
        } else {
            PgState::Stopped
        },
        role,
        timeline: Some(3),
        lsn: Some(Lsn(lsn)),
        replay_lsn: Some(Lsn(lsn)),
        streaming: role == MemberRole::Replica && running,
        upstream: None,
        nofailover: false,
        updated_ms: 0,
        checkpoint_timeline: Some(3),
        suspects: None,
        noloadbalance: false,
        tags: BTreeMap::new(),
        pending_restart: Vec::new(),
        loop_wait_ms: None,
        failover_priority: None,
    }
}

fn view() -> ClusterView {
    let mut v = ClusterView {
        leader: Some(LeaderInfo {
            name: "node1".into(),
            lease: 7,
            revision: 1,
        }),
        status: Some(LeaderStatus {
            leader: "node1".into(),
            lsn: Lsn(5000),
            timeline: 3,
            updated_ms: 0,
            slots: Default::default(),
            failsafe: Some(
                ["node1", "node2", "node3"]
                    .iter()
                    .map(|n| (n.to_string(), format!("http://{n}:8008/patroni")))
                    .collect(),
            ),
        }),
        sync: Some(SyncState {
            leader: "node1".into(),
            standbys: vec!["node2".into()],
            quorum: None,
        }),
        ..ClusterView::default()
    };
    v.members.insert(
        "node1".into(),
        member("node1", MemberRole::Primary, true, 5000),
    );
    v.members.insert(
        "node2".into(),
        member("node2", MemberRole::Replica, true, 5000),
    );
    v.members.insert(
        "node3".into(),
        member("node3", MemberRole::Replica, true, 4000),
    );
    v
}

/// An API server for `node` with this view; its address.
async fn server(
    node: &str,
    sync: bool,
    token: bool,
) -> (SocketAddr, Arc<ViewDcs>, CancellationToken) {
    server_with(node, config(sync, token), token).await
}

async fn server_with(
    node: &str,
    cfg: Arc<PghaConfig>,
    token: bool,
) -> (SocketAddr, Arc<ViewDcs>, CancellationToken) {
    server_on_view(node, cfg, token, view()).await
}

async fn server_on_view(
    node: &str,
    cfg: Arc<PghaConfig>,
    token: bool,
    v: ClusterView,
) -> (SocketAddr, Arc<ViewDcs>, CancellationToken) {
    let dcs = Arc::new(ViewDcs(Mutex::new(v.clone())));
    let (shared, _events) = Shared::new(
        std::time::Duration::from_secs(10),
        Arc::new(NoPromises),
        Arc::new(pgha_agent_core::ports::SystemClock),
    );
    shared.publish(Snapshot {
        name: node.into(),
        is_leader: node == "node1",
        dcs_reachable: true,
        paused: false,
        role: "test".into(),
        reason: "test".into(),
        member: v.members.get(node).cloned(),
        view: Some(v),
        at: Some(tokio::time::Instant::now()),
        dcs_last_seen_ms: Some(1_800_000_000_000),
        ..Snapshot::default()
    });
    let state = Arc::new(ApiState {
        shared,
        dcs: dcs.clone(),
        config: cfg,
        token: token.then(|| Secret::new("s3cret".to_string())),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move { serve_on(listener, state, c, None).await });
    (addr, dcs, cancel)
}

/// One raw request; the status code and the body.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes an HTTP/1.0 connection after the answer")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

#[tokio::test]
async fn every_health_path_answers_every_method_over_http_1_0_without_host() {
    for (node, sync) in [
        ("node1", false),
        ("node2", true),
        ("node3", true),
        ("node2", false),
    ] {
        let (addr, _, cancel) = server(node, sync, false).await;
        let st = {
            let cfg = config(sync, false);
            let v = view();
            let snap = Snapshot {
                name: node.into(),
                is_leader: node == "node1",
                dcs_reachable: true,
                member: v.members.get(node).cloned(),
                view: Some(v),
                at: Some(tokio::time::Instant::now()),
                ..Snapshot::default()
            };
            health::Facts::from_snapshot(&snap, &cfg, tokio::time::Instant::now())
        };
        for path in health::PATHS {
            let want = if health::answer(path, &HashMap::new(), &st).unwrap().unwrap() {
                200
            } else {
                503
            };
            for method in ["GET", "HEAD", "OPTIONS"] {
                let (code, body) = raw(addr, &format!("{method} {path} HTTP/1.0\r\n\r\n")).await;
                assert_eq!(code, want, "{method} {path} on {node} (sync {sync})");
                if method != "GET" || matches!(*path, "/liveness" | "/readiness") {
                    assert!(body.is_empty(), "{method} {path}: body {body:?}");
                } else {
                    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(doc["patroni"]["scope"], "api", "{body}");
                    assert_eq!(doc["patroni"]["name"], node, "{body}");
                }
            }
            // HTTP/1.1 with a Host header too.
            let (code, _) = raw(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(code, want, "GET {path} HTTP/1.1 on {node}");
        }
        cancel.cancel();
    }
}

#[tokio::test]
async fn haproxy_default_check_routes_writes_to_the_leader_only() {
    // `option httpchk` alone: OPTIONS / HTTP/1.0, no Host header.
    let check = "OPTIONS / HTTP/1.0\r\n\r\n";
    let (a1, _, c1) = server("node1", false, false).await;
    let (a2, _, c2) = server("node2", false, false).await;
    assert_eq!(raw(a1, check).await.0, 200);
    assert_eq!(raw(a2, check).await.0, 503);
    let read = "OPTIONS /replica HTTP/1.0\r\n\r\n";
    assert_eq!(raw(a1, read).await.0, 503);
    assert_eq!(raw(a2, read).await.0, 200);
    c1.cancel();
    c2.cancel();
}

#[tokio::test]
async fn get_failsafe_shows_the_leaders_topology_and_502_while_it_runs_without() {
    let (addr, _, cancel) = server("node2", false, false).await;
    let (code, body) = raw(addr, "GET /failsafe HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["node3"], "http://node3:8008/patroni", "{d}");
    assert_eq!(d.as_object().map(|m| m.len()), Some(3), "{d}");
    cancel.cancel();
    let mut v = view();
    v.status.as_mut().unwrap().failsafe = None;
    let (addr, _, cancel) = server_on_view("node2", config(false, false), false, v).await;
    let (code, _) = raw(addr, "GET /failsafe HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 502);
    cancel.cancel();
}

#[tokio::test]
async fn patroni_and_cluster_documents_have_patroni_fields() {
    let (addr, _, cancel) = server("node2", true, false).await;
    let (code, body) = raw(addr, "GET /patroni HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 200);
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["state"], "running");
    assert_eq!(d["role"], "replica");
    assert_eq!(d["timeline"], 3);
    assert_eq!(d["replication_state"], "streaming");
    assert_eq!(d["sync_standby"], true);
    assert_eq!(d["xlog"]["received_location"], 5000);
    assert_eq!(d["patroni"]["version"], PATRONI_API_VERSION);
    let (_, body) = raw(addr, "GET /cluster HTTP/1.0\r\n\r\n").await;
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(c["scope"], "api");
    let m = c["members"].as_array().unwrap();
    assert_eq!(m[0]["name"], "node1");
    assert_eq!(m[0]["role"], "leader");
    assert_eq!(m[0]["state"], "running");
    assert_eq!(m[1]["role"], "sync_standby");
    assert_eq!(m[1]["state"], "streaming");
    assert_eq!(m[2]["role"], "replica");
    assert_eq!(m[2]["lag"], 1000);
    assert_eq!(m[2]["host"], "127.0.0.3");
    assert_eq!(m[2]["port"], 5432);
    assert_eq!(m[2]["api_url"], "http://127.0.0.3:8008/patroni");
    // The router reads the raw view.
    assert!(c["view"]["members"]["node3"]["pg_address"].is_string());
    let (_, metrics) = raw(addr, "GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(
        metrics.contains("patroni_replica{scope=\"api\",name=\"node2\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("patroni_primary{scope=\"api\",name=\"node2\"} 0"));
    assert!(metrics.contains("patroni_sync_standby{scope=\"api\",name=\"node2\"} 1"));
    assert!(metrics.contains("patroni_postgres_timeline{scope=\"api\",name=\"node2\"} 3"));
    assert!(metrics.contains("pgha_agent_is_leader{node=\"node2\"} 0"));
    cancel.cancel();
}

fn post(path: &str, body: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST {path} HTTP/1.0\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn switchover_requests_get_patroni_codes() {
    let (addr, dcs, cancel) = server("node2", false, true).await;
    let tok = Some("s3cret");
    let body = r#"{"leader":"node1","candidate":"node2"}"#;
    assert_eq!(raw(addr, &post("/switchover", body, None)).await.0, 401);
    assert_eq!(
        raw(addr, &post("/switchover", body, Some("wrong"))).await.0,
        401
    );
    let (code, msg) = raw(addr, &post("/switchover", r#"{"candidate":"node2"}"#, tok)).await;
    assert_eq!(
        (code, msg.as_str()),
        (
            400,
            "Switchover could be performed only from a specific leader"
        )
    );
    let (code, msg) = raw(addr, &post("/failover", r#"{"leader":"node1"}"#, tok)).await;
    assert_eq!(
        (code, msg.as_str()),
        (
            400,
            "Failover could be performed only to a specific candidate"
        )
    );
    let (code, msg) = raw(
        addr,
        &post(
            "/switchover",
            r#"{"leader":"node3","candidate":"node2"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!((code, msg.as_str()), (412, "leader name does not match"));
    let (code, msg) = raw(
        addr,
        &post(
            "/switchover",
            r#"{"leader":"node1","candidate":"node1"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(
        (code, msg.as_str()),
        (400, "Switchover target and source are the same")
    );
    let (code, msg) = raw(
        addr,
        &post(
            "/switchover",
            r#"{"leader":"node1","candidate":"node9"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(code, 412, "{msg}");
    assert!(msg.contains("`node9` is not a node"), "{msg}");
    // A node that must not lead is refused with the reason, also for a manual failover.
    let never = |p: Option<u32>| {
        if let Some(m) = dcs.0.lock().unwrap().members.get_mut("node3") {
            m.failover_priority = p;
        }
    };
    never(Some(0));
    let (code, msg) = raw(addr, &post("/failover", r#"{"candidate":"node3"}"#, tok)).await;
    assert_eq!(code, 412, "{msg}");
    assert!(
        msg.contains("node3 has failover_priority 0: it never leads"),
        "{msg}"
    );
    assert!(dcs.0.lock().unwrap().switchover.is_none());
    never(None);
    let (code, msg) = raw(
        addr,
        &post(
            "/switchover",
            r#"{"leader":"node1","candidate":"node2","scheduled_at":"2020-01-01T00:00:00Z"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(
        (code, msg.as_str()),
        (422, "Cannot schedule switchover in the past")
    );
    assert!(
        dcs.0.lock().unwrap().switchover.is_none(),
        "nothing recorded so far"
    );

    // Scheduled: recorded with its time, 202; DELETE removes it, then 404.
    let (code, msg) = raw(
        addr,
        &post(
            "/switchover",
            r#"{"leader":"node1","scheduled_at":"2099-01-01T00:00:00+00:00"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!((code, msg.as_str()), (202, "Switchover scheduled"));
    let req = dcs.0.lock().unwrap().switchover.clone().unwrap();
    assert_eq!(req.to, "node2", "no candidate: the most advanced replica");
    assert_eq!(req.at_ms, Some(4_070_908_800_000));
    let del = "DELETE /switchover HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n";
    assert_eq!(
        raw(addr, del).await,
        (200, "scheduled switchover deleted".into())
    );
    assert_eq!(
        raw(addr, del).await,
        (404, "no switchover is scheduled".into())
    );
    cancel.cancel();
}

#[tokio::test]
async fn restricted_reads_answer_checks_without_the_document() {
    let mut cfg = (*config(false, true)).clone();
    cfg.failover.api_restrict_reads = true;
    let (addr, _, cancel) = server_with("node1", Arc::new(cfg), true).await;
    assert_eq!(
        raw(addr, "GET / HTTP/1.0\r\n\r\n").await,
        (200, String::new())
    );
    assert_eq!(raw(addr, "GET /cluster HTTP/1.0\r\n\r\n").await.0, 401);
    let (code, body) = raw(
        addr,
        "GET /primary HTTP/1.0\r\nAuthorization: Bearer s3cret\r\n\r\n",
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.contains("\"patroni\""), "{body}");
    cancel.cancel();
}

fn request(method: &str, path: &str, body: &str, token: Option<&str>) -> String {
    post(path, body, token).replacen("POST", method, 1)
}

#[tokio::test]
async fn config_is_read_patched_and_replaced_with_patroni_bodies() {
    let (addr, dcs, cancel) = server("node2", false, true).await;
    let tok = Some("s3cret");
    // Nothing in the DCS yet: pgha.toml's seed, and the pause switch.
    let (code, body) = raw(addr, "GET /config HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["pause"], false);
    assert!(doc["maximum_lag_on_failover"].is_u64(), "{doc}");

    let patch =
        r#"{"postgresql":{"parameters":{"work_mem":"8MB","max_connections":200}},"pause":true}"#;
    assert_eq!(
        raw(addr, &request("PATCH", "/config", patch, None)).await.0,
        401
    );
    let (code, body) = raw(addr, &request("PATCH", "/config", patch, tok)).await;
    assert_eq!(code, 200, "{body}");
    let stored = dcs.0.lock().unwrap().config.clone();
    assert!(stored.paused);
    assert_eq!(
        stored.settings.as_ref().unwrap()["postgresql"]["parameters"],
        serde_json::json!({"work_mem": "8MB", "max_connections": "200"})
    );
    // null removes a key; a bad value is refused with its path, nothing written.
    let (code, _) = raw(
        addr,
        &request(
            "PATCH",
            "/config",
            r#"{"postgresql":{"parameters":{"work_mem":null}}}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = raw(
        addr,
        &request(
            "PATCH",
            "/config",
            r#"{"standby_cluster":{},"postgresql":{"parameters":{"port":1}}}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("standby_cluster: cannot be changed")
            && body.contains("postgresql.parameters.port"),
        "{body}"
    );
    assert_eq!(
        dcs.0.lock().unwrap().config.settings.as_ref().unwrap()["postgresql"]["parameters"],
        serde_json::json!({"max_connections": "200"})
    );
    assert_eq!(
        raw(addr, &request("PATCH", "/config", "{not json", tok))
            .await
            .0,
        400
    );
    // PUT replaces the whole document (pause stays as it was when not given).
    let (code, body) = raw(
        addr,
        &request(
            "PUT",
            "/config",
            r#"{"maximum_lag_on_failover":"2MB"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let c = dcs.0.lock().unwrap().config.clone();
    assert_eq!(
        c.settings.unwrap(),
        serde_json::json!({"maximum_lag_on_failover": 2 << 20})
    );
    assert!(c.paused);
    // POST /reload is scheduled for the loop (Patroni's 202).
    assert_eq!(raw(addr, &post("/reload", "", None)).await.0, 401);
    let (code, body) = raw(addr, &post("/reload", "", tok)).await;
    assert_eq!((code, body.trim()), (202, "reload scheduled"));
    cancel.cancel();
}

#[tokio::test]
async fn restart_and_reinitialize_take_patroni_bodies() {
    let (addr, _dcs, cancel) = server("node1", false, true).await;
    let tok = Some("s3cret");
    assert_eq!(raw(addr, &post("/restart", "", None)).await.0, 401);
    let (code, msg) = raw(addr, &post("/restart", r#"{"role":"replica"}"#, tok)).await;
    assert_eq!(
        (code, msg.as_str()),
        (503, "restart conditions are not satisfied")
    );
    let (code, msg) = raw(addr, &post("/restart", r#"{"restart_pending":true}"#, tok)).await;
    assert_eq!(
        (code, msg.as_str()),
        (503, "restart conditions are not satisfied")
    );
    let (code, _) = raw(addr, &post("/restart", r#"{"role":"leader"}"#, tok)).await;
    assert_eq!(code, 400);
    let (code, msg) = raw(
        addr,
        &post(
            "/restart",
            r#"{"schedule":"2999-01-01T00:00:00+00:00"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!((code, msg.as_str()), (202, "Restart scheduled"));
    let (code, msg) = raw(
        addr,
        &post(
            "/restart",
            r#"{"schedule":"2000-01-01T00:00:00+00:00"}"#,
            tok,
        ),
    )
    .await;
    assert_eq!(
        (code, msg.as_str()),
        (422, "Cannot schedule restart in the past")
    );
    // No loop runs here: the snapshot never shows the scheduled restart, so nothing is
    // scheduled as far as the API can tell (Patroni's 404).
    let (code, msg) = raw(addr, &request("DELETE", "/restart", "", tok)).await;
    assert_eq!((code, msg.as_str()), (404, "no restarts are scheduled"));
    let (code, msg) = raw(addr, &post("/reinitialize", "", tok)).await;
    assert_eq!(
        (code, msg.as_str()),
        (503, "I am the leader, can not reinitialize")
    );
    cancel.cancel();
}
