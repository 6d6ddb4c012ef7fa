//! The floor: the cheapest hyper 1.x proxy doing sidekey's header swap,
//! measured beside sidekey and nginx (issue 22: "show the floor").
//!
//! One current-thread runtime, like `sidekey --worker-threads 1`. Each
//! inbound HTTP/1.1 connection drives its own `hyper::client::conn::http1`
//! connection to the upstream over TLS (no pool, no lock shared between
//! connections, no hashing). Per request it does what nginx's `proxy_conf`
//! does: remove the client's credential and hop-by-hop headers, set the key
//! and `Host`, take the route prefix off the path, forward, and stream the
//! answer back. No routing table, no allowlist, no fallback, no metrics,
//! no access log, no error envelope: what is left is hyper's own cost.

use std::path::Path;
use std::sync::Arc;

use http::header::{AUTHORIZATION, CONNECTION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// Set (to "LISTEN_PORT UPSTREAM_PORT CA_PEM") in the floor's process.
pub(crate) const ENV: &str = "SIDEKEY_BENCH_FLOOR";

/// Runs the floor proxy until killed.
pub(crate) fn run(spec: &str, key: &str) {
    let mut it = spec.split(' ');
    let listen: u16 = it.next().unwrap().parse().unwrap();
    let upstream: u16 = it.next().unwrap().parse().unwrap();
    let ca = it.next().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve(listen, upstream, Path::new(ca), key));
}

async fn serve(listen: u16, upstream: u16, ca: &Path, key: &str) {
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca)));
    let listener = TcpListener::bind(("127.0.0.1", listen)).await.unwrap();
    let auth = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    let host = HeaderValue::from_str(&format!("localhost:{upstream}")).unwrap();
    loop {
        let (inbound, _) = listener.accept().await.unwrap();
        inbound.set_nodelay(true).unwrap();
        let (tls, auth, host) = (tls.clone(), auth.clone(), host.clone());
        tokio::spawn(async move {
            let tcp = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let up = tls.connect(name, tcp).await.unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up))
                .await
                .unwrap();
            tokio::spawn(conn);
            // Requests on one HTTP/1.1 connection come one at a time: the
            // lock is never contended, it only satisfies `Fn`.
            let sender = Arc::new(Mutex::new(sender));
            let svc =
                service_fn(move |req| forward(sender.clone(), req, auth.clone(), host.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(inbound), svc)
                .await;
        });
    }
}

async fn forward(
    sender: Arc<Mutex<SendRequest<Incoming>>>,
    req: Request<Incoming>,
    auth: HeaderValue,
    host: HeaderValue,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut parts, body) = req.into_parts();
    let h = &mut parts.headers;
    for name in super::CLIENT_CREDENTIALS {
        h.remove(name);
    }
    h.remove(CONNECTION);
    h.remove("keep-alive");
    h.insert(AUTHORIZATION, auth);
    h.insert(HOST, host);
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let rest = pq.strip_prefix("/openai").unwrap_or(pq);
    parts.uri = Uri::try_from(rest).unwrap_or_default();
    let sent = {
        let mut sender = sender.lock().await;
        sender.ready().await?;
        sender.send_request(Request::from_parts(parts, body))
    };
    sent.await
}

fn client_config(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
