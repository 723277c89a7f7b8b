"""A fake Kubeflow Pipelines API on a real socket (127.0.0.1): records what kfp.Client sends and answers the
v2beta1 endpoints it calls for runs and recurring runs, with an optional multi-user token check."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest


class FakeKfp:
    """Records requests; answers the v2beta1 endpoints kfp.Client calls for runs and recurring runs."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.headers: list[dict[str, str]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        # Multi-user mode: token -> namespaces it may use (None: single-user, no auth).
        self.tokens: dict[str, set[str]] | None = None

    def _auth(self, path: str, url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict] | None:
        if self.tokens is None or path == "/apis/v2beta1/healthz":
            return None
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token not in self.tokens:
            msg = "Unauthenticated: failed to authenticate the request"
            return 401, {"error": msg, "code": 16, "message": msg, "details": []}
        namespace = body.get("namespace") or parse_qs(urlparse(url).query).get("namespace", [None])[0]
        if path.startswith("/apis/v2beta1/runs/"):  # a run is authorized by its experiment's namespace
            body = self.runs.get(path.split("/")[-1], {})
        if path.startswith(("/apis/v2beta1/runs", "/apis/v2beta1/recurringruns")):
            wanted = body.get("experiment_id")
            exp = next((e for e in self.experiments.values() if e["experiment_id"] == wanted), {})
            namespace = exp.get("namespace")
        if namespace not in self.tokens[token]:
            msg = f"PermissionDenied: user is not authorized to access namespace {namespace!r}"
            return 403, {"error": msg, "code": 7, "message": msg, "details": []}
        return None

    def handle(
        self, method: str, url: str, body: dict, headers: dict[str, str] | None = None
    ) -> tuple[int, dict]:
        self.requests.append((method, url, body))
        self.headers.append(headers or {})
        path = urlparse(url).path
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": self.tokens is not None}
        denied = self._auth(path, url, body, headers or {})
        if denied:
            return denied
        if path == "/apis/v2beta1/experiments" and method == "GET":
            flt = parse_qs(urlparse(url).query).get("filter", ["{}"])[0]
            wanted = [
                p.get("stringValue", p.get("string_value"))
                for p in json.loads(flt).get("predicates", [])
                if p.get("key") == "display_name"
            ]
            hits = [e for name, e in self.experiments.items() if name in wanted]
            return 200, ({"experiments": hits, "total_size": len(hits)} if hits else {})
        if path == "/apis/v2beta1/experiments" and method == "POST":
            exp = {"experiment_id": f"exp-{len(self.experiments) + 1}", "display_name": body["display_name"],
                   "namespace": body.get("namespace")}
            self.experiments[body["display_name"]] = exp
            return 200, exp
        if path == "/apis/v2beta1/runs" and method == "POST":
            run = {**body, "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING",
                   "created_at": "2026-01-01T00:00:00Z"}
            self.runs[run["run_id"]] = run
            return 200, run
        if path.startswith("/apis/v2beta1/runs/") and method == "GET" and path.split("/")[-1] in self.runs:
            return 200, self.runs[path.split("/")[-1]]
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            return 200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED",
                         "created_at": "2026-01-01T00:00:00Z"}
        return 404, {"error": f"unexpected {method} {path}"}

    def posts(self, path: str) -> list[dict]:
        return [b for m, u, b in self.requests if m == "POST" and urlparse(u).path == path]


@pytest.fixture()
def kfp_server() -> Iterator[FakeKfp]:
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(method, self.path, json.loads(raw) if raw else {}, headers)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
