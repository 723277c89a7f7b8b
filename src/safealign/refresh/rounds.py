"""``safealign grpo`` with ``grpo.rounds > 1``: GRPO, then reward refresh rounds (the Safe-RLHF practice).

Round 1 is the plain GRPO stage, byte for byte (``grpo.rounds: 1`` runs nothing else here but the small
rounds report). Each further round r:

1. samples the round r-1 policy on TRAIN prompts and labels the replies (``label.py``) into the new data
   version ``data/refresh/round-r.jsonl``;
2. retrains the reward model on the train split plus every refresh file so far (rounds 2..r: the data
   accumulates, as in Safe-RLHF) and recalibrates it with the unchanged gate: a refusal exits 3, removes
   ``artifacts/policy`` and leaves the report saying which round failed, so nothing downstream runs or is
   promoted on a reward model that did not pass;
3. continues GRPO from the round r-1 adapter (the same LoRA keeps training: one adapter over the base model
   is what evaluate and promote read) against the new reward model;
4. evaluates the round's policy on the held-out prompts (standard suite) with the ROUND-1 reward model: the
   yardstick stays fixed across rounds, and the refusal rates come from the rule judge, which never sees a
   reward model. The last round's adapter becomes ``artifacts/policy``.

Each round works in ``<checkpoints_dir>/rounds/round-r/``, laid out like the project (its own splits,
reward_model, calibration, policy, grpo_checkpoints, metrics): the stage functions run there unchanged.
That folder survives an interrupted run (it is under the persistent checkpoint folder), so a rerun skips
the finished parts: round 1 resumes from its last checkpoint, a refresh file of the same adapter is read
back, a reward model trained on the same split is kept, GRPO resumes from the round's checkpoints and a
held-out evaluation of the same adapter is read back. ``metrics/rounds.json`` holds every round's
on-policy calibration, held-out evaluation and time, side by side.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from safealign.common.atomic import atomic_dir, without, write_json, write_json_result
from safealign.common.hashing import file_hash, tree_hash
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data.schema import PROMPT_KINDS
from safealign.errors import GateFailed
from safealign.refresh.label import refresh_round_data

log = logging.getLogger(__name__)

ROUNDS_SUBDIR = "rounds"
STATE_FILE = "round.json"
METRICS = "rounds"


def round_root(layout: Layout, round_no: int) -> Path:
    return layout.checkpoints_dir / ROUNDS_SUBDIR / f"round-{round_no}"


def workspace_settings(settings: Settings, root: Path) -> Settings:
    """``settings`` with artifacts and metrics under ``root``; data/ and the cache stay the project's."""
    raw = settings.model_dump(mode="json")
    raw["paths"].update(artifacts_dir=str(root), metrics_dir=str(root / "metrics"))
    return Settings.model_validate(raw)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _canonical(report: dict[str, Any]) -> str:
    """A rounds report as compared across reruns: without what describes the process (its timings)."""
    return json.dumps(without(report, ROUND_VOLATILE), sort_keys=True)


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (absolute), replacing a link that points elsewhere."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        link.unlink() if link.is_symlink() or link.is_file() else shutil.rmtree(link)
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


# ------------------------------------------------------------------------------------------- pieces


def prepare_splits(layout: Layout, round_layout: Layout, refresh_files: list[Path]) -> str:
    """The round's splits: the project's, with every refresh file appended to the labelled train split.

    Returns the hash of the round's labelled train split (what decides whether the reward model retrains).
    """
    with atomic_dir(round_layout.splits_dir, keep_identical=True) as tmp:
        for src in sorted(layout.splits_dir.glob("*.jsonl")):
            shutil.copyfile(src, tmp / src.name)
        with (tmp / layout.labelled_split("train").name).open("a", encoding="utf-8") as handle:
            for path in refresh_files:
                handle.write(path.read_text(encoding="utf-8"))
    return file_hash(round_layout.labelled_split("train"))


def heldout_evaluation(settings: Settings, layout: Layout, root: Path, policy_dir: Path) -> dict[str, Any]:
    """The standard held-out evaluation of ``policy_dir``'s adapter, scored by the round-1 reward model.

    Read back when the same adapter was evaluated already (``root/heldout/metrics/evaluation.json``).
    """
    from safealign.evaluation.evaluate import evaluate

    ws = root / "heldout"
    es = workspace_settings(settings, ws)
    el = Layout.from_settings(es)
    _link(layout.splits_dir, el.splits_dir)
    _link(layout.reward_model_dir, el.reward_model_dir)
    _link(policy_dir, el.policy_dir)
    marker = ws / STATE_FILE
    key = {
        "adapter": tree_hash(el.adapter_dir),
        "reward_model": tree_hash(el.reward_model_dir),
        "evaluate": settings.evaluate.model_dump(mode="json"),
    }
    if _read_json(marker) != key or not el.metrics_file("evaluation").is_file():
        evaluate(es, suite="standard")
        write_json(marker, key)
    return heldout_figures(_read_json(el.metrics_file("evaluation")))


