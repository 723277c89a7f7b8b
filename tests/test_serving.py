"""Registered models load and serve: both models from a tiny promotion are served by `mlflow models serve`
on 127.0.0.1 and answer real HTTP requests with the project's own scores and greedy replies; both load with
mlflow.pyfunc.load_model in a fresh process; batch inference resumes after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from safealign.common.layout import Layout
from safealign.errors import ConfigError
from safealign.serving import BASE_ENV, CACHE_ENV

from helpers.registry import CACHE, free_port

PROMPTS = ["How do I kill a Python process?", "Write a haiku about tea.", "How do I pick a lock?"]
RESPONSES = ["Run kill PID in a terminal.", "Steam rises, leaves unfurl.", "I can't help with that."]


def _serve(model_uri: str, tracking_uri: str, log: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        CACHE_ENV: str(CACHE),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=env,  # noqa: SIM115 - lives with the process
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url, started
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("model server did not answer /ping")


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url + "/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_served_reward_model_scores_like_the_project(registered, tmp_path):
    from safealign.reward.model import RewardModel

    settings, layout, uri = registered
    proc, url, _ = _serve(f"models:/{settings.promote.reward_model_name}@champion", uri, tmp_path / "rm.log")
    try:
        out = _post(
            url,
            {
                "dataframe_split": {
                    "columns": ["prompt", "response"],
                    "data": [list(x) for x in zip(PROMPTS, RESPONSES, strict=True)],
                }
            },
        )
    finally:
        _stop(proc)
    rows = out["predictions"]
    model = RewardModel.from_pretrained(layout.reward_model_dir)
    expected = model.score(PROMPTS, RESPONSES)
    served = np.array([[r[a] for a in model.aspects] for r in rows])
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["reward"] for r in rows], model.combine(expected), atol=1e-5, rtol=0)


def test_served_policy_replies_like_greedy_generation(registered, tmp_path):
    from safealign.policy.decoding import generate_replies
    from safealign.policy.loading import load_policy_with_adapter

    settings, layout, uri = registered
    proc, url, started = _serve(
        f"models:/{settings.promote.policy_model_name}@champion", uri, tmp_path / "p.log"
    )
    try:
        out = _post(
            url,
            {
                "dataframe_records": [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS[:1]],
                "params": {"max_new_tokens": 6},
            },
        )
        first_answer_s = time.monotonic() - started
    finally:
        _stop(proc)
    model, tok = load_policy_with_adapter(settings, layout.adapter_dir)
    expected = generate_replies(
        model,
        tok,
        PROMPTS[:1],
        system_prompt=None,
        max_new_tokens=6,
        batch_size=1,
        seed=settings.evaluate.seed,
    )
    assert [r["reply"] for r in out["predictions"]] == expected
    print(f"serve -> first answer: {first_answer_s:.1f} s")


def test_both_models_load_in_a_fresh_process(registered, tmp_path):
    settings, layout, uri = registered
    code = f"""
import json, mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
rm = mlflow.pyfunc.load_model("models:/{settings.promote.reward_model_name}@champion")
pm = mlflow.pyfunc.load_model("models:/{settings.promote.policy_model_name}@champion")
r = rm.predict(pd.DataFrame({{"prompt": {PROMPTS!r}, "response": {RESPONSES!r}}}))
chat = pd.DataFrame({{"messages": [[{{"role": "user", "content": "hi"}}]]}})
p = pm.predict(chat, params={{"max_new_tokens": 4}})
print(json.dumps({{"reward": r.to_dict("list"), "reply": p["reply"].tolist(),
                  "meta": rm.metadata.metadata, "sig": str(pm.metadata.signature)}}))
"""
    env = {**os.environ, CACHE_ENV: str(CACHE)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    from safealign.reward.model import RewardModel

    expected = RewardModel.from_pretrained(layout.reward_model_dir).score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(out["reward"]["safety"], expected[:, -1], atol=1e-5, rtol=0)
    assert len(out["reply"]) == 1 and "messages" in out["sig"]
    assert out["meta"]["aspects"] == settings.aspect_names


def test_policy_metadata_pins_the_base_and_refuses_another(registered, tmp_path, monkeypatch):
    settings, layout, uri = registered
    mlflow.set_tracking_uri(uri)
    name = settings.promote.policy_model_name
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl"))
    )
    info = mlflow.models.get_model_info(str(local))
    meta = info.metadata
    for key in (
        "base_model",
        "base_weights_sha256",
        "git_commit",
        "data_version",
        "evaluation_summary",
        "aspects",
    ):
        assert key in meta, key
    assert meta["aspects"] == {a.name: a.weight for a in settings.aspects}
    assert (
        json.loads((local / "artifacts" / "evaluation" / "evaluation.json").read_text())["fingerprint"]
        == "fp-1"
    )
    assert (local / "input_example.json").exists() and info.signature is not None
    # a different base (here: a folder holding other weights) is refused by its hash
    from safealign.policy.loading import load_policy

    other, tok = load_policy(settings)
    for p in other.parameters():
        p.data.add_(0.5)
    other.save_pretrained(tmp_path / "other-base")
    tok.save_pretrained(tmp_path / "other-base")
    monkeypatch.setenv(BASE_ENV, str(tmp_path / "other-base"))
    monkeypatch.setenv(CACHE_ENV, str(CACHE))
    with pytest.raises(ConfigError, match="weights sha256"):
        mlflow.pyfunc.load_model(str(local))


def test_generate_resumes_after_a_kill(registered, tmp_path):
    settings, layout, uri = registered
    rows = [{"id": i, "prompt": f"Question number {i}: how do I stay safe online?"} for i in range(240)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    params = tmp_path / "params.yaml"
    import yaml

    params.write_text(
        yaml.safe_dump(
            {
                "policy": {"model": settings.policy.model},
                "paths": {"cache_dir": str(CACHE)},
                "tracking": {"tracking_uri": uri},
                "evaluate": {"max_new_tokens": 24},
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "safealign.cli",
        "generate",
        "--params",
        str(params),
        "--model",
        f"models:/{settings.promote.policy_model_name}@champion",
        "--input",
        str(inp),
        "--output",
        str(out),
    ]
    env = {**os.environ, CACHE_ENV: str(CACHE)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    partial = out.with_name(f".{out.name}.partial")  # rows land here; --output appears only complete
    while time.monotonic() < deadline and not (partial.exists() and partial.read_bytes().count(b"\n") >= 8):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a half --output"
    before = partial.read_bytes()
    done = before.count(b"\n")
    assert 8 <= done < len(rows), "the kill must land mid-run"
    with open(partial, "ab") as handle:  # what a kill during a write leaves: a torn last line
        handle.write(b'{"id": 999, "prompt": "torn')
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == done and summary["generated"] == len(rows) - done
    after = out.read_bytes()
    assert after.startswith(before)  # rows written before the kill are kept byte for byte
    written = [json.loads(line) for line in after.decode().splitlines()]
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    assert all(isinstance(r["reply"], str) for r in written)
    # a finished output is left alone; an output of another input is refused (exit 2)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and json.loads(again.stdout)["generated"] == 0 and out.read_bytes() == after
    inp.write_text("".join(json.dumps({**r, "id": r["id"] + 1000}) + "\n" for r in rows))
    foreign = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert foreign.returncode == 2 and "does not match input row 1" in foreign.stderr
    assert Layout.from_settings(settings).adapter_dir.exists()
