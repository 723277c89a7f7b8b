"""No raw traceback on bad input, a bad path, a dead service or a full disk (issue 32 case 8).

One table: each row runs a subcommand in-process against one bad input and asserts the documented exit code
(docs/failure-modes.md: 1 machine or service, 2 bad input, 3 a gate) and that stderr holds exactly ONE
``safealign: ...`` line and no traceback. Failures raised from deep inside a stage (a dead service, a full
disk, nesting deeper than the parsers recurse) are injected where the stage's own work starts.
"""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import pytest

from safealign.cli import main

DEEP = "[" * 5000 + "]" * 5000
ENOSPC = OSError(errno.ENOSPC, "No space left on device")
REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _params(tmp: Path, text: str = "{}\n") -> str:
    path = tmp / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _input(tmp: Path, text: str | None = None) -> str:
    path = tmp / "in.jsonl"
    path.write_text(text if text is not None else json.dumps({"prompt": "hi"}) + "\n", encoding="utf-8")
    return str(path)


def _bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\ngrpo: {steps: *j}\n"


def _raise(exc: BaseException):
    def run(*args, **kwargs):
        raise exc

    return run


CASES = {
    # name: (argv builder, exit code, words in the one line, injection (module, attribute, exception) or None)
    "generate deep JSON row": (
        lambda t: ["generate", "--params", _params(t), "--model", "x", "--input", _input(t, DEEP + "\n"),
                   "--output", str(t / "out.jsonl")], 2, "nested too deeply", None),
    "generate registry URI with ..": (
        lambda t: ["generate", "--params", _params(t), "--model", "models:/../../etc@champion", "--input",
                   _input(t), "--output", str(t / "out.jsonl")], 2, "not a registry URI", None),
    "generate runs URI with ..": (
        lambda t: ["generate", "--params", _params(t), "--model", "runs:/" + "a" * 32 + "/../../x", "--input",
                   _input(t), "--output", str(t / "out.jsonl")], 2, "no '..'", None),
    "generate output is input": (
        lambda t: ["generate", "--params", _params(t), "--model", "x", "--input", _input(t), "--output",
                   str(t / "in.jsonl")], 2, "is the input file", None),
    "validate YAML alias bomb": (
        lambda t: ["validate", "--params", _params(t, _bomb())], 2, "YAML aliases", None),
    "validate bool steps": (
        lambda t: ["validate", "--params", _params(t), "--set", "grpo.steps=true"], 2, "grpo.steps", None),
    "validate zero weights": (
        lambda t: ["validate", "--params", _params(t), "--set", "aspects=[{name: safety, weight: 0}]"], 2,
        "aspects", None),
    "validate params not YAML": (
        lambda t: ["validate", "--params", _params(t, "grpo: [\n")], 2, "not valid YAML", None),
    "promote rollback without reason": (
        lambda t: ["promote", "--params", _params(t), "--rollback"], 2, "reason", None),
    "promote rollback tracking server down": (
        lambda t: ["promote", "--params", _params(t), "--set",
                   f"tracking.tracking_uri=http://127.0.0.1:{_dead_port()}", "--rollback", "--reason", "x"],
        1, "", None),
    "data build disk full": (
        lambda t: ["data", "build", "--params", _params(t), "--set", f"paths.data_dir={t / 'data'}"], 1,
        "disk full", ("safealign.data.build", "build_data", ENOSPC)),
    "data build service died": (
        lambda t: ["data", "build", "--params", _params(t)], 1, "service stopped answering",
        ("safealign.data.build", "build_data", REFUSED)),
    "data build database died (wrapped)": (
        lambda t: ["data", "build", "--params", _params(t)], 1, "service stopped answering",
        ("safealign.data.build", "build_data",
         RuntimeError("(psycopg2.OperationalError) server closed the connection unexpectedly"))),
    "data build nesting": (
        lambda t: ["data", "build", "--params", _params(t)], 2, "nested too deeply",
        ("safealign.data.build", "build_data", RecursionError("maximum recursion depth exceeded"))),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_and_the_documented_exit_code(case, tmp_path, monkeypatch, capsys):
    argv, code, words, inject = CASES[case]
    monkeypatch.chdir(tmp_path)
    if inject is not None:
        import importlib

        module, attribute, exc = inject
        monkeypatch.setattr(importlib.import_module(module), attribute, _raise(exc))
    assert main(argv(tmp_path)) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("safealign:")]
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and words in lines[0], err[-2000:]
    assert len(lines[0]) < 1000


def _tracked(tmp: Path):
    from safealign.config import load_settings

    return load_settings(None, [f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                                f"tracking.artifact_location={tmp / 'mlartifacts'}", "tracking.experiment=t"])


def test_a_failing_stage_closes_its_run_as_failed_and_repair_closes_a_killed_ones(tmp_path):
    """Stage runs were left RUNNING forever when a stage died (`promote --repair` closed only promote
    runs). A stage that raises ends FAILED; one whose process is gone is closed by fail_dead_stage_runs."""
    import subprocess
    import sys

    import mlflow

    from safealign import tracking

    settings = _tracked(tmp_path)
    with pytest.raises(RuntimeError, match="stage died"), tracking.stage_run(settings, "grpo") as run:
        raise RuntimeError("stage died")
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    exp = client.get_experiment_by_name("t").experiment_id
    killed = client.create_run(exp, tags={tracking.STAGE_OWNER_TAG: f"{socket.gethostname()}:{dead}"})
    alive = client.create_run(exp, tags={tracking.STAGE_OWNER_TAG: f"{socket.gethostname()}:{1}"})
    other_host = client.create_run(exp, tags={tracking.STAGE_OWNER_TAG: "elsewhere:12345"})
    assert tracking.fail_dead_stage_runs(client, exp) == [killed.info.run_id]
    assert client.get_run(killed.info.run_id).info.status == "FAILED"
    for kept in (alive, other_host):
        assert client.get_run(kept.info.run_id).info.status == "RUNNING"