def heldout_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers the rounds table shows, from one metrics/evaluation.json."""
    sets = result.get("sets") or {}
    out: dict[str, Any] = {}
    for name in PROMPT_KINDS:
        s = sets.get(name) or {}
        out[f"{name}_refusal_base"] = (s.get("base") or {}).get("refusal_rate")
        out[f"{name}_refusal_aligned"] = (s.get("aligned") or {}).get("refusal_rate")
    safety = ((sets.get("adversarial") or {}).get("aspects") or {}).get("safety") or {}
    out["safety_rel_change"] = safety.get("rel_change")
    out["safety_rel_change_ci95"] = safety.get("rel_change_ci95")
    return out


def onpolicy_figures(calibration: dict[str, Any]) -> dict[str, Any]:
    """The on-policy AUROCs, real-reply R² and gate of one metrics/calibration.json."""
    onp = calibration.get("onpolicy") or {}
    gates = onp.get("gates") or {}
    return {
        "calibration_passed": calibration.get("passed"),
        "onpolicy_passed": onp.get("passed"),
        "onpolicy_auroc": {k: g.get("value") for k, g in gates.items() if not k.startswith("r2_")},
        "onpolicy_r2": {
            k.removeprefix("r2_"): g.get("value") for k, g in gates.items() if k.startswith("r2_")
        },
        "r2": {a: s.get("r2") for a, s in (calibration.get("aspects") or {}).items()},
    }


def snapshot_policy(layout: Layout, root: Path) -> Path:
    """Copy round 1's ``artifacts/policy`` into its round folder (the final rounds replace the original)."""
    target = root / "policy"
    if not target.is_dir() or tree_hash(target) != tree_hash(layout.policy_dir):
        with atomic_dir(target) as tmp:
            shutil.copytree(layout.policy_dir, tmp, dirs_exist_ok=True)
    return target


