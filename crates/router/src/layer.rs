//! Read-your-writes across HTTP requests: a tower [`Layer`] (axum middleware) that carries the
//! write token from the response of a request that wrote to the next requests of the same
//! client, in a cookie (default) or a header. Feature `tower`.
//!
//! ```no_run
//! # async fn demo(router: std::sync::Arc<pgha_router::Router>) {
//! use axum::routing::{get, post};
//! use axum::Extension;
//! use pgha_router::layer::{Session, ReadYourWritesLayer};
//!
//! async fn add(Extension(rw): Extension<Session>) -> &'static str {
//!     let _ = sqlx::query("INSERT INTO notes (text) VALUES ('hi')")
//!         .execute(rw.router().writer())
//!         .await;
//!     "ok" // a 2xx answer to a POST: the layer sets the token cookie on it
//! }
//! async fn list(Extension(rw): Extension<Session>) -> String {
//!     // On a replica that has replayed this client's last write, else waits or goes to the
//!     // primary (the router's read_your_writes policy).
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
//!         .fetch_one(&rw.reader())
//!         .await
//!         .unwrap_or(-1);
//!     n.to_string()
//! }
//! let app: axum::Router = axum::Router::new()
//!     .route("/notes", post(add).get(list))
//!     .layer(ReadYourWritesLayer::new(router));
//! # let _ = app; }
//! ```
//!
//! A request is taken as a write when its method is not GET, HEAD, OPTIONS or TRACE (switch
//! that off with [`ReadYourWritesLayer::writes_by_method`]) or when its handler calls
//! [`Session::wrote`]. After a successful (2xx) answer to a write, the layer asks the
//! primary for a token ([`Router::write_token`], one short query) and sets it, the later of it
//! and the one the request carried. A token the client sends that does not parse is ignored.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, COOKIE, SET_COOKIE};
use http::{HeaderMap, Method, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::{ReplayedReader, Router, WriteToken};

/// Default cookie name.
pub const COOKIE_NAME: &str = "pgha_write_token";

/// Where the token travels.
#[derive(Debug, Clone)]
pub enum Carrier {
    /// A cookie (`Path=/; HttpOnly; SameSite=Lax; Max-Age=...`): browsers send it back alone.
    Cookie { name: String, max_age: Duration },
    /// A response header the client copies into its next requests (API clients).
    Header(HeaderName),
}

impl Carrier {
    fn read(&self, headers: &HeaderMap) -> Option<WriteToken> {
        match self {
            Carrier::Header(h) => headers.get(h)?.to_str().ok()?.trim().parse().ok(),
            Carrier::Cookie { name, .. } => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .filter(|(k, _)| k == name)
                .filter_map(|(_, v)| v.trim().parse::<WriteToken>().ok())
                .max(),
        }
    }

    fn write(&self, headers: &mut HeaderMap, token: WriteToken) {
        let (name, value) = match self {
            Carrier::Header(h) => (h.clone(), token.to_string()),
            Carrier::Cookie { name, max_age } => (
                SET_COOKIE,
                format!(
                    "{name}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
                    max_age.as_secs().max(1)
                ),
            ),
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.append(name, v);
            }
            Err(e) => tracing::warn!("write token not set: {e}"),
        }
    }
}

/// What a handler gets (axum: `Extension<Session>`): the router, the token the client
/// sent, and a way to say it wrote.
#[derive(Debug, Clone)]
pub struct Session {
    router: Arc<Router>,
    token: Option<WriteToken>,
    wrote: Arc<AtomicBool>,
}

impl Session {
    /// The router, for writes (`rw.router().writer()`) and everything else.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The token this request carried (none when it carried none or an unparsable one).
    pub fn token(&self) -> Option<WriteToken> {
        self.token
    }

    /// Reads that see this client's earlier writes: `router.reader_for(token)`.
    pub fn reader(&self) -> ReplayedReader {
        self.router.reader_for(self.token)
    }

    /// Marks the request as a write (for methods the layer takes as reads, e.g. a GET that
    /// writes): its answer gets a fresh token.
    pub fn wrote(&self) {
        self.wrote.store(true, Ordering::Relaxed);
    }
}

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub struct ReadYourWritesLayer {
    router: Arc<Router>,
    carrier: Carrier,
    by_method: bool,
}

impl ReadYourWritesLayer {
    /// A cookie named [`COOKIE_NAME`] living 5 minutes (past that any healthy replica has
    /// replayed the write).
    pub fn new(router: Arc<Router>) -> Self {
        ReadYourWritesLayer {
            router,
            carrier: Carrier::Cookie {
                name: COOKIE_NAME.into(),
                max_age: Duration::from_secs(300),
            },
            by_method: true,
        }
    }

    /// Carry the token in `carrier` instead.
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }

    /// Whether POST, PUT, PATCH, DELETE (any method but GET, HEAD, OPTIONS, TRACE) count as
    /// writes by themselves (default true); when false only [`Session::wrote`] does.
    pub fn writes_by_method(mut self, yes: bool) -> Self {
        self.by_method = yes;
        self
    }
}

impl<S> Layer<S> for ReadYourWritesLayer {
    type Service = ReadYourWritesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadYourWritesService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ReadYourWritesLayer`] wraps around the app.
#[derive(Debug, Clone)]
pub struct ReadYourWritesService<S> {
    inner: S,
    layer: ReadYourWritesLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> Service<Request<B>> for ReadYourWritesService<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let layer = self.layer.clone();
        let token = layer.carrier.read(req.headers());
        let is_read = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let wrote = Arc::new(AtomicBool::new(layer.by_method && !is_read));
        req.extensions_mut().insert(Session {
            router: layer.router.clone(),
            token,
            wrote: wrote.clone(),
        });
        // The clone that was made ready goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            if wrote.load(Ordering::Relaxed) && resp.status().is_success() {
                match layer.router.write_token().await {
                    Ok(t) => {
                        let t = token.map_or(t, |old| old.max(t));
                        layer.carrier.write(resp.headers_mut(), t);
                    }
                    // The write is done; without a token the next read may be stale, not lost.
                    Err(e) => tracing::warn!("no write token for the answer: {e}"),
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_header_carriers_read_what_they_write() {
        let t = |s: &str| s.parse::<WriteToken>().ok();
        let cookie = Carrier::Cookie {
            name: COOKIE_NAME.into(),
            max_age: Duration::from_secs(60),
        };
        let mut out = HeaderMap::new();
        cookie.write(
            &mut out,
            t("0/3000148").unwrap_or(WriteToken(pgha_postgres::Lsn(1))),
        );
        let set = out
            .get(SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(
            set,
            "pgha_write_token=0/3000148; Path=/; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        let mut req = HeaderMap::new();
        req.insert(
            COOKIE,
            HeaderValue::from_static("a=b; pgha_write_token=0/3000148; pgha_write_token=0/2"),
        );
        assert_eq!(cookie.read(&req), t("0/3000148"));
        req.insert(COOKIE, HeaderValue::from_static("pgha_write_token=garbage"));
        assert_eq!(cookie.read(&req), None);

        let header = Carrier::Header(HeaderName::from_static("x-write-token"));
        let mut h = HeaderMap::new();
        header.write(
            &mut h,
            t("1/A").unwrap_or(WriteToken(pgha_postgres::Lsn(1))),
        );
        assert_eq!(header.read(&h), t("1/A"));
    }
}
