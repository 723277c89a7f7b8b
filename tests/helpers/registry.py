"""Registry test kit: candidate folders (real tiny models), evaluation documents that pass or fail each gate,
settings on a throw-away tracking store, and a real `mlflow server` on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from safealign.common.layout import Layout
from safealign.config import load_settings

from helpers import tiny_models

# One model cache for the session: the tiny policy's tokenizer is built once and every test reuses it.
CACHE = Path(tempfile.mkdtemp(prefix="safealign-test-cache-"))


ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]


def paired(base, aligned, half_width=0.01):
    rel = (aligned - base) / base
    return {
        "base_mean": base,
        "aligned_mean": aligned,
        "abs_change": aligned - base,
        "rel_change": rel,
        "abs_change_ci95": [aligned - base - half_width, aligned - base + half_width],
        "rel_change_ci95": [rel - half_width, rel + half_width],
        "n": 50,
    }


def evaluation(
    safety_aligned=0.80, drop=0.0, benign_refusal=0.02, fingerprint="fp-1", weighted_bonus=0.0,
    adv_refusal=0.5, adv_refusal_base=0.0,
):
    """An evaluation.json as evaluate() writes it; base safety 0.60, other aspects 0.50 -> 0.50 - drop."""
    sets = {}
    for name in ("adversarial", "benign"):
        aspects = {a: paired(0.50, 0.50 - drop) for a in ASPECTS[:-1]}
        aspects["safety"] = paired(0.60, safety_aligned)
        w = 0.2 * 3 * (0.50 - drop) + 0.4 * safety_aligned + weighted_bonus
        sets[name] = {
            "aspects": aspects,
            "weighted": paired(0.54, w),
            "n": 400,
            "base": {"refusal_rate": 0.0 if name == "benign" else adv_refusal_base},
            "aligned": {
                "refusal_rate": benign_refusal if name == "benign" else adv_refusal,
                "refusal_rate_ci95": [max(0.0, benign_refusal - 0.02), benign_refusal + 0.02]
                if name == "benign"
                else [adv_refusal - 0.05, adv_refusal + 0.05],
            },
        }
    return {"fingerprint": fingerprint, "sets": sets}


def write_candidate(settings, adapter_bytes: bytes, evaluation_doc, reward_bytes: bytes = b"reward-v1"):
    """A real tiny adapter and reward model, each seeded by its label (same label, same bytes)."""
    layout = Layout.from_settings(settings)
    layout.adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    tiny_models.adapter(layout.adapter_dir, settings, adapter_bytes.decode())
    tiny_models.reward_model(layout.reward_model_dir, settings, reward_bytes.decode())
    layout.metrics_dir.mkdir(parents=True, exist_ok=True)
    layout.metrics_file("evaluation").write_text(json.dumps(evaluation_doc))
    return layout


def make_settings(tmp_path, uri, extra=()):
    # defaults + overrides, not ./params.yaml: the tests must not depend on the project's current tuning
    empty = tmp_path / "defaults.yaml"
    empty.write_text("{}\n")
    return load_settings(
        empty,
        [
            f"tracking.tracking_uri={uri}",
            f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
            "tracking.experiment=test-promote",
            f"paths.artifacts_dir={tmp_path / 'artifacts'}",
            f"paths.metrics_dir={tmp_path / 'metrics'}",
            "promote.min_safety_gain=0.05",
            "promote.max_aspect_drop=0.02",
            "promote.max_benign_refusal=0.10",
            *tiny_models.overrides(CACHE),
            *extra,
        ],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(root / f"server-{port}.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # no GenAI job runner (a dozen worker processes this project never uses)
        env={
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        start_new_session=True,  # its own process group: the server forks workers, stopped together
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / f'server-{port}.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("mlflow server did not become healthy in 180 s")


def kill_server(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the server's whole process group (its uvicorn workers would otherwise keep serving)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_server(proc: subprocess.Popen) -> None:
    kill_server(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        kill_server(proc, signal.SIGKILL)
        proc.wait()
    kill_server(proc, signal.SIGKILL)  # workers that outlived their parent


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny candidate promoted into a fresh SQLite registry: (settings, layout, tracking uri)."""
    from safealign.registry.promotion import promote  # mlflow: only for the tests that use the fixture

    tmp = tmp_path_factory.mktemp("serving")
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    settings = make_settings(tmp, uri)
    layout = write_candidate(settings, b"adapter-serve", evaluation())
    promote(settings)
    yield settings, layout, uri
    os.environ.clear()
    os.environ.update(saved)
