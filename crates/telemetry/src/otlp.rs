//! OTLP/HTTP export with the JSON encoding: spans (a `tracing` layer batching finished spans
//! to `/v1/traces` from a background thread) and metric snapshots (`/v1/metrics`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tracing::span;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Where OTLP data goes: `http://host:port[/prefix]` (https is not supported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// OTLP endpoints are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            ),
            None => (authority, 4318),
        };
        if host.is_empty() {
            return Err(format!("`{url}`: no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
        })
    }

    /// POSTs a JSON body to `prefix + path`; the HTTP status.
    pub fn post(&self, path: &str, body: &Value) -> std::io::Result<u16> {
        let body = body.to_string();
        let mut s = TcpStream::connect((self.host.as_str(), self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "POST {}{path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.prefix,
            self.host,
            self.port,
            body.len()
        )?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        let line = String::from_utf8_lossy(&head[..n]);
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

fn attributes(pairs: &[(String, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
        .collect()
}

fn resource(service: &str) -> Value {
    json!({"attributes": [{"key": "service.name", "value": {"stringValue": service}}]})
}

/// One metric sample for [`export_metrics`].
#[derive(Debug, Clone)]
pub struct MetricPoint {
    pub name: String,
    pub description: String,
    /// Counter (cumulative, monotonic sum) rather than gauge.
    pub monotonic: bool,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Sends one snapshot of metrics to `/v1/metrics` (blocking; call off the async runtime).
pub fn export_metrics(
    ep: &Endpoint,
    service: &str,
    points: &[MetricPoint],
) -> std::io::Result<u16> {
    let now = nanos(SystemTime::now());
    let mut by_name: Vec<(&MetricPoint, Vec<Value>)> = Vec::new();
    for p in points.iter().filter(|p| p.value.is_finite()) {
        let dp =
            json!({"asDouble": p.value, "timeUnixNano": now, "attributes": attributes(&p.labels)});
        match by_name.iter_mut().find(|(q, _)| q.name == p.name) {
            Some((_, dps)) => dps.push(dp),
            None => by_name.push((p, vec![dp])),
        }
    }
    let metrics: Vec<Value> = by_name
        .into_iter()
        .map(|(p, dps)| {
            if p.monotonic {
                json!({"name": p.name, "description": p.description,
                       "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": dps}})
            } else {
                json!({"name": p.name, "description": p.description, "gauge": {"dataPoints": dps}})
            }
        })
        .collect();
    let body = json!({"resourceMetrics": [{"resource": resource(service),
        "scopeMetrics": [{"scope": {"name": "pgha"}, "metrics": metrics}]}]});
    ep.post("/v1/metrics", &body)
}

/// A finished span.
#[derive(Debug, Clone)]
struct SpanRecord {
    trace_id: u128,
    span_id: u64,
    parent: Option<u64>,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(String, String)>,
}

/// Per-span state kept in the registry's extensions.
#[derive(Debug)]
struct Timing {
    trace_id: u128,
    span_id: u64,
    parent: Option<u64>,
    start: SystemTime,
    attributes: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

enum Msg {
    Span(SpanRecord),
    Flush(mpsc::Sender<()>),
}

/// The tracing layer that exports finished spans.
#[derive(Debug)]
pub struct SpanLayer {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Flushes pending spans when dropped (waits up to 3 s).
#[derive(Debug)]
pub struct OtlpGuard {
    tx: mpsc::Sender<Msg>,
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(3));
        }
    }
}

impl SpanLayer {
    /// The layer and its flush guard; a thread exports batches every second.
    pub fn new(ep: Endpoint, service: String) -> (Self, OtlpGuard) {
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(ep, service, rx))
            .map_err(|e| eprintln!("cannot start the OTLP export thread: {e}"))
            .ok();
        (SpanLayer { tx: tx.clone() }, OtlpGuard { tx })
    }
}

fn export_loop(ep: Endpoint, service: String, rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut last_sent = std::time::Instant::now();
    loop {
        let msg = rx.recv_timeout(Duration::from_secs(1));
        let mut flushed = None;
        match msg {
            Ok(Msg::Span(s)) => {
                batch.push(s);
                if batch.len() < 512 && last_sent.elapsed() < Duration::from_secs(1) {
                    continue;
                }
            }
            Ok(Msg::Flush(done)) => flushed = Some(done),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        last_sent = std::time::Instant::now();
        if !batch.is_empty() {
            let spans: Vec<Value> = batch
                .drain(..)
                .map(|s| {
                    json!({
                        "traceId": format!("{:032x}", s.trace_id),
                        "spanId": format!("{:016x}", s.span_id),
                        "parentSpanId": s.parent.map(|p| format!("{p:016x}")).unwrap_or_default(),
                        "name": s.name,
                        "kind": 1,
                        "startTimeUnixNano": nanos(s.start),
                        "endTimeUnixNano": nanos(s.end),
                        "attributes": attributes(&s.attributes),
                    })
                })
                .collect();
            let body = json!({"resourceSpans": [{"resource": resource(&service),
                "scopeSpans": [{"scope": {"name": "pgha"}, "spans": spans}]}]});
            // Export failures must not disturb the program; they are dropped.
            let _ = ep.post("/v1/traces", &body);
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Timing>()
                .map(|t| (t.trace_id, t.span_id))
        });
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let timing = Timing {
            trace_id: parent.map(|p| p.0).unwrap_or_else(rand::random),
            span_id: rand::random(),
            parent: parent.map(|p| p.1),
            start: SystemTime::now(),
            attributes: fields.0,
        };
        span.extensions_mut().insert(timing);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(t) = span.extensions_mut().get_mut::<Timing>() {
                let mut fields = Fields::default();
                values.record(&mut fields);
                t.attributes.extend(fields.0);
            }
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let name = span.name();
        let timing = span.extensions_mut().remove::<Timing>();
        if let Some(t) = timing {
            let _ = self.tx.send(Msg::Span(SpanRecord {
                trace_id: t.trace_id,
                span_id: t.span_id,
                parent: t.parent,
                name,
                start: t.start,
                end: SystemTime::now(),
                attributes: t.attributes,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4318").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 4318,
                prefix: String::new()
            }
        );
        assert_eq!(
            Endpoint::parse("http://collector/otlp/").unwrap().prefix,
            "/otlp"
        );
        assert_eq!(
            Endpoint::parse("http://collector/otlp/").unwrap().port,
            4318
        );
        assert!(Endpoint::parse("https://x:4318").is_err());
    }
}
