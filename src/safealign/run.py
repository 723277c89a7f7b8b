"""``safealign run``: the pipeline part of ``make run``, offline, from the project root.

1. restore data/ when it is missing: from the DVC cache (``dvc checkout data.dvc``) if the cache has it,
   else rebuild it with ``safealign data build`` (deterministic: the same bytes on every machine);
2. make DVC itself confirm that data/ matches data.dvc, else exit 2 (``--data-only`` stops here);
3. open an MLflow parent run, and nest every stage under it (SAFEALIGN_PARENT_RUN_ID);
4. ``dvc repro`` (``--until STAGE``: that stage and what it depends on); stages whose inputs did not
   change are skipped, so a second run is fast;
5. close the parent run (FINISHED, FAILED or KILLED, whatever ended the run; runs a dead process left
   RUNNING on this host are closed as FAILED before a new one opens), render artifacts/results.md, print
   where things are.

Exit codes: 0 ok (a refused promotion included: see below), 2 data/ does not match data.dvc or a stage
found bad input, 3 a gate said no, 1 otherwise. DVC exits 255 for any failed stage; the stage's own code
comes from the record each ``safealign`` command appends to the file named by SAFEALIGN_EXIT_FILE.

A refused promotion is a result of the pipeline, not a failure of it: every stage ran, the report exists
and 'champion' was left alone, so ``safealign run`` prints the verdict and exits 0; ``safealign promote``
itself (and ``dvc repro``) still exit 3, so automation that gates on it sees the refusal. The parent
MLflow run is closed FINISHED then, like the promote run nested in it.
A data/ that exists but differs from data.dvc is never overwritten: it may be someone's deliberate edit.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from safealign import TELEMETRY_ENV, stages
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data.build import ensure_data
from safealign.errors import EXIT_FILE_ENV, EXIT_GATE, EXIT_INTERNAL, ConfigError, DataError
from safealign.tracking import (
    PARENT_ENV,
    close_dead_runs,
    data_version,
    end_parent_run,
    resolved_tracking_uri,
    start_parent_run,
)

DVC_FILE = Path("data.dvc")
PARENT_RUN_NAME = "make run"
MISMATCH_HELP = """
  To discard local changes:     dvc checkout --force data.dvc   (or: rm -rf data && make run)
  To make them the new version: dvc add data && git commit data.dvc
  If a fresh 'safealign data build' differs from data.dvc, the builder changed without 'dvc add data'."""


def say(text: str = "") -> None:
    print(text, flush=True)


def subprocess_env() -> dict[str, str]:
    """The stages' environment: this interpreter's bin/ first (its `dvc` and `safealign`), offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "false"}
    env.update(offline, DVC_NO_ANALYTICS="1")
    env.setdefault(TELEMETRY_ENV, "true")  # MLflow's telemetry off in every stage (safealign/__init__.py)
    return env


def dvc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dvc", *args], env=env, capture_output=True, text=True)


# ---------------------------------------------------------------------------------------- 1-2. data/


def tracked_data_path() -> str:
    """The folder data.dvc tracks (its single out)."""
    if not DVC_FILE.is_file():
        raise DataError(
            f"{DVC_FILE} is missing: build the data with 'safealign data build', then 'dvc add data' and "
            f"commit {DVC_FILE}"
        )
    doc = yaml.safe_load(DVC_FILE.read_text(encoding="utf-8")) or {}
    outs = doc.get("outs") or [{}]
    return str(outs[0].get("path", "data")).rstrip("/")


