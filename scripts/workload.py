"""The load that scripts/hot-functions traces and scripts/pgo-profile trains
on: what a busy pod sends through sidekey, all on 127.0.0.1.

Upstreams are Python's http.server, over TLS with a throwaway certificate
from the openssl command (TLS 1.3 as providers speak it, TLS 1.2 as the cost
benchmark's nginx 1.22 does) or plain HTTP. One sidekey config has a plain
route, a fallback + model allowlist route, a plain-HTTP route and a route
whose first key the upstream refuses (a retry with the fallback). `drive`
sends keep-alive requests on a few connections and on 16 at once, streams
(server-sent events), a refused model, an unknown route and the admin
endpoints.
"""
import http.client
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

REPLY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}'
# The key the upstreams refuse with 401, as a provider refuses a revoked one.
REFUSED_KEY = "sk-refused"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer leaves in one write, each event in one more, without Nagle's
    # wait for sidekey's delayed acknowledgement (40 ms a request).
    wbufsize = -1
    disable_nagle_algorithm = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("authorization") == f"Bearer {REFUSED_KEY}":
            self.answer(401, b'{"error":{"message":"Incorrect API key provided"}}')
        elif self.path.endswith("/stream"):
            self.stream()
        else:
            self.answer(200, REPLY)

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self):
        """20 server-sent events, one chunk each, as a streamed completion."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(20):
            event = b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


def upstream(d, tls=True, tls12=False):
    """An upstream on 127.0.0.1: plain HTTP unless `tls`; TLS 1.2 only if
    `tls12`, else TLS 1.3. Returns its port."""
    if tls and not os.path.exists(f"{d}/cert.pem"):
        certificate(d)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def certificate(d):
    """A throwaway CA (ca.pem) and a leaf for localhost (cert.pem, key.pem)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
         "-days", "1", "-subj", "/CN=workload CA"],
        ["req", *ec, "-keyout", f"{d}/key.pem", "-out", f"{d}/leaf.csr",
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", f"{d}/leaf.csr", "-CA", f"{d}/ca.pem", "-CAkey",
         f"{d}/ca.key", "-CAcreateserial", "-days", "1", "-out", f"{d}/cert.pem",
         "-extfile", "/dev/stdin"],
    ):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True,
                       input=b"subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")


def upstreams(d):
    """The three upstreams `config` routes to: TLS 1.3, TLS 1.2, plain."""
    return upstream(d), upstream(d, tls12=True), upstream(d, tls=False)


def config(d, ups):
    """Writes d/sidekey.toml routing to `ups`; returns (port, admin port)."""
    up, up12, plain = ups
    port, admin = free_port(), free_port()
    with open(f"{d}/key", "w") as f:
        f.write("sk-workload\n")
    with open(f"{d}/refused-key", "w") as f:
        f.write(f"{REFUSED_KEY}\n")
    with open(f"{d}/sidekey.toml", "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
                f'ca_file = "{d}/ca.pem"\n'
                f'[routes.openai]\ntype = "openai"\nupstream = "https://localhost:{up}"\n'
                f'key = "path::{d}/key"\n'
                f'[routes.models]\ntype = "openai"\nupstream = "https://localhost:{up12}"\n'
                f'key = {{ default = "path::{d}/key", fallback = "path::{d}/key" }}\n'
                f'models = ["gpt-4o-mini"]\n'
                f'[routes.plain]\ntype = "openai"\nupstream = "http://127.0.0.1:{plain}"\n'
                f'key = "path::{d}/key"\n'
                f'[routes.retry]\ntype = "openai"\nupstream = "https://localhost:{up}"\n'
                f'key = {{ default = "path::{d}/refused-key", fallback = "path::{d}/key" }}\n')
    return port, admin


def serve(d, ups, command, env, load):
    """Runs `command --config d/sidekey.toml` (a config routing to `ups`)
    with `env` under `load(port, admin)`, then stops it gracefully: SIGTERM,
    as the kubelet does (a profile or a trace is written as it exits)."""
    port, admin = config(d, ups)
    proc = subprocess.Popen([*command, "--config", f"{d}/sidekey.toml"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        load(port, admin)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def post(conn, path, body=BODY):
    conn.request("POST", path, body, {"content-type": "application/json",
                                      "authorization": "Bearer dummy",
                                      "connection": "keep-alive"})
    r = conn.getresponse()
    r.read()
    return r.status


def first(port):
    """Waits for sidekey's first answer to a request on the plain route."""
    deadline, last = time.monotonic() + 120, None
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            last = post(conn, "/openai/v1/chat/completions")
            if last == 200:
                break
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            sys.exit(f"sidekey did not answer 200 within 120 s (last: {last})")
        time.sleep(0.5)


def drive(port, admin, scale=1):
    """The load, `scale` times over on its busiest parts."""
    first(port)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
    for i in range(300 * scale):
        post(conns[i % 4], "/openai/v1/chat/completions")
    for i in range(100 * scale):
        post(conns[i % 4], "/models/v1/chat/completions")
    for i in range(50 * scale):
        post(conns[i % 4], "/plain/v1/chat/completions")
    for i in range(20 * scale):
        post(conns[i % 4], "/openai/v1/chat/completions/stream")
    for i in range(10 * scale):
        post(conns[i % 4], "/retry/v1/chat/completions")

    def client(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(20 * scale):
            post(conn, "/openai/v1/chat/completions")

    # Concurrent connections, as a busy pod (and the cost benchmark) has.
    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A new connection: the first ones may have idled past sidekey's
    # keep-alive timeout while the 16 ran.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    post(conn, "/models/v1/chat/completions", b'{"model":"gpt-5"}')
    post(conn, "/nowhere/v1/chat/completions")
    for path in ("/metrics", "/readyz", "/healthz"):
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
        c.request("GET", path)
        c.getresponse().read()
