//! The upstream client's own behaviour, over real sockets on 127.0.0.1:
//! keep-alive reuse, keep-alive races, HTTP/2 lanes, idle expiry, upgrades.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

use super::endpoint::IDLE_TIMEOUT;
use super::{Client, UpstreamBody};

fn client(cas: &[CertificateDer<'static>], per_lane: usize) -> Client {
    let tls = super::tls::client_config(cas).unwrap();
    Client::new(tls, Duration::from_secs(5), per_lane, Vec::new())
}

fn get(url: &str) -> Request<UpstreamBody> {
    Request::get(url)
        .body(UpstreamBody::buffered(Bytes::new()))
        .unwrap()
}

/// Sends a GET and reads the whole answer; the connection is returned.
async fn fetch(client: &Client, url: &str) -> String {
    let (resp, guard) = client.send(get(url)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    drop(guard);
    String::from_utf8(body.to_vec()).unwrap()
}

/// Lets spawned tasks (connection tasks, the sweeper) run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// An HTTP/1.1 keep-alive server answering `ok`; counts connections.
async fn h1_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, accepted) = h1_server().await;
    let c = client(&[], 100);
    let url = format!("http://{addr}/x");
    for _ in 0..5 {
        assert_eq!(fetch(&c, &url).await, "ok");
        settle().await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(c.endpoint_for(&url).idle_count(), 1);
}

#[tokio::test]
async fn a_request_for_the_root_goes_out_with_the_target_slash() {
    // STS is asked at `https://sts.REGION.amazonaws.com/`: an empty request
    // target would be a 400 from any HTTP/1.1 server.
    let (addr, _) = h1_server().await;
    let c = client(&[], 100);
    assert_eq!(fetch(&c, &format!("http://{addr}/")).await, "ok");
    assert_eq!(fetch(&c, &format!("http://{addr}")).await, "ok");
}

#[tokio::test]
async fn concurrent_requests_open_connections_that_all_go_back_idle() {
    let (addr, accepted) = h1_server().await;
    let c = client(&[], 100);
    let url = format!("http://{addr}/x");
    // Three heads held at once need three connections.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(c.send(get(&url)).await.unwrap());
    }
    for (resp, guard) in held {
        resp.into_body().collect().await.unwrap();
        drop(guard);
    }
    settle().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(c.endpoint_for(&url).idle_count(), 3);
}

/// Answers one request per connection, then closes it (without saying so).
async fn closing_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_server_closing_an_idle_connection_costs_no_error() {
    let (addr, accepted) = closing_server().await;
    let c = client(&[], 100);
    let url = format!("http://{addr}/x");
    for _ in 0..3 {
        assert_eq!(fetch(&c, &url).await, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

pin_project_lite::pin_project! {
    /// A socket whose peer has gone without the connection noticing: once
    /// `dead` is set, reads see EOF, but nothing wakes the reader.
    struct Quiet {
        #[pin]
        io: tokio::io::DuplexStream,
        dead: Arc<AtomicBool>,
    }
}

impl AsyncRead for Quiet {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if this.dead.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl AsyncWrite for Quiet {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_request_on_an_idle_connection_closed_unseen_goes_out_on_a_new_one() {
    let (addr, accepted) = h1_server().await;
    let c = client(&[], 100);
    let url = format!("http://{addr}/x");
    let endpoint = c.endpoint_for(&url);
    // An idle connection the server has closed, which hyper has not noticed.
    let (near, _far) = tokio::io::duplex(1024);
    let dead = Arc::new(AtomicBool::new(false));
    let io = Quiet {
        io: near,
        dead: dead.clone(),
    };
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    settle().await;
    endpoint.keep_for_test(tx);
    dead.store(true, Ordering::SeqCst);
    assert_eq!(endpoint.idle_count(), 1);

    assert_eq!(fetch(&c, &url).await, "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sent again on a new connection"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = client(&[], 100);
    let err = c
        .send(get(&format!("http://{closed}/x")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("connect failed: "), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

#[tokio::test]
async fn idle_connections_expire() {
    let (addr, accepted) = h1_server().await;
    let c = client(&[], 100);
    let url = format!("http://{addr}/x");
    assert_eq!(fetch(&c, &url).await, "ok");
    settle().await;
    let endpoint = c.endpoint_for(&url);
    assert_eq!(endpoint.idle_count(), 1);

    // Time passes second by second: the sweeper stamps the connection when
    // it first finds it idle and closes it once idle for the timeout since
    // (within a sweep or two of it).
    tokio::time::pause();
    let second = Duration::from_secs(1);
    for _ in 0..(IDLE_TIMEOUT.as_secs() - 5) {
        tokio::time::advance(second).await;
        settle().await;
    }
    assert_eq!(endpoint.idle_count(), 1, "still within the idle timeout");
    for _ in 0..30 {
        tokio::time::advance(second).await;
        settle().await;
    }
    assert_eq!(endpoint.idle_count(), 0, "closed after the idle timeout");
    tokio::time::resume();

    assert_eq!(fetch(&c, &url).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upgraded_connection_is_handed_over_and_never_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
            tokio::spawn(async move {
                let up = hyper::upgrade::on(&mut req).await.unwrap();
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
            });
            let resp = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "echo")
                .header("connection", "upgrade")
                .body(Full::new(Bytes::new()))
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades()
            .await;
    });
    let c = client(&[], 100);
    let url = format!("http://{addr}/ws");
    let mut req = get(&url);
    req.headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("echo"));
    req.headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    let (mut resp, guard) = c.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let up = hyper::upgrade::on(&mut resp).await.unwrap();
    drop(guard);
    let mut io = TokioIo::new(up);
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(c.endpoint_for(&url).idle_count(), 0);
}

/// A CA and a TLS server config for 127.0.0.1 offering h2 only.
fn pki() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    (ca.der().clone(), Arc::new(server))
}

/// An HTTP/2 server over TLS whose answers stream until the client goes;
/// counts connections.
async fn h2_server(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    // One frame now, then nothing for a long while.
                    let (mut tx, body) = Channel::<Bytes>::new(1);
                    tokio::spawn(async move {
                        let _ = tx.send_data(Bytes::from_static(b"data: 0\n\n")).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    });
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_full_http2_connection_opens_another_lane() {
    let (ca, tls) = pki();
    let (addr, accepted) = h2_server(tls).await;
    let c = client(&[ca], 2);
    let url = format!("https://{addr}/stream");
    let mut held = Vec::new();
    for _ in 0..5 {
        let (resp, guard) = c.send(get(&url)).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        held.push((resp, guard));
    }
    let endpoint = c.endpoint_for(&url);
    assert_eq!(endpoint.lane_count(), 3, "two streams per lane");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // Streams that end free their places: the next requests fit.
    held.truncate(1);
    for _ in 0..3 {
        held.push(c.send(get(&url)).await.unwrap());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Lanes without streams close after the idle timeout.
    drop(held);
    settle().await;
    tokio::time::pause();
    for _ in 0..((IDLE_TIMEOUT.as_secs() / 10) + 2) {
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
    }
    assert_eq!(endpoint.lane_count(), 0);
}
