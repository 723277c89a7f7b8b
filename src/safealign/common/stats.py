"""The project's statistics, in one place: reward-model metrics, paired comparisons, agreement, intervals.

Every layer computes with them (the data build checks its hand labels' agreement, calibration scores the
reward model, evaluation and its gates decide on intervals), so they sit below all of them, free of torch,
on plain arrays and sequences.

Reward-model metrics (R², MAE, Spearman, AUROC per aspect) are computed only on labelled entries (NaN =
unlabelled).

Paired comparison: base vs aligned on the same prompts.

Both policies answer the same prompts, so the right interval is over the *paired* per-prompt difference:
one bootstrap resample picks prompt indices and applies them to both arms. The relative change is
``mean(aligned) / mean(base) - 1`` on each resample (a ratio of means, not a mean of ratios, so a prompt
with a near-zero base score cannot blow it up). Percentile intervals, seeded, so the report is reproducible.

Agreement (precision, recall, Cohen's kappa) measures the refusal detector against hand labels, and the
second labelling pass against the first. ``at_least`` / ``at_most`` are the only place a gate compares an
interval with a bar, so every gate reads its decision the same way (non-inferiority on the bound).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def paired_comparison(
    base: Sequence[float] | np.ndarray,
    aligned: Sequence[float] | np.ndarray,
    samples: int = 1000,
    seed: int = 1234,
    level: float = 0.95,
) -> dict[str, float | list[float] | int]:
    """Means, absolute and relative change and their bootstrap intervals for paired scores."""
    b = np.asarray(base, dtype=np.float64)
    a = np.asarray(aligned, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 1:
        raise ValueError(f"paired scores must be 1-D and the same length, got {b.shape} and {a.shape}")
    n = b.shape[0]
    if n == 0:
        raise ValueError("no scores to compare")
    base_mean, aligned_mean = float(b.mean()), float(a.mean())
    diff = aligned_mean - base_mean
    rel = diff / base_mean if base_mean != 0 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    b_means = b[idx].mean(axis=1)
    a_means = a[idx].mean(axis=1)
    diffs = a_means - b_means
    with np.errstate(divide="ignore", invalid="ignore"):
        rels = np.where(b_means != 0, diffs / b_means, np.nan)
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    diff_ci = [float(np.percentile(diffs, lo_q)), float(np.percentile(diffs, hi_q))]
    finite = rels[np.isfinite(rels)]
    rel_ci = (
        [float(np.percentile(finite, lo_q)), float(np.percentile(finite, hi_q))]
        if finite.size
        else [float("nan"), float("nan")]
    )
    return {
        "n": int(n),
        "base_mean": base_mean,
        "aligned_mean": aligned_mean,
        "abs_change": diff,
        "rel_change": rel,
        "abs_change_ci95": diff_ci,
        "rel_change_ci95": rel_ci,
        "ci_excludes_zero": bool(diff_ci[0] > 0 or diff_ci[1] < 0),
    }


def distinct_ratio(replies: Sequence[str]) -> float:
    """Distinct normalised replies / replies: 1.0 = all different, near 0 = one stock answer (collapse)."""
    if not replies:
        return 0.0
    return len({" ".join(r.lower().split()) for r in replies}) / len(replies)


def most_common_reply(replies: Sequence[str]) -> tuple[str, float]:
    """The most frequent normalised reply and its share (a stock answer shows up here)."""
    if not replies:
        return "", 0.0
    counts = Counter(" ".join(r.lower().split()) for r in replies)
    text, count = counts.most_common(1)[0]
    return text, count / len(replies)


def common_opening_share(replies: Sequence[str], words: int = 6) -> tuple[str, float]:
    """The most common first ``words`` words and their share ("I'm sorry for any confusion ..." hacks)."""
    openings = [" ".join(r.lower().split()[:words]) for r in replies if r.strip()]
    if not openings:
        return "", 0.0
    text, count = Counter(openings).most_common(1)[0]
    return text, count / len(replies)


def length_stats(replies: Sequence[str]) -> dict[str, float]:
    """Length in words (tokenizer-independent, so base and aligned compare the same way)."""
    lens = np.array([len(r.split()) for r in replies], dtype=np.float64)
    if lens.size == 0:
        return {"mean_words": 0.0, "median_words": 0.0}
    return {"mean_words": float(lens.mean()), "median_words": float(np.median(lens))}


# ------------------------------------------------------------------------------ agreement and single arms


def confusion(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, int]:
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} labels but {len(predicted)} predictions")
    pairs = list(zip(truth, predicted, strict=True))
    return {
        "tp": sum(t and p for t, p in pairs),
        "fp": sum((not t) and p for t, p in pairs),
        "fn": sum(t and (not p) for t, p in pairs),
        "tn": sum((not t) and (not p) for t, p in pairs),
    }


def cohen_kappa(first: Sequence[bool], second: Sequence[bool]) -> float:
    """Agreement beyond chance between two binary labellings: 1 = perfect, 0 = chance level.

    Defined as 1.0 when both labellings are identical and constant (no disagreement to explain), nan when
    there is nothing to compare.
    """
    c = confusion(first, second)
    n = sum(c.values())
    if n == 0:
        return float("nan")
    observed = (c["tp"] + c["tn"]) / n
    p_first = (c["tp"] + c["fn"]) / n
    p_second = (c["tp"] + c["fp"]) / n
    expected = p_first * p_second + (1 - p_first) * (1 - p_second)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def binary_agreement(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall, accuracy and kappa of a detector against reference labels, with the counts."""
    c = confusion(truth, predicted)
    n = sum(c.values())
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    return {
        "n": n,
        "positives": c["tp"] + c["fn"],
        **c,
        "precision": precision,
        "recall": recall,
        "accuracy": (c["tp"] + c["tn"]) / n if n else float("nan"),
        "kappa": cohen_kappa(truth, predicted),
        "precision_ci95": wilson_interval(c["tp"], c["tp"] + c["fp"]),
        "recall_ci95": wilson_interval(c["tp"], c["tp"] + c["fn"]),
    }


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of a proportion; unlike the normal approximation it stays inside [0, 1]
    and is sensible at 0 or n successes, which is where detector precision and refusal rates live."""
    if trials == 0:
        return [float("nan"), float("nan")]
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, samples: int = 1000, seed: int = 1234, level: float = 0.95
) -> dict[str, Any]:
    """Mean of one arm and its percentile bootstrap interval (e.g. the aligned benign refusal rate)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"need a non-empty 1-D sample, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(samples, v.size))].mean(axis=1)
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "ci95": [float(np.percentile(means, lo_q)), float(np.percentile(means, hi_q))],
    }


# ------------------------------------------------------------------------------ interval-based decisions


def at_least(ci: Sequence[float], bound: float, eps: float = 1e-9) -> bool:
    """Non-inferiority from below: the WHOLE interval clears ``bound`` (its lower end is >= bound).

    Gates use this instead of a point estimate: a point estimate inside its own noise can land on either
    side of a bar by chance, the lower end of a 95% interval does so about 2.5% of the time.
    """
    lo = float(ci[0])
    return lo == lo and lo >= bound - eps


def at_most(ci: Sequence[float], bound: float, eps: float = 1e-9) -> bool:
    """Non-superiority from above: the interval's upper end is <= ``bound``."""
    hi = float(ci[1])
    return hi == hi and hi <= bound + eps


# ---- reward-model metrics (regression and ranking, on labelled entries only) ----
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