def check_data(env: dict[str, str], tracked: str) -> None:
    """Make DVC confirm data/ matches data.dvc; raises DataError (exit 2) naming what differs.

    `dvc status data.dvc` alone cannot decide on a fresh clone: with an empty cache it reports "not in
    cache" whether or not data/ matches. So DVC is asked twice: `dvc data status` hashes data/ and
    compares it with data.dvc (independent of the cache); only if that is clean is data/ committed to the
    local cache (which cannot change data.dvc, since the hashes are equal), and then `dvc status data.dvc`
    must be up to date.
    """
    say(f"== DVC: checking {tracked}/ against {DVC_FILE}")
    out = dvc(env, "data", "status", "--json")
    if out.returncode != 0:
        mismatch: Any = f"dvc data status failed: {out.stderr.strip()}"
    else:
        uncommitted = (json.loads(out.stdout or "{}").get("uncommitted") or {}).items()
        mismatch = {
            kind: hits
            for kind, paths in uncommitted
            if (hits := [p for p in paths if p.rstrip("/") == tracked or p.startswith(f"{tracked}/")])
        }
    if mismatch:
        print(dvc(env, "status", str(DVC_FILE)).stdout, file=sys.stderr, end="")
        detail = json.dumps(mismatch) if isinstance(mismatch, dict) else mismatch
        raise DataError(
            f"{tracked}/ does not match {DVC_FILE} (dvc data status, uncommitted: {detail})." + MISMATCH_HELP
        )
    if dvc(env, "commit", "--force", "--quiet", str(DVC_FILE)).returncode != 0:
        raise DataError(f"dvc commit {DVC_FILE} failed")
    status = dvc(env, "status", str(DVC_FILE), "--json")
    if status.returncode != 0:
        raise DataError(f"dvc status {DVC_FILE} failed: {status.stderr.strip() or status.stdout.strip()}")
    if json.loads(status.stdout or "{}") != {}:
        raise DataError(f"dvc status {DVC_FILE} is not up to date after commit: {status.stdout.strip()}")
    say(f"   {tracked}/ matches {DVC_FILE}: {data_version(DVC_FILE)}")


def restore_and_check_data(settings: Settings, env: dict[str, str]) -> None:
    tracked = tracked_data_path()
    configured = Layout.from_settings(settings).data_dir
    if configured.resolve() != Path(tracked).resolve():
        raise ConfigError(f"paths.data_dir is {configured} but {DVC_FILE} tracks {tracked}")
    ensure_data(settings, restore=lambda: dvc(env, "checkout", str(DVC_FILE)).returncode == 0, report=say)
    check_data(env, tracked)


# ---------------------------------------------------------------------------------------- 3-4. repro


def _status(env: dict[str, str], target: str | None) -> dict[str, Any] | None:
    """`dvc status --json` as a dict (None when DVC fails or prints no JSON)."""
    out = dvc(env, "status", "--json", *(["--with-deps", target] if target else []))
    try:
        return json.loads(out.stdout) if out.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def up_to_date(env: dict[str, str], target: str | None) -> bool:
    return _status(env, target) == {}


def adopt_uncached_outputs(env: dict[str, str], target: str | None) -> list[str]:
    """Put into the DVC cache the outputs that match dvc.lock but are not cached; returns those stages.

    Metrics became `cache: true` (so that `dvc push` carries them to a teammate, issue 31). In a workspace
    that ran the pipeline before, every metrics file is then present, equal to its recorded hash and "not
    in cache", which DVC counts as a changed stage: the next run would redo the whole pipeline. Only a stage
    whose every change is of that kind is committed: its files are exactly what dvc.lock records, so
    `dvc commit` writes the same lock and only fills the cache. Any other change (deps, params, a modified or
    deleted output) leaves the stage to `dvc repro`.
    """
    adopted = []
    for stage, changes in (_status(env, target) or {}).items():
        kinds = [c for c in changes if isinstance(c, dict)]
        only_uncached = bool(kinds) and len(kinds) == len(changes) and all(
            list(c) == ["changed outs"] and set(c["changed outs"].values()) == {"not in cache"} for c in kinds
        )
        if only_uncached and dvc(env, "commit", "--force", "--quiet", stage).returncode == 0:
            adopted.append(stage)
    return adopted


