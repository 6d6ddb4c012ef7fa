#!/usr/bin/env python3
"""Run sidekey on the sidekey.toml the Helm chart renders in sidecar mode.

Renders helm/sidekey with ci/sidecar-values.yaml, overriding only where the
Secrets are mounted (a temp dir), the listen addresses (127.0.0.1:0) and one
route's upstream (a local plain-HTTP mock). Then it writes fake credentials
exactly where the chart would mount them, starts the binary on the rendered
config and checks: it serves, /healthz and /readyz answer 200, a request
with a dummy key reaches the mock with the real (fake) key, and SIGTERM
ends it with exit status 0.

Plain python3 + PyYAML; no pytest. Exit status 0 only if every check passed.
Every wait is bounded; all traffic stays on 127.0.0.1.

Environment:
  SIDEKEY_BIN   the sidekey binary (default target/debug/sidekey)
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sidekey"
VALUES = CHART / "ci" / "sidecar-values.yaml"
HELM = REPO / "scripts" / "helm"
# The route the request goes through; its upstream is pointed at the mock.
ROUTE = "openai"
MOCK_BODY = b'{"id":"chatcmpl-sidekey-test","object":"chat.completion","choices":[]}'

# Bounds on every wait, in seconds.
HELM_TIMEOUT = 300  # the first run may fetch helm
SERVING_TIMEOUT = 30
READY_TIMEOUT = 15
HTTP_TIMEOUT = 10
EXIT_TIMEOUT = 30

# Talk to 127.0.0.1 directly, whatever *_proxy variables say.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CheckFailed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


# --------------------------------------------------------------------- mock


class Recorder:
    """Requests the mock upstream received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []

    def add(self, req: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(req)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)


