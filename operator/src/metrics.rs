//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::error::Error;

/// Metric name prefix.
pub const PREFIX: &str = "handover_operator";

/// Labels of per-error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`Error::metric_label`].
    pub error: String,
}

/// Labels of per-pool gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool namespace.
    pub namespace: String,
    /// Pool name.
    pub pool: String,
}

/// Labels of per-watch counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watched resource, e.g. `pods`.
    pub resource: String,
}

/// The operator's metrics and health flags.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Members per pool.
    pub members: Family<PoolLabels, Gauge>,
    /// Ready members per pool.
    pub ready_members: Family<PoolLabels, Gauge>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Watch errors (API server unreachable, expired resourceVersion, ...), by watched resource.
    pub watch_errors: Family<WatchLabels, Counter>,
    /// Set once the operator reached the API server.
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let members = Family::<PoolLabels, Gauge>::default();
        let ready_members = Family::<PoolLabels, Gauge>::default();
        let leader = Gauge::default();
        let watch_errors = Family::<WatchLabels, Counter>::default();
        registry.register("reconciles", "ServerPool reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "ServerPool reconciles that failed, by error", errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of ServerPool reconciles", duration.clone());
        registry.register("pool_members", "Members of each pool", members.clone());
        registry.register("pool_ready_members", "Ready members of each pool", ready_members.clone());
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        registry.register(
            "watch_errors",
            "Watch errors, by watched resource (each watch retries on its own)",
            watch_errors.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            members,
            ready_members,
            leader,
            watch_errors,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, error: &Error) {
        self.errors.get_or_create(&ErrorLabels { error: error.metric_label().to_owned() }).inc();
    }

    /// Counts a watch error.
    pub fn watch_error(&self, resource: &str) {
        self.watch_errors.get_or_create(&WatchLabels { resource: resource.to_owned() }).inc();
    }

    /// Records a reconcile's duration.
    pub fn observe(&self, took: Duration) {
        self.duration.observe(took.as_secs_f64());
    }

    /// Sets a pool's member gauges.
    pub fn set_members(&self, namespace: &str, pool: &str, total: i64, ready: i64) {
        let labels = PoolLabels { namespace: namespace.to_owned(), pool: pool.to_owned() };
        self.members.get_or_create(&labels).set(total);
        self.ready_members.get_or_create(&labels).set(ready);
    }

    /// Forgets a deleted pool.
    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        let labels = PoolLabels { namespace: namespace.to_owned(), pool: pool.to_owned() };
        self.members.remove(&labels);
        self.ready_members.remove(&labels);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

/// Answers one admin request.
pub fn handle(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match path {
        "/metrics" => {
            respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
        }
        "/healthz" => respond(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => respond(StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" => {
            respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready: the API server was not reached yet\n".into())
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Serves on an already bound listener.
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> Result<(), Error> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = handle(&metrics, req.method(), req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn metrics_text_has_the_prefixed_families() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.error(&Error::StoreNotReady("pods"));
        m.set_members("shop", "cart", 3, 2);
        m.observe(Duration::from_millis(20));
        let text = m.encode();
        assert!(text.contains("handover_operator_reconciles_total 1"), "{text}");
        assert!(text.contains(r#"handover_operator_reconcile_errors_total{error="store_not_ready"} 1"#), "{text}");
        assert!(text.contains(r#"handover_operator_pool_members{namespace="shop",pool="cart"} 3"#), "{text}");
        assert!(text.contains(r#"handover_operator_pool_ready_members{namespace="shop",pool="cart"} 2"#), "{text}");
        assert!(text.contains("handover_operator_reconcile_duration_seconds_count 1"), "{text}");
        m.forget_pool("shop", "cart");
        assert!(!m.encode().contains(r#"pool="cart""#));
    }

    #[test]
    fn readyz_follows_the_ready_flag() {
        let m = Metrics::new();
        assert_eq!(handle(&m, &Method::GET, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(handle(&m, &Method::GET, "/readyz").status(), StatusCode::OK);
        assert_eq!(handle(&m, &Method::GET, "/healthz").status(), StatusCode::OK);
        assert_eq!(handle(&m, &Method::GET, "/nope").status(), StatusCode::NOT_FOUND);
        assert_eq!(handle(&m, &Method::POST, "/metrics").status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn serves_metrics_over_real_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new());
        let server = tokio::spawn(serve_on(listener, metrics));
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut body = String::new();
        conn.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("handover_operator_leader"), "{body}");
        server.abort();
    }
}