def publish_policy(layout: Layout, policy_dir: Path) -> None:
    """The last round's adapter becomes the stage's output ``artifacts/policy``."""
    with atomic_dir(layout.policy_dir, keep_identical=True) as tmp:  # a rerun leaves the same one be
        shutil.copytree(policy_dir, tmp, dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------- one round


def refresh_round(
    settings: Settings, layout: Layout, round_no: int, previous: Path, refresh_files: list[Path], resume: bool
) -> dict[str, Any]:
    """Round ``round_no`` >= 2 from the round before's policy folder ``previous``; its report row.

    Raises GateFailed (exit 3) when the retrained reward model fails calibration.
    """
    from safealign.policy.grpo import train_grpo
    from safealign.reward.calibrate import calibrate
    from safealign.reward.train import train_reward

    root = round_root(layout, round_no)
    rs = workspace_settings(settings, root)
    rl = Layout.from_settings(rs)
    times: dict[str, float] = {}
    t = time.perf_counter()
    adapter_hash = tree_hash(previous / "adapter")
    path, rows, reused = refresh_round_data(settings, layout, previous / "adapter", adapter_hash, round_no)
    refresh_files.append(path)
    times["sample_label_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # the reward model is kept only for the same train split and reward settings
    key = {
        "train_split": prepare_splits(layout, rl, refresh_files),
        "reward": settings.reward.model_dump(mode="json"),
        "aspects": settings.model_dump(mode="json")["aspects"],
    }
    if _read_json(root / STATE_FILE) != key or not rl.reward_model_dir.is_dir():
        train_reward(rs, progress=False)
        write_json(root / STATE_FILE, key)
    times["reward_train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    try:
        calibrate(rs)
    finally:
        times["calibrate_s"] = time.perf_counter() - t
    calibration = _read_json(rl.metrics_file("calibration"))

    grpo = train_grpo(rs, resume=resume, init_adapter=previous / "adapter")
    times["grpo_s"] = float(grpo.get("wall_time_s") or 0.0)  # resumed steps included

    t = time.perf_counter()
    heldout = heldout_evaluation(settings, layout, root, rl.policy_dir)
    times["heldout_eval_s"] = time.perf_counter() - t
    refusals = sum(bool(r.get("refusal")) for r in rows)
    return {
        "round": round_no,
        "data_version": str(path),
        "data_sha256": file_hash(path),
        "data_reused": reused,
        "refresh_rows": len(rows),
        "refresh_refusal_share": refusals / max(1, len(rows)),
        "reward_model": str(rl.reward_model_dir),
        "policy": str(rl.policy_dir),
        **onpolicy_figures(calibration),
        "grpo_selected_step": grpo.get("selected_step"),
        "heldout": heldout,
        "seconds": {k: round(v, 1) for k, v in times.items()} | {"total_s": round(sum(times.values()), 1)},
    }


# ------------------------------------------------------------------------------------------- the stage

# what in rounds.json describes this process, not the result: how long each round took
ROUND_VOLATILE = ("per_round.*.seconds",)


def write_report(layout: Layout, report: dict[str, Any], final: bool) -> None:
    """``metrics/rounds.json``: progress while rounds run, the result at the end.

    A rerun of finished rounds (each resumed from its markers) reproduces their rows with new timings; a
    progress write is skipped when the file already holds those rows (a finished report of the same run),
    and the final write leaves an equal result as it is, so the rerun changes no byte.
    """
    target = layout.metrics_file(METRICS)
    if not final:
        try:
            old = _read_json(target)
        except ValueError:  # a torn or hand-edited file: write the progress over it
            old = {}
        done = len(report["per_round"])
        if isinstance(old.get("per_round"), list) and len(old["per_round"]) >= done:
            so_far = {**old, "per_round": old["per_round"][:done]}
            if _canonical(so_far) == _canonical(report):
                return
    write_json_result(target, report, volatile=ROUND_VOLATILE)



def train_grpo_rounds(settings: Settings, resume: bool = True) -> dict[str, Any]:
    """The grpo stage: GRPO, then ``grpo.rounds - 1`` refresh rounds; returns GRPO's summary (+ rounds)."""
    from safealign.policy.grpo import train_grpo

    layout = Layout.from_settings(settings)
    total = settings.grpo.rounds
    summary = train_grpo(settings, resume=resume)
    first: dict[str, Any] = {
        "round": 1,
        "data_version": None,
        **onpolicy_figures(_read_json(layout.metrics_file("calibration"))),
        "grpo_selected_step": summary.get("selected_step"),
        "reward_model": str(layout.reward_model_dir),
    }
    report: dict[str, Any] = {"rounds": total, "passed": True, "failed_round": None, "per_round": [first]}
    if total == 1:
        first["heldout"] = None  # the evaluate stage's figures: metrics/evaluation.json
        write_json_result(layout.metrics_file(METRICS), report)  # an identical one is left as it is
        return summary

    root = round_root(layout, 1)
    previous = snapshot_policy(layout, root)
    t = time.perf_counter()
    first["policy"] = str(previous)
    first["heldout"] = heldout_evaluation(settings, layout, root, previous)
    grpo_s = float(summary.get("wall_time_s") or 0.0)  # resumed steps included
    eval_s = time.perf_counter() - t
    first["seconds"] = {"grpo_s": round(grpo_s, 1), "heldout_eval_s": round(eval_s, 1)}
    first["seconds"]["total_s"] = round(grpo_s + eval_s, 1)
    write_report(layout, report, final=False)  # progress, readable while later rounds run
    refresh_files: list[Path] = []
    for round_no in range(2, total + 1):
        log.info("reward refresh round %d of %d", round_no, total)
        try:
            row = refresh_round(settings, layout, round_no, previous, refresh_files, resume)
        except GateFailed as exc:
            # nothing downstream may pick up a policy trained before the refused reward model
            if layout.policy_dir.exists():
                shutil.rmtree(layout.policy_dir)
            calibration = _read_json(Layout.from_settings(
                workspace_settings(settings, round_root(layout, round_no))).metrics_file("calibration"))
            report["per_round"].append({"round": round_no, **onpolicy_figures(calibration)})
            report.update(passed=False, failed_round=round_no, error=str(exc).splitlines()[0])
            write_report(layout, report, final=True)
            raise GateFailed(
                f"reward refresh round {round_no}: the retrained reward model failed calibration; "
                f"artifacts/policy removed, nothing downstream runs (metrics/{METRICS}.json)\n{exc}"
            ) from exc
        report["per_round"].append(row)
        previous = Path(row["policy"])
        write_report(layout, report, final=False)  # progress, readable while later rounds run
    publish_policy(layout, previous)
    write_report(layout, report, final=True)
    return {**summary, "rounds": report["per_round"]}
