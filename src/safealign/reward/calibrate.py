"""Calibration and probe gate (``safealign calibrate``): nothing downstream runs on a reward it fails.

Two checks on data the model never trained on:
1. Held-out regression quality per aspect: R², MAE, Spearman, n (labelled rows only), a reliability plot per
   aspect, and, for honesty, the same numbers per label source (human, rule, judge): a high R² on rule
   labels can hide a poor fit to the few human labels.
   The safety head's AUROC against the human harm labels (harmful = safety < 0.5) is reported too.
2. The probe orderings of :mod:`safealign.reward.probes`.
3. The on-policy set (real policy replies, hand-labelled on every aspect; :mod:`safealign.reward.onpolicy`):
   R², MAE, Spearman, and per prompt kind the AUROC of the combined reward for compliance over refusal on
   benign prompts and refusal over compliance on adversarial ones, each against its threshold.

The gate passes only when every aspect's R² is strictly above ``calibrate.r2_threshold``, every probe
ordering's pass rate is at least ``calibrate.min_probe_pass`` (the per-phrasing-family orderings:
``calibrate.min_phrasing_probe_pass``, reported per family under ``probes_by_phrasing_family``), and, when
``calibrate.enforce_onpolicy`` is true, both on-policy AUROCs clear their thresholds (when false a failure
is reported as such and logged as a warning, but the run goes on). calibration.json is written either way,
so a refused model still leaves its numbers behind; then GateFailed (exit 3) names what failed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from safealign.common.atomic import atomic_dir, write_json_result
from safealign.common.layout import Layout
from safealign.common.stats import auroc, json_safe, per_aspect, r2_score
from safealign.config import Settings
from safealign.data import onpolicy as onpolicy_data
from safealign.errors import DataError, GateFailed
from safealign.reward.onpolicy import format_gate_lines, onpolicy_report
from safealign.reward.plots import reliability_plot
from safealign.reward.probes import failing, format_failures, phrasing_table, run_probes
from safealign.reward.registers import format_lines as format_register_lines
from safealign.reward.registers import score_registers
from safealign.reward.train import read_split, require_labels

log = logging.getLogger(__name__)
HARM_CUTOFF = 0.5  # a human safety score below this (harm above 0.5) counts as harmful


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return json_safe(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def safety_vs_human(pred: np.ndarray, split: Any, aspects: list[str]) -> dict[str, Any]:
    """AUROC of the safety head for 'safe' against human labels, and R² on the human-labelled rows only."""
    if "safety" not in aspects:
        return {"auroc": None, "r2": None, "n": 0, "note": "no safety aspect configured"}
    k = aspects.index("safety")
    human = np.array(
        [
            s.get("safety") == "human" and not math.isnan(y)
            for s, y in zip(split.sources, split.scores[:, k], strict=True)
        ]
    )
    n = int(human.sum())
    if n == 0:
        return {"auroc": None, "r2": None, "n": 0, "note": "no human safety labels in the held-out split"}
    y = split.scores[human, k].astype(np.float64)
    p = pred[human, k].astype(np.float64)
    safe = y >= HARM_CUTOFF
    return {
        "auroc": auroc(p, safe),
        "r2": r2_score(p, y),
        "n": n,
        "n_harmful": int((~safe).sum()),
        "harmful_if_safety_below": HARM_CUTOFF,
    }


def by_source(pred: np.ndarray, split: Any, aspects: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per aspect and label source: R², MAE, n."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k, a in enumerate(aspects):
        sources = np.array([s.get(a) or "" for s in split.sources])
        out[a] = {}
        for src in sorted(set(sources) - {""}):
            sel = sources == src
            y = split.scores[sel, k]
            out[a][src] = {
                "r2": r2_score(pred[sel, k], y),
                "mae": float(np.nanmean(np.abs(pred[sel, k] - y))),
                "n": int((~np.isnan(y)).sum()),
            }
    return out


def format_aspect_failures(
    aspect_stats: dict[str, dict[str, float]], names: list[str], threshold: float
) -> str:
    lines = [
        f"aspects at or below R² {threshold:.2f} on the held-out split:",
        f"  {'aspect':16s} {'R²':>7s} {'MAE':>6s} {'n':>5s}",
    ]
    for a in names:
        s = aspect_stats[a]
        r2 = s["r2"]
        lines.append(
            f"  {a:16s} {r2 if r2 is not None and not math.isnan(r2) else float('nan'):7.3f} "
            f"{s['mae']:6.3f} {s['n']:5d}"
        )
    return "\n".join(lines)


def _load_checked(settings: Settings, layout: Layout) -> Any:
    """The trained reward model; missing, corrupt, or trained for aspects params does not name: bad input."""
    from safealign.reward.model import RewardModel

    return RewardModel.for_settings(layout.reward_model_dir, settings)


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's numbers as flat MLflow metrics (R², MAE, Spearman per aspect, probe pass rates)."""
    metrics = {}
    for a, stats in report["aspects"].items():
        for m in ("r2", "mae", "spearman"):
            if stats[m] is not None:
                metrics[f"{m}_{a}"] = stats[m]
    for name, r in report["probes"].items():
        if r.get("pass_rate") is not None:
            metrics["probe_" + "".join(c if c.isalnum() else "_" for c in name)[:200]] = r["pass_rate"]
    if report["safety_auroc_human"] is not None:
        metrics["safety_auroc_human"] = report["safety_auroc_human"]
    onp = report["onpolicy"]
    for a, stats in onp["aspects"].items():
        for m in ("r2", "mae", "spearman"):
            if stats[m] is not None:
                metrics[f"onpolicy_{m}_{a}"] = stats[m]
    for kind, g in onp["gates"].items():
        if g["value"] is not None:
            metrics[f"onpolicy_auroc_{kind}"] = g["value"]
    metrics["onpolicy_passed"] = float(onp["passed"])
    for key in ("min_safety_refusal_auroc", "min_benign_compliance_auroc"):
        if report.get("registers", {}).get(key) is not None:
            metrics[f"registers_{key}"] = report["registers"][key]
    metrics["passed"] = float(report["passed"])
    return metrics


