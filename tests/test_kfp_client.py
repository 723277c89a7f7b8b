"""`safealign pipeline submit|schedule` against a local HTTP server that speaks KFP's v2beta1 REST API.

The server is a real socket on 127.0.0.1 (a free port); kfp.Client talks to it exactly as it would to a
cluster, and the test asserts the request bodies: experiment, pipeline spec, parameters (params, data
version, tracking URI), cron, max concurrency 1 and no catch-up.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from safealign.cli import main
from safealign.config import load_settings
from safealign.errors import ConfigError, ServiceError
from safealign.kfp_client import normalize_cron, schedule_run, submit_run

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "align.yaml"


class FakeKfp:
    """Records requests; answers the v2beta1 endpoints kfp.Client calls for runs and recurring runs."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.experiments: dict[str, dict] = {}

    def handle(self, method: str, url: str, body: dict) -> tuple[int, dict]:
        self.requests.append((method, url, body))
        path = urlparse(url).path
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
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
            exp = {"experiment_id": f"exp-{len(self.experiments) + 1}", "display_name": body["display_name"]}
            self.experiments[body["display_name"]] = exp
            return 200, exp
        if path == "/apis/v2beta1/runs" and method == "POST":
            return 200, {**body, "run_id": "run-1", "state": "PENDING"}
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            return 200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"}
        return 404, {"error": f"unexpected {method} {path}"}

    def posts(self, path: str) -> list[dict]:
        return [b for m, u, b in self.requests if m == "POST" and urlparse(u).path == path]


@pytest.fixture()
def kfp_server():
    fake = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, payload = fake.handle(method, self.path, json.loads(raw) if raw else {})
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


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    # kfp.Client reads ~/.config/kfp/context.json; MLFLOW_TRACKING_URI would change the tracking parameter.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)


def _pipeline_spec_name(body: dict) -> str:
    return body["pipeline_spec"]["pipelineInfo"]["name"]


def test_submit_creates_experiment_and_run_with_parameters(kfp_server):
    settings = load_settings(ROOT / "params.yaml", ["grpo.steps=7"])
    result = submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="md5-abc")
    assert result["run_id"] == "run-1"

    (exp,) = kfp_server.posts("/apis/v2beta1/experiments")
    assert exp["display_name"] == settings.pipeline.experiment == "align"
    (run,) = kfp_server.posts("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    assert _pipeline_spec_name(run) == "align"
    assert run["pipeline_spec"] == yaml.safe_load(PACKAGE.read_text())
    args = run["runtime_config"]["parameters"]
    assert args["data_version"] == "md5-abc"
    assert args["tracking_uri"] == "sqlite:///mlflow.db"
    assert json.loads(args["params"])["grpo"]["steps"] == 7  # --set overrides travel with the run


def test_submit_reuses_existing_experiment(kfp_server):
    settings = load_settings(ROOT / "params.yaml")
    submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v1")
    submit_run(settings, host=kfp_server.host, package=PACKAGE, data_version="v2")
    assert len(kfp_server.posts("/apis/v2beta1/experiments")) == 1
    runs = kfp_server.posts("/apis/v2beta1/runs")
    assert [r["runtime_config"]["parameters"]["data_version"] for r in runs] == ["v1", "v2"]


def test_schedule_creates_recurring_run_max_concurrency_1_no_catchup(kfp_server):
    settings = load_settings(ROOT / "params.yaml")
    result = schedule_run(settings, cron="0 3 * * *", host=kfp_server.host, package=PACKAGE)
    assert result["recurring_run_id"] == "rr-1"
    (rr,) = kfp_server.posts("/apis/v2beta1/recurringruns")
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(rr["max_concurrency"]) == 1
    assert rr["no_catchup"] is True
    assert rr["mode"] == "ENABLE"
    assert rr["experiment_id"] == "exp-1"
    assert _pipeline_spec_name(rr) == "align"
    params = rr["runtime_config"]["parameters"]
    # Frozen parameters: the data version is resolved per run, so changed data busts the cache.
    assert params["data_version"] == ""
    assert json.loads(params["params"])["pipeline"]["experiment"] == "align"


def test_cli_schedule_prints_ids(kfp_server, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(["pipeline", "schedule", "--host", kfp_server.host, "--cron", "0 0 4 * * 1"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cron"] == "0 0 4 * * 1" and out["recurring_run_id"] == "rr-1"


def test_unreachable_host_is_a_service_error(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(ROOT / "params.yaml")
    with pytest.raises(ServiceError, match=str(port)):
        submit_run(settings, host=f"http://127.0.0.1:{port}", package=PACKAGE, data_version="x")


def test_missing_package_and_bad_cron_are_config_errors(kfp_server, tmp_path):
    settings = load_settings(ROOT / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        submit_run(settings, host=kfp_server.host, package=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="5 or 6 fields"):
        normalize_cron("every day")
    assert kfp_server.requests == []
