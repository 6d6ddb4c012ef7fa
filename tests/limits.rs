//! Resource limits (design.md, "Operations"; issue 21 findings 1, 2 and 10):
//! connections past `max_connections` wait in the accept queue (an open
//! WebSocket keeps its place), a connection that never shows its protocol,
//! stalls in a head or sits idle is closed after `header_read_timeout`, a head past `max_header_bytes` gets
//! 431, a body sidekey reads itself that stalls gets 408 after
//! `body_read_timeout` (one that grows past `max_replay_body` gets 413, in
//! one piece or many), and replay buffers share `max_replay_total`.
//!
//! Raw sockets on 127.0.0.1, so the tests control every byte. Waits for
//! something to happen are bounded; a check that something does *not*
//! happen waits a short while and cannot fail because the machine is slow.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::client::{get, request, send};
use common::mock::{Mock, Reply, Transport};
use common::sidekey::{Running, start_in};
use common::tls::TestPki;
use common::ws::{self, Seen, WsMock};
use futures_util::SinkExt as _;
use http::{Method, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidekey::MapEnv;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

/// How long a check that something does not happen waits.
const QUIET: Duration = Duration::from_millis(300);

/// A generous bound for something that must happen.
const SOON: Duration = Duration::from_secs(10);

/// The value of the metric line starting with `prefix` (name and labels).
async fn metric(sk: &Running, prefix: &str) -> f64 {
    let text = get(&sk.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the metric starting with `prefix` reads `want`.
async fn metric_reaches(sk: &Running, prefix: &str, want: f64) {
    common::eventually(&format!("{prefix} = {want}"), SOON, || async {
        (metric(sk, prefix).await == want).then_some(())
    })
    .await;
}

/// Reads from `sock` until `enough` says what came is enough (then
/// `Some(true)`) or the peer closes it (EOF or reset: `Some(false)`), within
/// `within`; `None` when the time runs out. What came is in `got`.
async fn read_until(
    sock: &mut TcpStream,
    got: &mut Vec<u8>,
    within: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> Option<bool> {
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if enough(got) {
                return true;
            }
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()
}

/// Whether the peer closes `sock` (EOF or reset) within `within`; bytes
/// read before the close are returned with it.
async fn closed_within(sock: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    read_until(sock, &mut got, within, |_| false).await?;
    Some(got)
}

/// A request to an unknown route: sidekey answers it itself (404).
const UNKNOWN_ROUTE: &[u8] =
    b"GET /nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// Sends `req` on a new connection and reads the answer until sidekey closes.
async fn exchange(sk: &Running, req: &[u8]) -> String {
    let mut sock = TcpStream::connect(sk.addr).await.unwrap();
    sock.write_all(req).await.unwrap();
    let got = closed_within(&mut sock, SOON).await.expect("an answer");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn silent_and_half_preface_connections_are_closed_after_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_in(
        dir.path(),
        "[limits]\nheader_read_timeout = \"300ms\"\n",
        MapEnv::default(),
    )
    .await;

    let mut silent = TcpStream::connect(sk.addr).await.unwrap();
    let mut half = TcpStream::connect(sk.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut one_byte = TcpStream::connect(sk.addr).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    for (what, sock) in [
        ("a silent connection", &mut silent),
        ("half an HTTP/2 preface", &mut half),
        ("one byte of the preface", &mut one_byte),
    ] {
        let got = closed_within(sock, SOON)
            .await
            .unwrap_or_else(|| panic!("{what} was not closed"));
        assert!(got.is_empty(), "{what}: {got:?}");
    }

    // A client that sends its request in time is served as before, over
    // HTTP/1.1 and prior-knowledge h2c.
    assert!(
        exchange(&sk, UNKNOWN_ROUTE)
            .await
            .starts_with("HTTP/1.1 404")
    );
    let h2 = common::client::send_with(
        request(Method::GET, &sk.url("/nope/x"), &[], Bytes::new()),
        true,
    )
    .await;
    assert_eq!(h2.status, 404);
    sk.stop().await;
}

/// Reads one answer (head and `Content-Length` body) from a keep-alive
/// connection, or what came before it closed.
async fn one_answer(sock: &mut TcpStream) -> String {
    let complete = |got: &[u8]| {
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        got.len() >= end + 4 + length
    };
    let mut got = Vec::new();
    read_until(sock, &mut got, SOON, complete)
        .await
        .expect("an answer in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// hyper's header-read timer, which a connection lends to each of its head
/// reads in turn (`src/timer.rs`), keeps its meaning: a keep-alive
/// connection whose requests come well within the timeout is served for
/// as long as it sends (here over twice the timeout: a timer that fired at
/// a deadline it was moved past would close it), and is closed once it
/// sits idle; so is one whose head stalls halfway.
#[tokio::test]
async fn keep_alive_connections_live_while_they_send_and_close_when_they_stall() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_in(
        dir.path(),
        "[limits]\nheader_read_timeout = \"400ms\"\n",
        MapEnv::default(),
    )
    .await;
    const KEEP_ALIVE: &[u8] = b"GET /nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    let mut busy = TcpStream::connect(sk.addr).await.unwrap();
    for i in 0..6 {
        busy.write_all(KEEP_ALIVE).await.unwrap();
        let answer = one_answer(&mut busy).await;
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "request {i}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let got = closed_within(&mut busy, SOON)
        .await
        .expect("the idle connection is closed");
    assert!(got.is_empty(), "{got:?}");

    let mut stalled = TcpStream::connect(sk.addr).await.unwrap();
    stalled
        .write_all(b"GET /nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut stalled, SOON)
        .await
        .expect("the stalled head is closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty(), "{got:?}");
    sk.stop().await;
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_in(
        dir.path(),
        "[limits]\nmax_connections = 2\nheader_read_timeout = \"60s\"\n",
        MapEnv::default(),
    )
    .await;

    let first = TcpStream::connect(sk.addr).await.unwrap();
    let _second = TcpStream::connect(sk.addr).await.unwrap();
    metric_reaches(&sk, "sidekey_connections_open ", 2.0).await;

    // The kernel completes the third connection, but sidekey does not take
    // it from the accept queue: its request is not answered.
    let mut third = TcpStream::connect(sk.addr).await.unwrap();
    third.write_all(UNKNOWN_ROUTE).await.unwrap();
    assert!(
        closed_within(&mut third, QUIET).await.is_none(),
        "the third connection was served past max_connections = 2"
    );
    assert!(metric(&sk, "sidekey_limited_total{limit=\"max_connections\"} ").await >= 1.0);

    // One closes: the third is served.
    drop(first);
    let got = closed_within(&mut third, SOON)
        .await
        .expect("the third connection to be served once one closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404"));
    sk.stop().await;
}

#[tokio::test]
async fn an_open_websocket_keeps_its_place_until_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let mock = WsMock::start(&pki, |_: &Seen| Ok(())).await;
    let toml = format!(
        "ca_file = \"{ca}\"\n[limits]\nmax_connections = 1\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{up}\"\nkey = \"env::K\"\n",
        ca = pki.ca_file.display(),
        up = mock.base(),
    );
    let sk = start_in(dir.path(), &toml, MapEnv::new([("K", "sk-real")])).await;

    let url = format!("ws://{}/openai/v1/realtime?model=m", sk.addr);
    let mut socket = ws::connect(&url, &[]).await.expect("handshake accepted");
    socket.send(Message::text("hello")).await.unwrap();
    assert!(matches!(
        ws::next(&mut socket).await,
        Some(Message::Text(_))
    ));

    // hyper's connection ended at the upgrade; the WebSocket still holds
    // the only place.
    let mut other = TcpStream::connect(sk.addr).await.unwrap();
    other.write_all(UNKNOWN_ROUTE).await.unwrap();
    assert!(
        closed_within(&mut other, QUIET).await.is_none(),
        "a connection was served while the WebSocket held the only place"
    );
    assert_eq!(metric(&sk, "sidekey_connections_open ").await, 1.0);

    socket.close(None).await.unwrap();
    while ws::next(&mut socket).await.is_some() {}
    let got = closed_within(&mut other, SOON)
        .await
        .expect("served once the WebSocket closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404"));
    sk.stop().await;
    mock.join();
}

/// A request head with `n` headers of `size` bytes each.
fn head_with(n: usize, size: usize) -> Vec<u8> {
    let mut req = b"GET /nope/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".to_vec();
    for i in 0..n {
        req.extend_from_slice(format!("x-pad-{i}: {}\r\n", "a".repeat(size)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

#[tokio::test]
async fn a_head_past_max_header_bytes_gets_431() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_in(dir.path(), "", MapEnv::default()).await;

    // 20 × 7 KiB = 140 KiB: past twice the default 64 KiB, so hyper's
    // read buffer is full before the head ends, however the reads fall.
    let big = exchange(&sk, &head_with(20, 7 << 10)).await;
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    // 10 × 6 KiB = 60 KiB: within it; sidekey's own answer (unknown route).
    let fits = exchange(&sk, &head_with(10, 6 << 10)).await;
    assert!(fits.starts_with("HTTP/1.1 404"), "{fits}");

    // HTTP/2 (h2c): the header list is bounded the same way.
    let padded = |size: usize| {
        let pad: Vec<String> = (0..10).map(|_| "a".repeat(size)).collect();
        let names: Vec<String> = (0..10).map(|i| format!("x-pad-{i}")).collect();
        let headers: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(pad.iter().map(String::as_str))
            .collect();
        request(Method::GET, &sk.url("/nope/x"), &headers, Bytes::new())
    };
    let big = common::client::send_with(padded(7 << 10), true).await;
    assert_eq!(big.status, 431);
    let fits = common::client::send_with(padded(6 << 10), true).await;
    assert_eq!(fits.status, 404);
    sk.stop().await;
}

#[tokio::test]
async fn a_stalled_body_on_an_allowlist_route_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let toml = format!(
        "[limits]\nbody_read_timeout = \"300ms\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\nmodels = [\"gpt-4o\"]\n",
        mock.url
    );
    let sk = start_in(dir.path(), &toml, MapEnv::new([("K", "sk-real")])).await;

    // 10 of the 1000 bytes announced, then nothing.
    let mut sock = TcpStream::connect(sk.addr).await.unwrap();
    sock.write_all(
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(SOON, sock.read(&mut got))
        .await
        .expect("a stalled body was never answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&got[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
    assert!(answer.contains("limits.body_read_timeout"), "{answer}");
    assert!(mock.requests().is_empty(), "nothing went upstream");
    assert_eq!(
        metric(&sk, "sidekey_limited_total{limit=\"body_read_timeout\"} ").await,
        1.0
    );
    sk.stop().await;
}

/// A body the allowlist reads may come in pieces: a chunked body sent in
/// three writes arrives upstream byte for byte. It is bounded by
/// `limits.max_replay_body` whether or not its length is announced: a
/// chunked body that grows past it, and a `Content-Length` past it, get 413
/// and nothing goes upstream.
#[tokio::test]
async fn an_allowlist_body_is_read_in_pieces_up_to_max_replay_body() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(Transport::Plain, |_| Reply::ok()).await;
    let toml = format!(
        "[limits]\nmax_replay_body = \"200\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"{}\"\nkey = \"env::K\"\nmodels = [\"gpt-4o\"]\n",
        mock.url
    );
    let sk = start_in(dir.path(), &toml, MapEnv::new([("K", "sk-real")])).await;
    let head = b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len()).into_bytes();

    // Three pieces, each written on its own after a pause.
    let pieces = [
        "{\"model\":\"gpt-4o\",",
        "\"messages\":[{\"role\":\"user\",",
        "\"content\":\"hi\"}]}",
    ];
    let mut sock = TcpStream::connect(sk.addr).await.unwrap();
    sock.write_all(head).await.unwrap();
    for piece in pieces {
        sock.write_all(&chunk(piece)).await.unwrap();
        sock.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sock.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = one_answer(&mut sock).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(mock.last().body, Bytes::from(pieces.concat()));

    // Past the limit in pieces, the length never announced.
    let mut sock = TcpStream::connect(sk.addr).await.unwrap();
    sock.write_all(head).await.unwrap();
    sock.write_all(&chunk(pieces[0])).await.unwrap();
    for _ in 0..4 {
        sock.write_all(&chunk(&" ".repeat(60))).await.unwrap();
    }
    sock.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = one_answer(&mut sock).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"body_too_large\""), "{answer}");

    // Announced past the limit: refused before the body is read.
    let mut sock = TcpStream::connect(sk.addr).await.unwrap();
    sock.write_all(
        b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/json\r\nContent-Length: 201\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = one_answer(&mut sock).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        mock.requests().len(),
        1,
        "only the first request went upstream"
    );
    sk.stop().await;
}

/// An upstream that reads each request's body whole, holds the answers to
/// `key-a` until two such requests have arrived, then rejects them (401);
/// `key-b` is accepted. Answers `(status, body length)`.
async fn slow_rejecting_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let both = Arc::new(Barrier::new(2));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let both = both.clone();
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let both = both.clone();
                async move {
                    let key = req.headers()["authorization"].to_str().unwrap().to_owned();
                    let len = req.into_body().collect().await.unwrap().to_bytes().len();
                    let status = if key == "Bearer key-a" {
                        both.wait().await;
                        401
                    } else {
                        200
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(format!("{len}"))));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn replay_buffers_share_max_replay_total() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, task) = slow_rejecting_upstream().await;
    let toml = format!(
        "[limits]\nmax_replay_total = \"1MiB\"\n\
         [routes.r]\ntype = \"openai\"\nupstream = \"{upstream}\"\n\
         key = {{ default = \"env::A\", fallback = \"env::B\" }}\n"
    );
    let sk = start_in(
        dir.path(),
        &toml,
        MapEnv::new([("A", "key-a"), ("B", "key-b")]),
    )
    .await;

    // Two 800 KiB uploads at once; the upstream has read both whole before
    // it rejects either, so both were held at the same time: only one fits
    // in 1 MiB.
    let body = Bytes::from(vec![b'x'; 800 << 10]);
    let upload = || {
        send(request(
            Method::POST,
            &sk.url("/r/v1/files"),
            &[],
            body.clone(),
        ))
    };
    let (a, b) = tokio::join!(upload(), upload());
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 401],
        "one upload fell back to key-b, the other could not"
    );
    let served = if a.status == 200 { &a } else { &b };
    assert_eq!(served.text(), (800 << 10).to_string(), "replayed whole");
    assert_eq!(
        metric(&sk, "sidekey_limited_total{limit=\"replay_budget\"} ").await,
        1.0
    );

    // The budget was given back: one upload alone falls back again.
    let c = send(request(
        Method::POST,
        &sk.url("/r/v1/files"),
        &[],
        body.clone(),
    ));
    let d = send(request(
        Method::POST,
        &sk.url("/r/v1/files"),
        &[],
        Bytes::new(),
    ));
    let (c, d) = tokio::join!(c, d);
    assert_eq!((c.status.as_u16(), d.status.as_u16()), (200, 200));
    assert_eq!(
        metric(&sk, "sidekey_limited_total{limit=\"replay_budget\"} ").await,
        1.0
    );
    sk.stop().await;
    task.abort();
}
