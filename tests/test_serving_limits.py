"""Serving limits on a real `mlflow models serve` of a registered tiny policy (test_serving.py's fixture):
caps on max_new_tokens and on the prompt (the model's positions) answered 400 with the limit named, no
stack trace in any error body, a generation stopped at the request deadline (504 from the policy, not
MLflow's bare one, and the worker free again), and SIGTERM ending the server within 10 s mid-generation.

Before: `max_new_tokens: 100000` got MLflow's 504 after 60 s while generation ran on for minutes,
SIGTERM waited for it, a 22,449-token prompt to a 2,048-position model got 200, and 400s carried the
Python traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from safealign.serving import CACHE_ENV

from helpers.registry import CACHE, free_port

MESSAGE = [{"role": "user", "content": "How do I kill a Python process?"}]
# Enough generation to outlast any deadline here: 64 rows x serve.max_new_tokens_cap tokens (a tiny model
# does 512 tokens for one row in a few seconds on this machine; this is minutes).
LONG_ROWS = 64


def _request(messages: list[dict], max_new_tokens: int, rows: int = 1) -> dict:
    records = [{"messages": messages}] * rows
    return {"dataframe_records": records, "params": {"max_new_tokens": max_new_tokens}}


def _serve(settings, uri: str, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, CACHE_ENV: str(CACHE),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    model = f"models:/{settings.promote.policy_model_name}@champion"
    proc = subprocess.Popen(  # noqa: S603 - our own argv
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model,
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1", *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("model server did not answer /ping")


def _post(url: str, payload: dict | bytes, timeout: float = 600) -> tuple[int, str]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url + "/invocations", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _no_trace(body: str) -> None:
    assert "Traceback" not in body and "stack_trace" not in body and 'File "' not in body, body[:2000]


def test_caps_answer_400_with_the_limit_and_no_stack_trace(registered, tmp_path):  # noqa: F811
    settings, _layout, uri = registered
    proc, url = _serve(settings, uri, tmp_path / "serve.log")
    try:
        status, body = _post(url, _request(MESSAGE, 100000))
        assert status == 400, body
        assert "max_new_tokens is 100000" in body and f"1 to {settings.serve.max_new_tokens_cap}" in body
        _no_trace(body)
        # 22,449 tokens to a model with 2,048 positions: refused before any generation
        long = [{"role": "user", "content": "word " * 22449}]
        started = time.monotonic()
        status, body = _post(url, _request(long, 8))
        assert status == 400 and "reads 2048 positions" in body and "at most 2040 tokens" in body, body[-500:]
        assert time.monotonic() - started < 30
        _no_trace(body)
        # a malformed chat (the last turn is not the user's) is a 400 without a traceback too
        bad = [{"role": "assistant", "content": "hi"}]
        status, body = _post(url, _request(bad, 4))
        assert status == 400 and "must end with a user message" in body, body
        _no_trace(body)
        status, body = _post(url, _request(MESSAGE, 4))
        assert status == 200 and len(json.loads(body)["predictions"]) == 1  # within the limits: served
    finally:
        _stop(proc)


def test_request_deadline_stops_the_generation(registered, tmp_path):  # noqa: F811
    settings, _layout, uri = registered
    log = tmp_path / "serve.log"
    proc, url = _serve(settings, uri, log, "--timeout", "2")
    try:
        cap = settings.serve.max_new_tokens_cap
        started = time.monotonic()
        status, body = _post(url, _request(MESSAGE, cap, LONG_ROWS))
        took = time.monotonic() - started
        assert status == 504 and "stopped at the request deadline" in body, (status, body[:500])
        _no_trace(body)
        assert took < 2 + 3, took  # answered at 90% of the timeout (plus one batch step): it ended there
        # the worker is free: a small request is answered at once, not after the long one
        status, body = _post(url, _request(MESSAGE, 2))
        assert status == 200, body
        assert "generation stopped at the request deadline" in log.read_text()
    finally:
        _stop(proc)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (`mlflow models serve` runs uvicorn as its child)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_sigterm_mid_generation_exits_within_10_s(registered, tmp_path):  # noqa: F811
    """SIGTERM to `mlflow models serve` (it dies; the kernel sends its uvicorn child SIGTERM, MLflow's
    PR_SET_PDEATHSIG): the scoring server stops the generation at its next token, answers the request
    in flight 503 and exits, well within 10 s, with MLflow's default 60 s timeout."""
    settings, _layout, uri = registered
    log = tmp_path / "serve.log"
    proc, url = _serve(settings, uri, log)
    (server,) = _children(proc.pid)  # uvicorn, the process that generates
    answer: dict[str, tuple[int, str]] = {}
    payload = _request(MESSAGE, settings.serve.max_new_tokens_cap, LONG_ROWS)
    client = threading.Thread(target=lambda: answer.setdefault("r", _post(url, payload, timeout=120)))
    try:
        client.start()
        time.sleep(3)  # the generation is running (64 x 512 tokens take minutes here)
        assert "r" not in answer
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=30)
        while _alive(server) and time.monotonic() - started < 60:
            time.sleep(0.1)
        took = time.monotonic() - started
        client.join(timeout=30)
        print(f"SIGTERM -> scoring server gone in {took:.1f} s")
        assert took < 10, took
        status, body = answer.get("r", (0, "no answer"))
        assert status == 503 and "shutting down" in body, (status, body[:300])
        _no_trace(body)
        assert "generation stopped: the server is shutting down" in log.read_text()
    finally:
        _stop(proc)
        if _alive(server):
            os.kill(server, 9)