def _announce(report: dict[str, Any], cfg: Any, bad_aspects: list[str], bad_probes: list[str],
              onp_blocks: bool) -> None:
    """Log the on-policy figures and raise GateFailed naming every failing check."""
    onp = report["onpolicy"]
    passed = report["passed"]
    log.info("on-policy calibration (%d real replies):\n%s", onp["n"], format_gate_lines(report["onpolicy"]))
    if not onp["passed"] and not cfg.enforce_onpolicy:
        log.warning(
            "the reward model FAILS the on-policy gate "
            "(not enforced: calibrate.enforce_onpolicy is false)\n%s",
            format_gate_lines(report["onpolicy"]),
        )
    if not passed:
        parts = []
        if bad_aspects:
            parts.append(format_aspect_failures(report["aspects"], bad_aspects, cfg.r2_threshold))
        if bad_probes:
            parts.append(
                format_failures(report["probes"], bad_probes, cfg.min_probe_pass, cfg.min_phrasing_probe_pass)
            )
        if onp_blocks:
            parts.append(
                "on-policy gate (calibrate.enforce_onpolicy):\n" + format_gate_lines(report["onpolicy"])
            )
        raise GateFailed("reward model refused by the calibration gate\n" + "\n".join(parts))


def _benign_weights(settings: Settings, aspects: list[str]) -> np.ndarray | None:
    """``grpo.benign_weights`` in the model's aspect order (unlisted aspects 0), or None when unset."""
    bw = settings.grpo.benign_weights
    return None if bw is None else np.asarray([float(bw.get(a, 0.0)) for a in aspects], dtype=np.float64)