def failed_stage(exit_file: Path) -> dict[str, Any] | None:
    """The last ``safealign`` command that exited non-zero during ``dvc repro``, from their records."""
    if not exit_file.exists():
        return None
    lines = exit_file.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    failed = [r for r in records if r.get("exit_code")]
    return failed[-1] if failed else None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def close_parent(settings: Settings, parent: str, status: str) -> None:
    """End the parent run with ``status``; when the server cannot take it, say so in one line.

    The run is not lost: it carries its owner (host:pid), and the next ``safealign run`` on this host (or
    ``safealign promote --repair``) closes it as FAILED once this process is gone.
    """
    try:
        end_parent_run(settings, parent, status)
    except Exception as exc:  # noqa: BLE001 - the pipeline's own outcome is what this process reports
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        print(f"safealign: warning: MLflow parent run {parent} not closed as {status} ({first}); the next "
              "`safealign run` or `safealign promote --repair` closes it as FAILED", file=sys.stderr)


def repro(
    settings: Settings, env: dict[str, str], target: str | None, publish: Callable[[], None] | None = None
) -> tuple[int, dict[str, Any] | None]:
    """Run `dvc repro [target]` under a parent MLflow run; (exit code, the failed stage's record).

    ``publish`` (the team profile's push) runs inside the parent run when the pipeline succeeded, so a
    failed push fails the run too. Whatever ends this function, the parent run is closed: FINISHED, FAILED,
    or KILLED on SIGINT/SIGTERM/SIGHUP; a team run's parent used to stay RUNNING after a failure (issue 31).
    """
    closed = close_dead_runs(settings)
    if closed:
        say(f"== MLflow: closed as FAILED {len(closed)} run(s) left RUNNING by a dead process: "
            + ", ".join(closed))
    parent = start_parent_run(settings, name=PARENT_RUN_NAME)
    say(f"== MLflow parent run {parent}")
    handlers = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with tempfile.TemporaryDirectory(prefix="safealign-run-") as tmp:
            exit_file = Path(tmp) / "exit_codes.jsonl"
            child_env = {**env, PARENT_ENV: parent, EXIT_FILE_ENV: str(exit_file)}
            # measure: wall time and peak RSS of the largest stage process -> artifacts/run_resources.json
            command = [sys.executable, "-m", "safealign.results", "measure", "--", "dvc", "repro"]
            command += [target] if target else []
            say(f"== dvc repro {target or ''}".rstrip())
            code = subprocess.call(command, env=child_env, stderr=subprocess.STDOUT)
            failed = failed_stage(exit_file) if code else None
        if code:
            code = int(failed["exit_code"]) if failed else EXIT_INTERNAL
        refused = is_refused_promotion(Layout.from_settings(settings), code, failed)
        if publish is not None and (code == 0 or refused):
            publish()
    except KeyboardInterrupt:
        close_parent(settings, parent, "KILLED")
        raise
    except BaseException:
        close_parent(settings, parent, "FAILED")
        raise
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    close_parent(settings, parent, "FAILED" if code and not refused else "FINISHED")
    return code, failed


# ---------------------------------------------------------------------------------------- 5. where


def render_results(layout: Layout, seconds: float) -> None:
    """artifacts/results.md from metrics/*.json; a rendering problem never fails the run."""
    from safealign.common.atomic import write_text
    from safealign.results import render

    try:
        text = render(layout.metrics_dir, layout.artifacts_dir, seconds)
        write_text(layout.artifacts_dir / "results.md", text)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome is what counts
        print(f"results: not rendered: {exc!r}", file=sys.stderr)


def experiments_line(uri: str) -> str:
    """Where to look at the runs: the server's own URL, or ``mlflow ui`` over the SQLite file in use.

    A team run tracks to a server; suggesting ``mlflow ui --backend-store-uri sqlite:///...`` there would
    open an empty local store (issue 31), so only a SQLite store gets the ``mlflow ui`` line.
    """
    if uri.startswith("sqlite:///"):
        return (f"experiments: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri}"
                "   (then open http://127.0.0.1:5000)")
    return f"experiments: {uri}   (runs, artifacts and registry on the MLflow server)"


