"""Regression and ranking metrics for the reward model, computed only on labelled entries (NaN = unlabelled).

Kept free of torch so calibration, evaluation and tests can use them on plain arrays.
"""

from __future__ import annotations

import math

import numpy as np


def _clean(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    keep = ~np.isnan(target)
    return pred[keep], target[keep]


def r2_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot over labelled entries; NaN when undefined."""
    p, t = _clean(pred, target)
    if len(t) < 2:
        return float("nan")
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    p, t = _clean(pred, target)
    return float(np.abs(p - t).mean()) if len(t) else float("nan")


def spearman(pred: np.ndarray, target: np.ndarray) -> float:
    from scipy.stats import spearmanr

    p, t = _clean(pred, target)
    if len(t) < 2 or np.all(t == t[0]) or np.all(p == p[0]):
        return float("nan")
    return float(spearmanr(p, t).statistic)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``positives``; NaN if one class is missing."""
    from sklearn.metrics import roc_auc_score

    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        return float("nan")
    return float(roc_auc_score(positives, np.asarray(scores, dtype=np.float64)))


def per_aspect(pred: np.ndarray, target: np.ndarray, aspects: list[str]) -> dict[str, dict[str, float]]:
    """{aspect: {r2, mae, spearman, n}} for an [N, K] prediction and an [N, K] target with NaN holes."""
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(aspects):
        n = int((~np.isnan(np.asarray(target[:, k], dtype=np.float64))).sum())
        out[name] = {
            "r2": r2_score(pred[:, k], target[:, k]),
            "mae": mae(pred[:, k], target[:, k]),
            "spearman": spearman(pred[:, k], target[:, k]),
            "n": n,
        }
    return out


def json_safe(value: float) -> float | None:
    """NaN and inf are not JSON: write null instead."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value
