//! The request path, as design.md's "Request path" lists it.
//!
//! [`handle`] is what the server calls for every request. It loads the
//! snapshot once, runs [`handle_inner`] (whose steps read top to bottom like
//! the design), and turns any [`ProxyError`] into sidekey's error envelope. It
//! is the only place that builds a response; the access log and metrics are
//! written by [`body::Done`] when the response body ends, so a stream is
//! measured to its last byte.
//!
//! Steps, each in its own file: [`inbound`] (refuse forward-proxy requests,
//! check the inbound token), [`origin`] (refuse web pages and rebound host
//! names), routing ([`crate::routes`]), credential choice
//! ([`crate::credentials`]), [`strip`], [`allowlist`], then [`attempt`] (the
//! loop over attempts: inject in the provider's form, [`forward`], classify,
//! fall back), and [`body`] for the way back. A WebSocket handshake takes
//! the same steps; [`websocket`] holds what differs and the tunnel after
//! `101`.
//!
//! Every request runs in one `request` span (`id`, `route`): the failover,
//! token and access-log events of a request carry the same id.

pub(crate) mod allowlist;
pub(crate) mod attempt;
pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod forward;
pub(crate) mod inbound;
pub(crate) mod origin;
pub(crate) mod strip;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, request};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::replay::Budget;
use crate::credentials::{Chosen, Fingerprint, KeySet};
use crate::error::ProxyError;
use crate::metrics::{Limit, RouteMetrics};
use crate::providers::aws::SigV4;
use crate::providers::azure;
use crate::reload::{Shared, Snapshot};
use crate::routes::{self, Route, Target, Targets};
use crate::upstream::LaneGuard;
use body::{Done, Outcome, ResponseBody};

/// What the steps learn about a request, for the access log and metrics.
#[derive(Debug, Default)]
struct RequestCtx {
    metrics: Option<Arc<RouteMetrics>>,
    fingerprint: Option<Fingerprint>,
    attempts: u8,
}

/// Numbers requests for their span (`id`), so a failover or token warning
/// can be tied to its access-log line.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(1);

/// Serves one request. Never fails: errors become envelope responses.
/// `conn` is the client connection: the WebSockets a handshake may open,
/// whether its listener is a loopback address (the host check,
/// [`origin`]), and its place in `limits.max_connections`, which a
/// WebSocket takes over.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<conn::Conn>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let snap = shared.snapshot();
    let (mut parts, body) = req.into_parts();
    // A WebSocket handshake: the client's side of the upgrade is taken now
    // (the steps consume the rest of the request).
    let mut upgrade = inbound::Upgrade::of(&parts.headers);
    let mut client_upgrade = None;
    if upgrade == inbound::Upgrade::WebSocket(false) {
        client_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        upgrade = inbound::Upgrade::WebSocket(client_upgrade.is_some());
    }
    let ws = matches!(upgrade, inbound::Upgrade::WebSocket(_));
    let method = parts.method.clone();
    let mut cx = RequestCtx::default();
    // Field values are only evaluated when the span is enabled: with INFO
    // off, this is one check of a cached interest.
    let span = tracing::info_span!(
        "request",
        id = REQUEST_IDS.fetch_add(1, Ordering::Relaxed),
        route = tracing::field::Empty
    );

    // The steps run in the request span, entered on each poll. Not with
    // `.instrument()`: that moved the steps' future (2.5 KB) twice per
    // request, while a future pinned where it is made is built in place.
    let result = {
        let mut steps = std::pin::pin!(handle_inner(
            &snap,
            &shared.reg.replay,
            &mut parts,
            body,
            &mut cx,
            upgrade,
            &conn,
        ));
        std::future::poll_fn(|task| {
            let _entered = span.enter();
            steps.as_mut().poll(task)
        })
        .await
    };
    // Only a handshake needs them twice (its socket counts bytes).
    let route_metrics = if ws { cx.metrics.clone() } else { None };

    let done = |status, error, lane| Done {
        metrics: cx
            .metrics
            .take()
            .unwrap_or_else(|| shared.reg.metrics.unrouted().clone()),
        start,
        method,
        target: parts.uri.into_parts().path_and_query,
        status,
        fingerprint: cx.fingerprint,
        attempts: cx.attempts,
        error,
        outcome: Outcome::ClientClosed,
        lane,
        span: span.clone(),
    };
    let resp = match result {
        Ok(answer) if answer.response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            match client_upgrade.zip(route_metrics.clone()) {
                Some((client, route)) => {
                    let tunnel = websocket::Tunnel {
                        route,
                        metrics: shared.reg.metrics.clone(),
                        idle: snap.config.limits.websocket_idle,
                        stop: conn.sockets.watch(),
                        span: span.clone(),
                        place: conn.take_place(),
                    };
                    switched(websocket::switch(answer, client, tunnel), done)
                }
                // Not asked for: nothing to switch to.
                None => local(
                    ProxyError::Internal("the upstream switched protocols unasked".into()),
                    done,
                ),
            }
        }
        Ok(answer) => streamed(answer, snap.config.limits.request_timeout, done),
        Err(err) => {
            if matches!(err, ProxyError::BodyTimeout { .. }) {
                shared.reg.metrics.limited(Limit::BodyReadTimeout);
            }
            local(err, done)
        }
    };
    if ws {
        route_metrics
            .as_deref()
            .unwrap_or(shared.reg.metrics.unrouted())
            .websocket(resp.status());
    }
    Ok(resp)
}

