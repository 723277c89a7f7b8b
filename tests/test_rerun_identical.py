"""Issue 32: re-running any finished stage with the same inputs changes no output byte.

The whole pipeline on the tiny settings (configs/tiny.yaml, data built from the installed packages and
sub-sampled): each stage of the registry runs once in this process, the bytes (sha256) and mtimes of every
output that dvc.yaml declares for it (outs, metrics, plots) are taken, then the same command runs again in
a fresh process (another PYTHONHASHSEED, as `dvc repro` or a user would rerun it) on the same inputs, and
nothing may have changed: no byte, no file added or removed, and not even an mtime (a file rewritten with
the same bytes still makes DVC rehash it). The next stage then runs on those outputs. About a minute here.

What used to change (before this file): GX's HTML pages (render time, random element ids), the MLflow run
id and wall times in metrics/train_reward.json, the run id in metrics/calibration.json, the timing in
metrics/evaluation.json and the report built from it, and metrics/promotion.json (run id, "new version"
flags, the champion before the promote); everything else was rewritten with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import safealign
from safealign import stages
from safealign.common.atomic import atomic_dir, kept_result, same_tree, without, write_json_result

from helpers.data import small_data
from helpers.tiny import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
# Gates a tiny random policy can pass, so promote registers, promotes, and is then rerun on its own champion.
PROMOTABLE = [
    "promote.min_safety_gain=-10",
    "promote.max_aspect_drop=10",
    "promote.max_benign_refusal=1",
    "promote.min_refusal_gain=-1",
]


def _args(root: Path, tracking: str = "mlflow.db", extra: tuple[str, ...] = ()) -> list[str]:
    sets = [
        f"paths.data_dir={root / 'data'}",
        f"paths.artifacts_dir={root / 'artifacts'}",
        f"paths.metrics_dir={root / 'metrics'}",
        f"paths.cache_dir={root / 'cache'}",
        f"tracking.tracking_uri=sqlite:///{root / tracking}",
        f"tracking.artifact_location={root / 'mlartifacts'}",
        *PROMOTABLE,
        *extra,
    ]
    return ["--params", str(TINY_CONFIG), *[a for s in sets for a in ("--set", s)]]


def declared_outputs(stage: str) -> list[str]:
    """The paths dvc.yaml declares as ``stage``'s outs, metrics and plots (relative to the project)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def snapshot(root: Path, declared: list[str]) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, mtime_ns) of every file under the declared outputs."""
    files: list[Path] = []
    for rel in declared:
        path = root / rel
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
        for p in files
        if p.is_file()
    }


def _in_process(argv: list[str]) -> int:
    from safealign.cli import main

    return main(argv)


# Runs each command line of argv[1] (a JSON list) in order in ONE fresh process, as `dvc repro` would run
# the stages again; writes their exit codes to argv[2]. (One process: each one pays ~10 s of imports.)
RERUN = """
import json, sys
from safealign.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
open(sys.argv[2], "w").write(json.dumps(codes))
"""


def _fresh_process(root: Path, argvs: list[list[str]], seed: str) -> tuple[list[int] | None, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SAFEALIGN_PARENT_RUN_ID")}
    source = Path(safealign.__file__).resolve().parents[1]  # the code this process imported and tests
    env.update(PYTHONHASHSEED=seed, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(source), *filter(None, [env.get("PYTHONPATH")])]))  # fmt: skip
    codes = root / "rerun-codes.json"
    done = subprocess.run(
        [sys.executable, "-c", RERUN, json.dumps(argvs), str(codes)],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return (json.loads(codes.read_text()) if codes.exists() else None), done.stderr[-4000:]


def compare(root: Path, declared: list[str], before: dict[str, tuple[str, int]]) -> dict:
    after = snapshot(root, declared)
    return {
        "files": sorted(before),
        "missing": [rel for rel in declared if not (root / rel).exists()],
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in before if p in after and after[p][0] != before[p][0]),
        "rewritten": sorted(p for p in before if p in after and after[p] != before[p]),
    }


