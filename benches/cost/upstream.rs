//! The upstream of the request benchmarks: a TLS server answering every
//! request with the same chat completion, in its own process on CPU 1.
//!
//! The load generator shares CPU 1 with the upstream, so the upstream's
//! cost caps what section 1's closed loop can push through a proxy. nginx's
//! `return 200` over OpenSSL cost about 15 µs a request there and wrk about
//! 9, together more than a proxy on CPU 0 (21-23): requests a second
//! measured CPU 1, and a direct call managed fewer than a call through any
//! proxy. This server does only what a keep-alive HTTP/1.1 upstream must
//! (read a head and its `Content-Length` body, write the answer) over
//! rustls, which spends about a third of OpenSSL's instructions a request,
//! so CPU 1 keeps room and the proxy's core is what saturates (section 1
//! prints how busy it was). It answers with the head nginx's `return 200`
//! sent, header for header (`Date` fixed), so each proxy parses what it
//! parsed before. Unlike `return 200`, it answers once the whole body has
//! arrived, as a provider does. A request it cannot frame (a chunked body,
//! a bad `Content-Length`, a head over 16 KiB) closes the connection, which
//! wrk reports as an error.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Set (to "LISTEN_PORT DIR", `DIR` holding `cert.pem` and `key.pem`) in the
/// upstream's process.
pub(crate) const ENV: &str = "SIDEKEY_BENCH_UPSTREAM";

/// A request head larger than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;

/// Runs the upstream until killed.
pub(crate) fn run(spec: &str, answer: &str) {
    let (port, dir) = spec.split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(serve(port, Path::new(dir), answer));
}

/// A TLS acceptor (rustls with ring) for the certificate and key in PEM,
/// offering `alpn`.
pub(crate) fn acceptor(cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(tls))
}

async fn serve(port: u16, dir: &Path, answer: &str) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let acceptor = acceptor(&read("cert.pem"), &read("key.pem"), &[b"http/1.1"]);
    let response: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 12:00:00 GMT\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{answer}",
        answer.len()
    )
    .into_bytes()
    .into();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, response) = (acceptor.clone(), response.clone());
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = answer_each(tls, &response).await;
            }
        });
    }
}

/// Answers each complete request read from `io`, in order, until the
/// client closes or sends what this server cannot frame.
async fn answer_each(mut io: TlsStream<TcpStream>, response: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(MAX_HEAD);
    let mut out = Vec::with_capacity(response.len());
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut start = 0;
        while let Some(len) = request_len(&buf[start..])? {
            start += len;
            out.extend_from_slice(response);
        }
        buf.drain(..start);
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
    }
}

/// The length of the first request in `buf` (head and body) once all of it
/// has arrived.
fn request_len(buf: &[u8]) -> std::io::Result<Option<usize>> {
    let unframed = |what: &str| Err(std::io::Error::other(format!("bench upstream: {what}")));
    let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            unframed("request head too large")
        } else {
            Ok(None)
        };
    };
    let mut body = 0;
    for line in buf[..head].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return unframed("chunked request bodies are not read");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            body = match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) => n,
                None => return unframed("bad Content-Length"),
            };
        }
    }
    let len = head + 4 + body;
    Ok((buf.len() >= len).then_some(len))
}