/// The steps. The request head is lent, not moved, so the future stays
/// small (an async fn keeps an argument it owns twice in its state); the
/// method and header map are taken out of it for the upstream request, and
/// the URI stays for the access log.
/// How a response ends: its status, sidekey's error message if any, and
/// the upstream lane it holds, turned into the access-log and metrics record.
trait Finish: FnOnce(http::StatusCode, Option<String>, Option<LaneGuard>) -> Done {}
impl<F: FnOnce(http::StatusCode, Option<String>, Option<LaneGuard>) -> Done> Finish for F {}

/// The upstream's answer, streamed back as it comes.
fn streamed(
    answer: attempt::Answer,
    timeout: Duration,
    done: impl Finish,
) -> Response<ResponseBody> {
    let (mut head, body) = answer.response.into_parts();
    strip::hop_by_hop(&mut head.headers);
    head.version = Version::HTTP_11;
    let body = ResponseBody::upstream(
        answer.prefix,
        body,
        timeout,
        done(head.status, None, Some(answer.lane)),
    );
    Response::from_parts(head, body)
}

/// The `101` that hands the client's connection to the tunnel.
#[cold]
#[inline(never)]
fn switched(headers: http::HeaderMap, done: impl Finish) -> Response<ResponseBody> {
    let status = http::StatusCode::SWITCHING_PROTOCOLS;
    let mut resp = Response::new(ResponseBody::local(
        bytes::Bytes::new(),
        done(status, None, None),
    ));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// sidekey's own error, in the envelope (out of line: the request path's
/// code stays dense).
#[inline(never)]
fn local(err: ProxyError, done: impl Finish) -> Response<ResponseBody> {
    let message = err.to_string();
    let resp = err.into_response::<bytes::Bytes>();
    let status = resp.status();
    resp.map(|bytes| ResponseBody::local(bytes, done(status, Some(message), None)))
}

async fn handle_inner(
    snap: &Snapshot,
    replay_budget: &Arc<Budget>,
    parts: &mut request::Parts,
    body: Incoming,
    cx: &mut RequestCtx,
    upgrade: inbound::Upgrade,
    conn: &conn::Conn,
) -> Result<attempt::Answer, ProxyError> {
    let uri = &parts.uri;
    inbound::check(parts, upgrade)?;
    origin::check(&snap.config, parts, conn.loopback)?;
    inbound::authorize(snap, &parts.headers)?;
    // A WebSocket handshake needs a client connection that can switch
    // (HTTP/1.1 only).
    let handshake = match upgrade {
        inbound::Upgrade::WebSocket(true) => true,
        inbound::Upgrade::WebSocket(false) => return Err(ProxyError::Upgrade),
        inbound::Upgrade::None | inbound::Upgrade::Other => false,
    };

    // 1. Route by the first path segment; the rest and the query go to the
    //    route's upstream.
    let (name, rest) = routes::split_path(uri.path());
    let route = select(snap, name)?;
    tracing::Span::current().record("route", &*route.name);
    cx.metrics = Some(route.metrics.clone());
    let query = uri.query().map(strip::query);
    let plan = plan(route, rest, query.as_deref())?;

    // 2. Choose the credentials to try (a dynamic one is taken out of the
    //    request), then remove every client credential and hop-by-hop header.
    let limits = attempt::Limits {
        request_timeout: snap.config.limits.request_timeout,
        max_replay_body: snap.config.limits.max_replay_body,
        max_replay_total: snap.config.limits.max_replay_total,
        rest: snap.config.keys.rest,
        rate_limit_rest: snap.config.keys.rate_limit_rest,
    };
    let candidates = plan
        .keys
        .candidates(&mut parts.headers, limits.rest)
        .map_err(|source| credential_error(route, "", source))?;
    let extra = extra_headers(route, &mut parts.headers)?;
    strip::request(&mut parts.headers);

    // 3. Enforce the model allowlist.
    let limit = allowlist::ReadLimits {
        max: limits.max_replay_body,
        timeout: snap.config.limits.body_read_timeout,
        timer: &conn.body_wait,
    };
    let mut body = if handshake {
        websocket::prepare(&mut parts.headers);
        websocket::check_model(route, rest, plan.deployment, query.as_deref())?;
        crate::upstream::UpstreamBody::stream(body)
    } else {
        allowlist::check(route, rest, plan.deployment, &parts.headers, body, limit).await?
    };
    if plan.signer.is_some() {
        // SigV4 signs a hash of the whole body. Boxed: only AWS routes read
        // it, and its state stays out of every other request's future.
        body = Box::pin(allowlist::in_memory(route, &parts.headers, body, limit)).await?;
    }

    // 4. Add the credential in the provider's form and forward, trying the
    //    next credential if the provider rejects one (step 5).
    for (name, value) in extra {
        parts.headers.insert(name, value);
    }
    let prepared = attempt::Prepared {
        method: std::mem::take(&mut parts.method),
        uri: plan.uri,
        headers: std::mem::take(&mut parts.headers),
    };
    // Held here and lent to `send`: its future stays small (an argument
    // moved into an async fn is kept twice in its state).
    let mut exchange = attempt::Exchange::new(
        route,
        plan.keys,
        &plan.host,
        limits,
        plan.signer,
        attempt::Borrowed {
            replay_budget,
            head_wait: &conn.head_wait,
            spare: &conn.spare_headers,
        },
        prepared,
    );
    let answer = attempt::send(&mut exchange, &candidates, body).await;
    if let Ok(a) = &answer {
        cx.attempts = a.attempts;
        cx.fingerprint = a.fingerprint;
    }
    answer
}

fn select<'s>(snap: &'s Snapshot, name: &str) -> Result<&'s Route, ProxyError> {
    snap.routes.get(name).ok_or_else(|| {
        let routes = snap.routes.names();
        if name.is_empty() {
            ProxyError::NoRoute { routes }
        } else {
            ProxyError::UnknownRoute {
                route: name.to_owned(),
                routes,
            }
        }
    })
}