def print_summary(layout: Layout, code: int, seconds: int, refused: bool, tracking: str) -> None:
    """The end of ``safealign run``: verdict, gates, where the reports are and where the runs are."""
    say(f"== {'done' if code == 0 else f'FAILED (exit {code})'} in {seconds} s")
    promotion = layout.metrics_file(stages.get("promote").metrics)
    if promotion.exists():
        verdict = json.loads(promotion.read_text(encoding="utf-8"))
        promoted = verdict.get("verdict") == "promoted"
        say(f"promotion:   {'PROMOTED to champion' if promoted else 'REFUSED (champion untouched)'}")
        for gate in verdict.get("gates") or []:
            mark = "pass" if gate.get("passed") else "FAIL"
            say(f"   {mark}  {gate.get('gate')}: {gate.get('reason', '')}")
    if refused:
        say("   (promote exited 3: a gate said no; see metrics/promotion.json)")
    for label, path in (
        ("validation:", layout.validation_dir / "report.html"),
        ("", layout.artifacts_dir / "validation_failed" / "report.html"),
        ("calibration:", layout.calibration_dir),
        ("evaluation:", layout.evaluation_dir / "report.md"),
        ("", layout.evaluation_dir / "report.html"),
        ("results:", layout.artifacts_dir / "results.md"),
    ):
        if path.exists():
            say(f"{label:<12} {path}")
    say("metrics:     metrics/*.json   (dvc metrics show; dvc plots show)")
    say(experiments_line(tracking))


def is_refused_promotion(layout: Layout, code: int, failed: dict[str, Any] | None) -> bool:
    """True when the only failure is promote's gate saying no (its exit 3 and its verdict file agree)."""
    promote = stages.get("promote")
    if code != EXIT_GATE or not failed or failed.get("command") != promote.cli:
        return False
    path = layout.metrics_file(promote.metrics)
    return path.exists() and json.loads(path.read_text(encoding="utf-8")).get("verdict") == "refused"


def run_pipeline(
    settings: Settings, until: str | None = None, data_only: bool = False, team: bool = False
) -> int:
    """The whole pipeline from the current directory (the project root); returns the exit code.

    ``team``: the shared MLflow server and DVC remote of the exports (safealign.team.profile): pull first,
    push after.
    """
    start = time.time()
    target = None
    if until is not None:
        try:
            target = stages.get(until).dvc
        except KeyError as exc:
            raise ConfigError(f"--until: {exc.args[0]}") from exc
    env = subprocess_env()
    layout = Layout.from_settings(settings)
    remote = None
    if team:
        from safealign.team import profile as team_profile

        remote = team_profile.prepare(say)
    restore_and_check_data(settings, env)
    if data_only:
        return 0
    code, failed, ran = 0, None, False
    publish = None
    if remote is not None:
        from safealign.team import profile as team_profile

        publish = functools.partial(team_profile.publish, remote, say)
    adopted = adopt_uncached_outputs(env, target)
    if adopted:
        say(f"== dvc: outputs matching dvc.lock put into the DVC cache (not rerun): {', '.join(adopted)}")
    if up_to_date(env, target):
        say("== dvc: every stage is up to date, nothing to run")
        if publish is not None:
            publish()
    else:
        ran = True
        code, failed = repro(settings, env, target, publish)
    seconds = int(time.time() - start)
    say()
    # only after a run that did work: an up-to-date second run keeps the first run's times
    if ran and target is None and layout.metrics_file(stages.get("evaluate").metrics).exists():
        render_results(layout, float(seconds))
    refused = is_refused_promotion(layout, code, failed)
    code = 0 if refused else code
    print_summary(layout, code, seconds, refused, resolved_tracking_uri(settings))
    return code
