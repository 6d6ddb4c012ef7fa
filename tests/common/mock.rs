//! A mock provider: a real HTTP server (TLS or plain) on 127.0.0.1 that
//! records every request it receives and answers with a scripted [`Reply`].
//! Streaming replies send their chunks with a pause between them and record
//! when each chunk was handed to the socket.
//!
//! A panic inside a mock (its handler, or the mock's own connection and
//! streaming tasks) is recorded and re-raised in the test: by
//! [`Mock::join`], or when the [`Mock`] is dropped. Without that, a handler's
//! failed assertion would only cost a 500 (or a reset connection) that the
//! test might never look at. A handler that panics answers 500, so the
//! request does not hang.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Channel, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::tls::TestPki;

/// One request as the provider saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    pub fn path_and_query(&self) -> String {
        self.uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// What the mock answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Chunks sent `gap` apart (the first one immediately).
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<Bytes>,
        gap: Duration,
    },
    /// Never answer (for timeouts).
    Hang,
    /// Wait, then answer.
    After(Duration, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.into()),
        }
    }
    pub fn ok() -> Self {
        Self::json(200, r#"{"ok":true}"#)
    }
    pub fn sse(chunks: Vec<String>, gap: Duration) -> Self {
        Self::Stream {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: chunks.into_iter().map(Bytes::from).collect(),
            gap,
        }
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Panic messages from inside a mock, in the order they happened.
type Panics = Arc<Mutex<Vec<String>>>;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

/// Runs the test's handler; a panic is recorded and answered with a 500.
fn call(handler: &Handler, rec: &Recorded, panics: &Panics) -> Reply {
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler(rec))) {
        Ok(reply) => reply,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            panics.lock().unwrap().push(message);
            Reply::json(500, r#"{"error":"the mock's handler panicked"}"#)
        }
    }
}

/// Spawns `task`; if it panics, the panic is recorded in `panics`.
fn spawn_watched(panics: &Panics, task: impl Future<Output = ()> + Send + 'static) {
    let handle = tokio::spawn(task);
    let panics = panics.clone();
    tokio::spawn(async move {
        if let Err(e) = handle.await
            && e.is_panic()
        {
            let message = panic_message(e.into_panic().as_ref());
            panics.lock().unwrap().push(message);
        }
    });
}

fn is_error(reply: &Reply) -> bool {
    match reply {
        Reply::Full { status, .. } | Reply::Stream { status, .. } => *status >= 400,
        Reply::After(_, reply) => is_error(reply),
        Reply::Hang => false,
    }
}

/// A running mock provider.
pub struct Mock {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT` (or `http://` for a plain mock).
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// When each streamed chunk was handed over, per request, in order.
    sent: Arc<Mutex<Vec<Vec<Instant>>>>,
    /// Panics inside the mock, re-raised by [`Mock::join`] or on drop.
    panics: Panics,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
        // Panicking while a test already panics would abort the process and
        // hide the first failure.
        if !std::thread::panicking() {
            self.raise_panics();
        }
    }
}