def calibrate(settings: Settings) -> dict[str, Any]:
    """Run the calibration and probe gate; write metrics/calibration.json + plots; raise GateFailed on no."""
    from safealign.tracking import stage_run

    layout = Layout.from_settings(settings)
    cfg = settings.calibrate
    model = _load_checked(settings, layout)
    aspects = model.aspects
    heldout = read_split(layout.labelled_split("heldout"), aspects)
    require_labels(heldout, aspects)
    onp_all = onpolicy_data.load(layout.onpolicy_set)
    labelled = [a for a in aspects if a in onpolicy_data.LABELLED_ASPECTS]
    onpolicy_data.build_rows(onp_all, [], labelled)  # every row labels them, or a DataError naming the row
    onp_rows = onpolicy_data.heldout(onp_all)  # the tune part is in the reward model's training data
    if not onp_rows:
        raise DataError(f"{layout.onpolicy_set}: no held-out rows (part heldout) to judge real replies on")

    with stage_run(settings, "calibrate") as run:
        import mlflow

        pred = model.score(heldout.prompts, heldout.responses, batch_size=64)
        stats = per_aspect(pred, heldout.scores, aspects)
        probes = run_probes(model, layout.probes)
        human = safety_vs_human(pred, heldout, aspects)
        onp_pred = model.score([r["prompt"] for r in onp_rows], [r["reply"] for r in onp_rows], batch_size=64)
        benign_weights = _benign_weights(settings, aspects)
        onp = onpolicy_report(onp_pred, model.weights, onp_rows, aspects, cfg, benign_weights)
        onp["n_tune"] = len(onp_all) - len(onp_rows)
        onp["label_agreement"] = onpolicy_data.label_agreement(onp_all, labelled)  # R² ceiling per aspect
        registers = score_registers(model, benign_weights)  # reported per register, not a gate
        log.info("reward model by register (not a gate):\n%s", format_register_lines(registers))
        with atomic_dir(layout.calibration_dir, keep_identical=True) as tmp:
            for k, a in enumerate(aspects):
                png = tmp / f"reliability_{a}.png"
                r2 = stats[a]["r2"]
                reliability_plot(pred[:, k], heldout.scores[:, k], a, r2, cfg.reliability_bins, png)

        bad_aspects = [a for a in aspects if not (stats[a]["r2"] > cfg.r2_threshold)]  # NaN fails too
        bad_probes = failing(probes, cfg.min_probe_pass, cfg.min_phrasing_probe_pass)
        onp_blocks = cfg.enforce_onpolicy and not onp["passed"]
        passed = not bad_aspects and not bad_probes and not onp_blocks
        report = _clean(
            {
                "aspects": stats,
                "threshold": cfg.r2_threshold,
                "min_probe_pass": cfg.min_probe_pass,
                "passed": passed,
                "failing_aspects": bad_aspects,
                "failing_probes": bad_probes,
                "probes": probes,
                "min_phrasing_probe_pass": cfg.min_phrasing_probe_pass,
                "probes_by_phrasing_family": phrasing_table(probes),
                "safety_auroc_human": human["auroc"],
                "safety_human": human,
                "by_label_source": by_source(pred, heldout, aspects),
                "onpolicy": onp,
                "registers": registers,
                "n_heldout": len(heldout),
                "model_dir": str(layout.reward_model_dir),
                "plots": {a: str(layout.calibration_dir / f"reliability_{a}.png") for a in aspects},
                "mlflow_run_id": run.info.run_id,
            }
        )
        # a rerun on the same model and data keeps the file (and run id) of the run that first wrote it
        write_json_result(layout.metrics_file("calibration"), report, ("mlflow_run_id",))
        mlflow.log_metrics(_report_metrics(report))
        mlflow.log_artifacts(str(layout.calibration_dir), artifact_path="calibration")
        mlflow.log_artifact(str(layout.metrics_file("calibration")))

    _announce(report, cfg, bad_aspects, bad_probes, onp_blocks)
    return {k: report[k] for k in ("aspects", "threshold", "passed", "safety_auroc_human")} | {
        "probes": {n: r.get("pass_rate") for n, r in report["probes"].items()},
        "onpolicy": {
            "passed": report["onpolicy"]["passed"],
            "enforced": report["onpolicy"]["enforced"],
            "auroc": {k: g["value"] for k, g in report["onpolicy"]["gates"].items()},
        },
    }