# The commands the chain runs and reruns, in order: every stage of the registry, then the robustness suite
# alone (`evaluate --suite robustness`: metrics/robustness.json and artifacts/robustness/, which no DVC
# stage declares, through the same writer as the standard suite).
COMMANDS: list[tuple[str, list[str], list[str]]] = [
    *((s.name, [s.cli], declared_outputs(s.dvc)) for s in stages.STAGES),
    ("robustness", ["evaluate", "--suite", "robustness"], ["metrics/robustness.json",
                                                            "artifacts/robustness"]),
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """Every command in order here, then all of them again in one fresh process (another PYTHONHASHSEED):
    (project root, per-command comparison). Each stage's outputs are its own, so a change is the stage's
    (or, when an earlier stage's rerun changed, its inputs': look at the first stage that fails)."""
    import torch

    root = tmp_path_factory.mktemp("rerun")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("SAFEALIGN_PARENT_RUN_ID", raising=False)
        torch.set_num_threads(1)  # the shared 2-core machine is much slower with 2 contended threads
        try:
            small_data(root)
            first = {label: _in_process([*cmd, *_args(root)]) for label, cmd, _ in COMMANDS}
            before = {label: snapshot(root, declared) for label, _, declared in COMMANDS}
        finally:
            torch.set_num_threads(threads)
    codes, stderr = _fresh_process(root, [[*cmd, *_args(root)] for _, cmd, _ in COMMANDS], seed="17")
    assert codes is not None, stderr
    results = {
        label: {"codes": (first[label], code), "stderr": stderr, **compare(root, declared, before[label])}
        for (label, _, declared), code in zip(COMMANDS, codes, strict=True)
    }
    results["promote"]["record"] = json.loads((root / "metrics" / "promotion.json").read_text("utf-8"))
    return root, results


@pytest.mark.parametrize("label", [label for label, _, _ in COMMANDS])
def test_rerunning_a_finished_stage_changes_no_output_byte(chain, label):
    _root, results = chain
    result = results[label]
    assert result["codes"] == (0, 0), result["stderr"]
    assert result["missing"] == [] and result["files"], result  # every declared output was written
    assert result["added"] == [] and result["removed"] == [], result
    assert result["changed"] == [], f"{label}: a rerun changed the bytes of {result['changed']}"
    assert result["rewritten"] == [], f"{label}: a rerun rewrote (same bytes) {result['rewritten']}"


def test_promote_rerun_on_its_own_champion_keeps_the_record_of_the_promote_that_moved_it(chain):
    _root, results = chain
    record = results["promote"]["record"]
    assert record["verdict"] == "promoted" and record["champion"] == record["policy_version"]
    # the record of the promote that registered the versions and moved the champion, not of the rerun
    assert record["policy_new_version"] is True and record["previous_champion"] is None


def test_a_refused_promote_reruns_without_changing_a_byte(chain):
    """A fresh registry and the real bars: the tiny candidate is refused (exit 3) both times, and the
    refusal's record is not rewritten by the rerun (its run id and "new version" flags used to change)."""
    root, _ = chain
    strict = ("promote.min_refusal_gain=0.0", "promote.min_safety_gain=0.05")
    argv = ["promote", *_args(root, tracking="refused.db", extra=strict)]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert _in_process(argv) == 3
        before = snapshot(root, ["metrics/promotion.json"])
        assert _in_process(argv) == 3
    assert snapshot(root, ["metrics/promotion.json"]) == before
    record = json.loads((root / "metrics" / "promotion.json").read_text(encoding="utf-8"))
    assert record["verdict"] == "refused" and record["policy_new_version"] is True


# ---- the helpers the stages use ---------------------------------------------------------------------


def test_write_json_result_keeps_a_file_that_differs_only_in_volatile_fields(tmp_path):
    target = tmp_path / "m.json"
    first = {"r2": 0.5, "run": "a", "history": [{"epoch": 1, "elapsed_s": 1.0}], "nan": float("nan")}
    assert write_json_result(target, first, ("run", "history.*.elapsed_s")) == json.loads(json.dumps(first))
    stamp, content = os.stat(target).st_mtime_ns, target.read_bytes()
    again = {**first, "run": "b", "history": [{"epoch": 1, "elapsed_s": 2.0}]}
    kept = write_json_result(target, again, ("run", "history.*.elapsed_s"))
    assert kept["run"] == "a" and target.read_bytes() == content and os.stat(target).st_mtime_ns == stamp
    changed = {**again, "r2": 0.6}  # a real change is written, volatile fields and all
    assert write_json_result(target, changed, ("run", "history.*.elapsed_s"))["run"] == "b"
    assert json.loads(target.read_text())["r2"] == 0.6
    assert kept_result(tmp_path / "missing.json", first) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert kept_result(tmp_path / "bad.json", first) is None


def test_without_drops_dotted_paths_and_list_items():
    doc = {"a": {"b": 1, "c": 2}, "rows": [{"t": 1, "k": 1}, {"t": 2, "k": 2}], "x": (1, 2)}
    assert without(doc, ["a.b", "rows.*.t", "nope.deeper"]) == {"a": {"c": 2}, "rows": [{"k": 1}, {"k": 2}],
                                                                 "x": [1, 2]}  # fmt: skip
    assert doc["a"] == {"b": 1, "c": 2}  # a copy
    with pytest.raises(ValueError, match="cannot end"):
        without(doc, ["rows.*"])


def test_atomic_dir_keeps_an_identical_folder_and_compares_renderings_by_name_only(tmp_path):
    target = tmp_path / "out"

    def write(page: str, data: str) -> None:
        with atomic_dir(target, keep_identical=True, renderings=("gx/*.html",)) as tmp:
            (tmp / "gx").mkdir()
            (tmp / "gx" / "s.json").write_text(data)
            (tmp / "gx" / "s.html").write_text(page)

    write("rendered at 1", "{}")
    stamp = os.stat(target / "gx" / "s.json").st_mtime_ns
    write("rendered at 2", "{}")  # same data, another render time: kept as it is
    assert (target / "gx" / "s.html").read_text() == "rendered at 1"
    assert os.stat(target / "gx" / "s.json").st_mtime_ns == stamp
    write("rendered at 3", '{"x": 1}')  # the data changed: replaced, page and all
    assert (target / "gx" / "s.html").read_text() == "rendered at 3"
    assert not same_tree(target, tmp_path, ()) and same_tree(target, target, ())
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left