/// How the mock accepts connections.
pub enum Transport<'a> {
    /// TLS with ALPN h2 + http/1.1.
    Tls(&'a TestPki),
    /// TLS offering only http/1.1.
    TlsH1(&'a TestPki),
    /// TLS with ALPN h2 + http/1.1, allowing this many concurrent HTTP/2
    /// streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    TlsH2Streams(&'a TestPki, u32),
    /// Plain HTTP (in-cluster style).
    Plain,
}

impl Mock {
    /// Starts a mock answering every request with `handler`.
    pub async fn start(
        transport: Transport<'_>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(transport, false, handler).await
    }

    /// Like [`Mock::start`], but answers an error (status ≥ 400) from the
    /// head alone, before reading the body, as a provider may do for a bad
    /// key; such requests are recorded with an empty body. Other answers
    /// read the body first.
    pub async fn start_early(
        transport: Transport<'_>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(transport, true, handler).await
    }

    async fn start_with(
        transport: Transport<'_>,
        early: bool,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let max_streams = match transport {
            Transport::TlsH2Streams(_, n) => Some(n),
            _ => None,
        };
        let (acceptor, scheme) = match transport {
            Transport::Tls(pki) | Transport::TlsH2Streams(pki, _) => {
                (Some(TlsAcceptor::from(pki.server.clone())), "https")
            }
            Transport::TlsH1(pki) => (Some(TlsAcceptor::from(pki.server_h1.clone())), "https"),
            Transport::Plain => (None, "http"),
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let panics: Panics = Arc::default();
        let handler: Handler = Arc::new(handler);
        let (reqs, sent2, panics2) = (requests.clone(), sent.clone(), panics.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).unwrap();
                let (handler, reqs, sent, acceptor, panics) = (
                    handler.clone(),
                    reqs.clone(),
                    sent2.clone(),
                    acceptor.clone(),
                    panics2.clone(),
                );
                spawn_watched(&panics2, async move {
                    let svc = service_fn(move |req| {
                        let mock = Shared {
                            handler: handler.clone(),
                            reqs: reqs.clone(),
                            sent: sent.clone(),
                            panics: panics.clone(),
                        };
                        serve(req, early, mock)
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    if let Some(n) = max_streams {
                        builder.http2().max_concurrent_streams(n);
                    }
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            url: format!("{scheme}://{addr}"),
            requests,
            sent,
            panics,
            task,
        }
    }

    /// Stops the mock and fails the test if anything panicked inside it
    /// (linkerd2-proxy's `Listening::join`). Dropping the mock checks the
    /// same; `join` says where in the test the check happens.
    pub async fn join(mut self) {
        self.task.abort();
        let accept_loop = (&mut self.task).await;
        if let Err(e) = accept_loop
            && e.is_panic()
        {
            let message = panic_message(e.into_panic().as_ref());
            self.panics.lock().unwrap().push(message);
        }
        self.raise_panics();
    }

    /// Panics with the first panic recorded inside the mock, if any.
    fn raise_panics(&self) {
        let panics = std::mem::take(&mut *self.panics.lock().unwrap());
        if let Some(first) = panics.first() {
            panic!(
                "mock handler panicked ({} panic(s) in the mock at {}): {first}",
                panics.len(),
                self.url
            );
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The most recent request.
    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock received no request")
    }

    /// Send times of the chunks of the `i`-th streamed reply.
    pub fn sent_times(&self, i: usize) -> Vec<Instant> {
        self.sent
            .lock()
            .unwrap()
            .get(i)
            .cloned()
            .unwrap_or_default()
    }
}

type MockBody = Either<Full<Bytes>, Channel<Bytes, Infallible>>;

/// What every request of one mock shares.
struct Shared {
    handler: Handler,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    sent: Arc<Mutex<Vec<Vec<Instant>>>>,
    panics: Panics,
}

async fn serve(
    req: Request<Incoming>,
    early: bool,
    mock: Shared,
) -> Result<Response<MockBody>, Infallible> {
    let Shared {
        handler,
        reqs,
        sent,
        panics,
    } = mock;
    let (parts, body) = req.into_parts();
    let mut rec = Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::new(),
    };
    // Early mode answers an error from the head alone, without reading the
    // body; anything else (and every answer otherwise) reads the body first.
    let early_reply = if early {
        Some(call(&handler, &rec, &panics)).filter(is_error)
    } else {
        None
    };
    let reply = match early_reply {
        Some(reply) => {
            drop(body);
            reqs.lock().unwrap().push(rec.clone());
            reply
        }
        None => {
            rec.body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            reqs.lock().unwrap().push(rec.clone());
            call(&handler, &rec, &panics)
        }
    };
    let build = |status: u16, headers: &[(String, String)], body: MockBody| {
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            resp.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        resp
    };
    let mut reply = reply;
    while let Reply::After(wait, inner) = reply {
        tokio::time::sleep(wait).await;
        reply = *inner;
    }
    Ok(match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => build(status, &headers, Either::Left(Full::new(body))),
        Reply::Stream {
            status,
            headers,
            chunks,
            gap,
        } => {
            let (mut tx, body) = Channel::new(1);
            let slot = {
                let mut s = sent.lock().unwrap();
                s.push(Vec::new());
                s.len() - 1
            };
            spawn_watched(&panics, async move {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    if tx.send_data(chunk).await.is_err() {
                        return;
                    }
                    sent.lock().unwrap()[slot].push(Instant::now());
                }
            });
            build(status, &headers, Either::Right(body))
        }
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::After(..) => unreachable!("unwrapped above"),
    })
}
