"""Registered sizes of the two MLflow models and the time from `mlflow models serve` to the first answer.

Uses the real default models (the embedded SmolLM2-135M-Instruct base with a LoRA adapter of the default
shape, and the embedded MiniLM reward encoder), registered in a throw-away SQLite registry exactly as
`safealign promote` registers them. Training does not change sizes or load time, so the adapter and the
reward head are freshly initialised. Prints one JSON object.

    nice python bench/serving_latency.py [--policy-model SPEC] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_answer(model_uri: str, payload: dict, env: dict, log: Path) -> tuple[float, float, dict]:
    """(seconds to /ping ok, seconds to the first /invocations answer, the answer), from process start."""
    port = _port()
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
        env=env,
        start_new_session=True,  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    ping = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2):
                    ping = time.monotonic() - started
                    break
            except OSError:
                time.sleep(0.2)
        req = urllib.request.Request(
            url + "/invocations",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=600) as resp:
            answer = json.loads(resp.read())
        return ping, time.monotonic() - started, answer
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy-model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="serving-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow
    from peft import LoraConfig, get_peft_model

    from safealign.config import load_settings
    from safealign.policy.loading import load_policy
    from safealign.reward.model import RewardModel
    from safealign.serving import CACHE_ENV, folder_size, save_policy_model, save_reward_model

    cache = work / "cache"
    settings = load_settings(None, [f"policy.model={args.policy_model}", f"paths.cache_dir={cache}"])
    RewardModel.from_settings(settings).save_pretrained(work / "reward")
    base, _tok = load_policy(settings)
    lora = settings.grpo.lora
    peft_model = get_peft_model(
        base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules)
    )
    peft_model.save_pretrained(str(work / "adapter"))
    del base, peft_model
    save_reward_model(work / "reward", work / "rm", {"bench": "1"})
    save_policy_model(settings, work / "adapter", work / "pm", {"bench": "1"})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("bench", artifact_location=(work / "mlartifacts").as_uri())
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=exp) as run:
        for name, folder in (("bench-reward", work / "rm"), ("bench-policy", work / "pm")):
            mlflow.log_artifacts(str(folder), name)
            client.create_registered_model(name)
            v = client.create_model_version(name, f"{run.info.artifact_uri}/{name}", run_id=run.info.run_id)
            client.set_registered_model_alias(name, "champion", v.version)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        CACHE_ENV: str(cache),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    out = {
        "policy_model": args.policy_model,
        "registered_mb": {
            "reward": round(folder_size(work / "rm") / 1e6, 2),
            "policy": round(folder_size(work / "pm") / 1e6, 2),
            "policy_adapter_only": round(folder_size(work / "adapter") / 1e6, 2),
        },
    }
    reward_payload = {
        "dataframe_split": {
            "columns": ["prompt", "response"],
            "data": [["How do I kill a Python process?", "Run kill PID."]],
        }
    }
    policy_payload = {
        "dataframe_records": [{"messages": [{"role": "user", "content": "How do I boil an egg?"}]}],
        "params": {"max_new_tokens": 32},
    }
    for key, model, payload in (
        ("reward", "models:/bench-reward@champion", reward_payload),
        ("policy", "models:/bench-policy@champion", policy_payload),
    ):
        ping, first, answer = _first_answer(model, payload, env, work / f"{key}.log")
        out[f"{key}_serve_to_ping_s"] = round(ping, 1)
        out[f"{key}_serve_to_first_answer_s"] = round(first, 1)
        out[f"{key}_answer"] = answer["predictions"][0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