/// Where one request goes: the keys to try, the upstream URI, its host (for
/// errors), the Azure deployment it names (for the allowlist), and the
/// signer of an AWS route.
struct Plan<'r> {
    keys: &'r KeySet,
    uri: Uri,
    host: Cow<'r, str>,
    deployment: Option<&'r str>,
    signer: Option<&'r SigV4>,
}

/// The plan for `rest` and `query` on `route`.
fn plan<'r>(
    route: &'r Route,
    rest: &'r str,
    query: Option<&'r str>,
) -> Result<Plan<'r>, ProxyError> {
    let to = |target: &'r Target, deployment| {
        let uri = target.upstream.uri(rest, query).map_err(|e| {
            ProxyError::Internal(format!(
                "route {}: cannot build upstream URI: {e}",
                route.name
            ))
        })?;
        Ok(Plan {
            keys: &target.keys,
            uri,
            host: Cow::Borrowed(target.upstream.host()),
            deployment,
            signer: None,
        })
    };
    match &route.targets {
        Targets::One(t) => to(t, None),
        Targets::Azure {
            deployments,
            default,
        } => {
            let named = azure::deployment(rest).or_else(|| azure::realtime_deployment(rest, query));
            to(
                azure::target(&route.name, deployments, default.as_ref(), named)?,
                named,
            )
        }
        Targets::Vertex(v) => {
            let (uri, host) = v.uri(&route.name, rest, query)?;
            Ok(Plan {
                keys: &v.keys,
                uri,
                host: Cow::Owned(host),
                deployment: None,
                signer: None,
            })
        }
        Targets::Aws(aws) => {
            let uri = aws.upstream.uri(rest, query).map_err(|e| {
                ProxyError::Internal(format!(
                    "route {}: cannot build upstream URI: {e}",
                    route.name
                ))
            })?;
            Ok(Plan {
                keys: &aws.keys,
                uri,
                host: Cow::Borrowed(aws.upstream.host()),
                deployment: None,
                signer: aws.signer.as_ref(),
            })
        }
        Targets::Unsupported(reason) => Err(ProxyError::NotImplemented {
            route: route.name.to_string(),
            ty: route.spec.name,
            reason,
        }),
    }
}

/// Values for the route's extra credential headers, chosen before the
/// client's headers are stripped (a dynamic value comes from them).
fn extra_headers(
    route: &Route,
    headers: &mut http::HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
    let mut out = Vec::with_capacity(route.headers.len());
    for (name, keys) in route.headers.iter() {
        // An extra header has one location: its first candidate is the value.
        let first = keys
            .candidates(headers, Duration::ZERO)
            .map_err(|e| credential_error(route, name.as_str(), e))?
            .into_iter()
            .next();
        let value = match first.map(|c| c.chosen) {
            Some(Chosen::Static { header, .. }) => header.clone(),
            Some(Chosen::Dynamic(v)) => v,
            Some(Chosen::Minted(v)) => v,
            // Extra headers hold stored values, never token sources.
            Some(Chosen::Token { .. } | Chosen::Signed { .. } | Chosen::Nothing) | None => continue,
        };
        out.push((name.clone(), value));
    }
    Ok(out)
}

fn credential_error(
    route: &Route,
    header: &str,
    source: crate::credentials::NoCredential,
) -> ProxyError {
    let route = if header.is_empty() {
        route.name.to_string()
    } else {
        format!("{} (header {header})", route.name)
    };
    ProxyError::CredentialUnavailable { route, source }
}
