//! The admin port: `/healthz`, `/readyz`, `/metrics`.
//!
//! design.md, "Operations". A separate listener (default `0.0.0.0:9901`), so
//! kubelet probes and Prometheus never share the proxy port and never need the
//! inbound token.
//!
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 when a snapshot is loaded and every configured route
//!   has a usable credential; 503 with the reasons (locations, never values)
//!   otherwise, and from the moment shutdown begins. Either way the body
//!   lists what is stale (the config or credentials serving their last good
//!   value because the files on disk cannot be applied).
//! - `GET /metrics`: Prometheus text; names are listed in `crate::metrics`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::reload::Shared;

/// Serves the admin port until `stop` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_owned());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => readyz(shared),
        "/metrics" => {
            let mut live = shared.snapshot().live_metrics();
            live.config_stale_seconds = shared
                .config_stale()
                .map_or(0.0, |c| c.since.elapsed().as_secs_f64());
            let mut resp = text(StatusCode::OK, shared.reg.metrics.render(&live));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".to_owned(),
        ),
    }
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        );
    }
    let snap = shared.snapshot();
    let mut problems = snap.readiness_problems().peekable();
    let (status, mut body) = if problems.peek().is_none() {
        (StatusCode::OK, String::from("ready\n"))
    } else {
        let mut body = String::from("not ready: credentials unavailable\n");
        for p in problems {
            let _ = writeln!(body, "  {p}");
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    };
    // Staleness never changes the status (the values served still work),
    // but an operator reading the probe sees it.
    let config = shared.config_stale();
    if config.is_some() || !snap.stale.is_empty() {
        body.push_str("stale: serving last good values, the files on disk cannot be applied\n");
    }
    if let Some(c) = config {
        let _ = writeln!(
            body,
            "  config ({}s): {}",
            c.since.elapsed().as_secs(),
            c.reason
        );
    }
    for st in &snap.stale {
        let _ = writeln!(body, "  {st} ({}s)", st.since.elapsed().as_secs());
    }
    text(status, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
