//! A plain HTTP client for talking to sidekey, with per-chunk arrival times
//! for streaming checks.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The `code` of a sidekey error envelope (asserting its shape).
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert_eq!(
            v["error"]["type"],
            "sidekey_error",
            "not a sidekey error: {}",
            self.text()
        );
        assert!(v["error"]["message"].is_string());
        v["error"]["code"].as_str().unwrap().to_owned()
    }
}

fn client(h2: bool) -> Client<HttpConnector, Full<Bytes>> {
    let mut b = Client::builder(TokioExecutor::new());
    if h2 {
        b.http2_only(true);
    }
    b.build_http()
}

/// Builds a request.
pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body.into())).unwrap()
}

/// Sends over HTTP/1.1 and reads the whole response.
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    send_with(req, false).await
}

/// Sends (HTTP/1.1, or h2c with prior knowledge) and reads the whole response.
pub async fn send_with(req: Request<Full<Bytes>>, h2: bool) -> Resp {
    let resp = client(h2).request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub async fn get(url: &str) -> Resp {
    send(request(Method::GET, url, &[], Bytes::new())).await
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(request(Method::POST, url, &h, body.to_owned())).await
}

/// Sends and returns each body chunk with the time it arrived.
pub async fn stream(req: Request<Full<Bytes>>) -> (StatusCode, Vec<(Instant, Bytes)>) {
    let resp = client(false).request(req).await.unwrap();
    let status = resp.status();
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((Instant::now(), data));
        }
    }
    (status, chunks)
}
