//! A mock WebSocket provider (TLS, offering ALPN h2 and http/1.1, so a
//! handshake that arrives proves sidekey chose HTTP/1.1) and a WebSocket
//! client for talking to sidekey.
//!
//! The provider checks each handshake with the test's `accept` function
//! (the credential, mostly): `Err(status)` refuses it before `101`. An
//! accepted socket echoes every text and binary message; the text
//! `close-me` makes the provider close; a close from the client is
//! recorded. Gemini Live's `setup` and `clientContent` messages get the
//! answers a Live server gives. Panics in the provider's tasks are re-raised by
//! [`WsMock::join`] or on drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::tls::TestPki;

/// A handshake as the provider saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// What the provider recorded.
#[derive(Default, Debug)]
pub struct Log {
    /// Every handshake, accepted or not.
    pub handshakes: Vec<Seen>,
    /// Close frames received from a client.
    pub client_closes: usize,
    /// Sockets that ended (any way).
    pub ended: usize,
}

type Accept = Arc<dyn Fn(&Seen) -> Result<(), u16> + Send + Sync>;

pub struct WsMock {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
    panics: Arc<Mutex<Vec<String>>>,
}

impl WsMock {
    /// `https://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn handshakes(&self) -> Vec<Seen> {
        self.log.lock().unwrap().handshakes.clone()
    }

    /// Fails the test if a provider task panicked.
    pub fn join(&self) {
        let panics = self.panics.lock().unwrap();
        assert!(panics.is_empty(), "the WebSocket mock panicked: {panics:?}");
    }

    pub async fn start(
        pki: &TestPki,
        accept: impl Fn(&Seen) -> Result<(), u16> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = TlsAcceptor::from(pki.server.clone());
        let log: Arc<Mutex<Log>> = Arc::default();
        let panics: Arc<Mutex<Vec<String>>> = Arc::default();
        let accept: Accept = Arc::new(accept);
        let (log2, panics2) = (log.clone(), panics.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, log, accept, panics) =
                    (tls.clone(), log2.clone(), accept.clone(), panics2.clone());
                let conn = tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    serve(stream, log, accept).await;
                });
                tokio::spawn(async move {
                    if let Err(e) = conn.await
                        && e.is_panic()
                    {
                        let p = e.into_panic();
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        panics.lock().unwrap().push(msg);
                    }
                });
            }
        });
        Self {
            addr,
            log,
            task,
            panics,
        }
    }
}

impl Drop for WsMock {
    fn drop(&mut self) {
        self.task.abort();
        if !std::thread::panicking() {
            self.join();
        }
    }
}

async fn serve<S>(stream: S, log: Arc<Mutex<Log>>, accept: Accept)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let log2 = log.clone();
    // tungstenite's callback type: its error is a whole response.
    #[allow(clippy::result_large_err, reason = "tungstenite's signature")]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let seen = Seen {
            path_and_query: req
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            headers: req.headers().clone(),
        };
        let verdict = accept(&seen);
        log2.lock().unwrap().handshakes.push(seen);
        if let Err(status) = verdict {
            let mut r = ErrorResponse::new(Some(r#"{"error":{"message":"bad key"}}"#.to_owned()));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            return Err(r);
        }
        // Choose the first subprotocol offered, as servers do.
        if let Some(first) = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
        {
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.trim().parse().unwrap());
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Text(t) if t.as_str() == "close-me" => {
                let _ = ws.close(None).await;
            }
            // Enough of Gemini Live: the setup is answered `setupComplete`,
            // a client turn a model turn that repeats its text.
            Message::Text(t) if live_answer(t.as_str()).is_some() => {
                let answer = live_answer(t.as_str()).unwrap_or_default();
                if ws.send(Message::text(answer)).await.is_err() {
                    break;
                }
            }
            Message::Text(_) | Message::Binary(_) => {
                let sent = ws.send(msg).await;
                if sent.is_err() {
                    break;
                }
            }
            Message::Close(_) => log.lock().unwrap().client_closes += 1,
            _ => {}
        }
    }
    log.lock().unwrap().ended += 1;
}

/// What a Gemini Live server answers to `text`: `setupComplete` to the
/// setup, a model turn to a client turn (its key written either way, as
/// the SDKs do), nothing to anything else.
fn live_answer(text: &str) -> Option<String> {
    let msg: serde_json::Value = serde_json::from_str(text).ok()?;
    if msg.get("setup").is_some() {
        return Some(r#"{"setupComplete": {}}"#.to_owned());
    }
    let turn = msg
        .get("clientContent")
        .or_else(|| msg.get("client_content"))?;
    let said = turn["turns"][0]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default();
    let answer = serde_json::json!({"serverContent": {
        "modelTurn": {"role": "model", "parts": [{"text": format!("live: {said}")}]},
        "turnComplete": true,
    }});
    Some(answer.to_string())
}

/// A WebSocket client connection to sidekey.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `url` (`ws://...`) with extra `headers`; `Err(status, body)` when
/// the handshake is refused.
pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, (u16, String)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let connecting = tokio_tungstenite::connect_async(req);
    match tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// A mock's rule: the handshake must carry `name: value`, or is answered
/// `status`.
pub fn requires(
    name: &'static str,
    value: impl Into<String>,
    status: u16,
) -> impl Fn(&Seen) -> Result<(), u16> + Send + Sync + 'static {
    let value = value.into();
    move |s: &Seen| {
        if s.header(name) == Some(value.as_str()) {
            Ok(())
        } else {
            Err(status)
        }
    }
}

/// Sends a text message, which the mock echoes; closes; and checks that
/// the echo came back and the socket then ended.
pub async fn echo_then_close(ws: &mut Client) {
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(ws).await, Some(Message::text("hi")));
    ws.close(None).await.unwrap();
    assert!(ended(ws).await);
}

/// The next message, within 10 s.
pub async fn next(ws: &mut Client) -> Option<Message> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no message within 10 s")
        .map(|r| r.unwrap())
}

/// Whether the socket is closed: a close frame, the end, or a connection
/// cut without one (sidekey closes idle sockets and those left at shutdown
/// by closing the TCP connection: it does not parse frames).
pub async fn ended(ws: &mut Client) -> bool {
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("neither a message nor the end within 10 s")
    {
        None | Some(Ok(Message::Close(_)) | Err(_)) => true,
        Some(Ok(_)) => false,
    }
}