def start_mock(recorder: Recorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.add(
                {
                    "method": "POST",
                    "path": self.path,
                    # header names lower-cased; repeated headers kept
                    "headers": [(k.lower(), v) for k, v in self.headers.items()],
                    "body": body,
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(MOCK_BODY)))
            self.end_headers()
            self.wfile.write(MOCK_BODY)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ------------------------------------------------------------------ helpers


def http(method: str, url: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with HTTP.open(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def render(secrets_dir: Path, upstream: str) -> list[dict[str, Any]]:
    cmd = [
        str(HELM), "template", "sidekey-test", str(CHART),
        "-f", str(VALUES),
        "--set", f"secretsMountPath={secrets_dir}",
        "--set", "listen.proxy=127.0.0.1:0",
        "--set", "listen.admin=127.0.0.1:0",
        "--set", f"config.routes.{ROUTE}.upstream={upstream}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=HELM_TIMEOUT, cwd=REPO)
    if out.returncode != 0:
        raise CheckFailed(f"helm template failed ({out.returncode}):\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def locations(node: Any) -> list[str]:
    """Every "path::..." credential location anywhere in the config."""
    if isinstance(node, dict):
        return [loc for v in node.values() for loc in locations(v)]
    if isinstance(node, list):
        return [loc for v in node for loc in locations(v)]
    if isinstance(node, str) and node.startswith("path::"):
        return [node]
    return []


def write_credentials(config: dict[str, Any], values: dict[str, Any],
                      secrets_dir: Path) -> dict[str, str]:
    """Write a fake value at every path:: location, after checking that the
    chart mounts a file there (secretsMountPath/<credential name>/<file>).
    Returns {path: value}."""
    mounts: dict[str, set[str] | None] = {}
    for cred in values.get("credentials") or []:
        items = cred.get("items")
        mounts[cred["name"]] = (
            None if not items else {it.get("path") or it["key"] for it in items}
        )
    written: dict[str, str] = {}
    for loc in locations(config):
        path = Path(loc.removeprefix("path::"))
        check(path.is_absolute(), f"{loc}: not an absolute path")
        try:
            rel = path.relative_to(secrets_dir)
        except ValueError:
            raise CheckFailed(f"{loc}: not under secretsMountPath {secrets_dir}") from None
        check(len(rel.parts) == 2, f"{loc}: expected <secretsMountPath>/<name>/<file>")
        name, file = rel.parts
        check(name in mounts, f"{loc}: no `credentials` entry named {name!r} mounts it")
        files = mounts[name]
        check(files is None or file in files,
              f"{loc}: credential {name!r} projects only {sorted(files or [])}")
        value = f"sk-test-{name}-{file}-{secrets.token_hex(8)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
        written[str(path)] = value
    return written


class LogReader:
    """Reads the child's stderr on a thread so every wait can time out."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.all.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, message: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"no {message!r} log line within {timeout}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise CheckFailed(f"sidekey exited before logging {message!r}")
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                raise CheckFailed(f"not a JSON log line: {line!r}") from None
            # tracing's JSON puts fields at the top or under "fields".
            flat = {**event, **(event.get("fields") or {})}
            if flat.get("message") == message:
                return flat

    def dump(self) -> str:
        return "\n".join(self.all[-50:])


# --------------------------------------------------------------------- main


def run(tmp: Path, results: list[tuple[str, bool]]) -> None:
    def passed(name: str) -> None:
        results.append((name, True))
        print(f"ok   {name}")

    sidekey_bin = Path(os.environ.get("SIDEKEY_BIN", REPO / "target" / "debug" / "sidekey")).absolute()
    check(os.access(sidekey_bin, os.X_OK), f"SIDEKEY_BIN {sidekey_bin} is not an executable")

    recorder = Recorder()
    mock = start_mock(recorder)
    try:
        upstream = f"http://127.0.0.1:{mock.server_address[1]}"
        secrets_dir = tmp / "secrets"
        secrets_dir.mkdir()

        docs = render(secrets_dir, upstream)
        cms = [d for d in docs if d.get("kind") == "ConfigMap"]
        check(len(cms) == 1, f"expected one ConfigMap in sidecar mode, got {len(cms)}")
        kinds = sorted({d.get("kind") for d in docs})
        check(kinds == ["ConfigMap"], f"sidecar mode should render only a ConfigMap, got {kinds}")
        toml_text = cms[0]["data"]["sidekey.toml"]
        config = tomllib.loads(toml_text)
        check(config.get("listen") == "127.0.0.1:0", f"listen = {config.get('listen')!r}")
        check(config.get("admin_listen") == "127.0.0.1:0",
              f"admin_listen = {config.get('admin_listen')!r}")
        check("inbound_token" not in config, "sidecar mode must not set inbound_token")
        check(config["routes"][ROUTE].get("upstream") == upstream,
              f"routes.{ROUTE}.upstream = {config['routes'][ROUTE].get('upstream')!r}")
        passed("chart renders a loopback sidecar config")

        values = yaml.safe_load(VALUES.read_text())
        written = write_credentials(config, values, secrets_dir)
        route_key = config["routes"][ROUTE]["key"]
        default_loc = route_key["default"] if isinstance(route_key, dict) else route_key
        check(isinstance(default_loc, str), f"routes.{ROUTE}.key: unexpected shape {route_key!r}")
        real_key = written[default_loc.removeprefix("path::")]
        passed(f"every path:: location is a mounted credential file ({len(written)} files)")

        config_file = tmp / "sidekey.toml"
        config_file.write_text(toml_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEKEY_")}
        env["SIDEKEY_LOG"] = "info"
        proc = subprocess.Popen(
            [str(sidekey_bin), "--config", str(config_file), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, cwd=tmp,
        )
        logs = LogReader(proc.stderr)
        try:
            try:
                serving = logs.wait_for("sidekey is serving", SERVING_TIMEOUT)
            except CheckFailed as e:
                raise CheckFailed(f"{e}\n--- sidekey stderr ---\n{logs.dump()}") from None
            listen, admin = serving.get("listen"), serving.get("admin")
            check(isinstance(listen, str) and listen.startswith("127.0.0.1:"),
                  f"serving line has no loopback listen: {serving}")
            check(isinstance(admin, str) and admin.startswith("127.0.0.1:"),
                  f"serving line has no loopback admin: {serving}")
            passed(f"sidekey serves (proxy {listen}, admin {admin})")

            status, _ = http("GET", f"http://{admin}/healthz")
            check(status == 200, f"/healthz: {status}")
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                status, body = http("GET", f"http://{admin}/readyz")
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            check(status == 200, f"/readyz: {status} {body[:300]!r}")
            passed("/healthz and /readyz answer 200")

            request = json.dumps({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "ping"}],
            }).encode()
            status, body = http(
                "POST", f"http://{listen}/{ROUTE}/v1/chat/completions",
                headers={"Authorization": "Bearer dummy", "Content-Type": "application/json"},
                body=request,
            )
            check(status == 200, f"proxy answered {status}: {body[:300]!r}")
            check(body == MOCK_BODY, f"client got {body[:300]!r}, not the mock's body")
            got = recorder.snapshot()
            check(len(got) == 1, f"mock received {len(got)} requests, expected 1")
            up = got[0]
            check(up["path"] == "/v1/chat/completions", f"mock got path {up['path']!r}")
            auth = [v for k, v in up["headers"] if k == "authorization"]
            check(auth == [f"Bearer {real_key}"],
                  f"mock got Authorization {auth!r}, expected the key from the Secret file")
            leaked = [(k, v) for k, v in up["headers"] if "dummy" in v]
            check(not leaked, f"the client's dummy credential reached the upstream: {leaked}")
            check(up["body"] == request, "request body changed on the way")
            passed("request reaches the upstream with the Secret's key, not the dummy one")

            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"sidekey still running {EXIT_TIMEOUT}s after SIGTERM") from None
            check(rc == 0, f"exit status {rc} after SIGTERM\n--- sidekey stderr ---\n{logs.dump()}")
            passed("SIGTERM: exit status 0")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        mock.shutdown()
        mock.server_close()


def main() -> int:
    results: list[tuple[str, bool]] = []
    tmp = Path(tempfile.mkdtemp(prefix="sidekey-chart-test-"))
    try:
        run(tmp, results)
    except CheckFailed as e:
        results.append((str(e), False))
        print(f"FAIL {e}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = sum(1 for _, good in results if good)
    bad = len(results) - ok
    print(f"test_sidecar_config: {ok} passed, {bad} failed")
    return 0 if bad == 0 and ok > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
