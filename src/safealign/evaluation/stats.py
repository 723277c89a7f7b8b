"""Paired comparison statistics: base vs aligned on the same prompts.

Both policies answer the same prompts, so the right interval is over the *paired* per-prompt difference:
one bootstrap resample picks prompt indices and applies them to both arms. The relative change is
``mean(aligned) / mean(base) - 1`` on each resample (a ratio of means, not a mean of ratios, so a prompt
with a near-zero base score cannot blow it up). Percentile intervals, seeded, so the report is reproducible.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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
