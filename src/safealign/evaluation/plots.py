"""PNG plots of an evaluation: per-aspect bars with intervals, and GRPO reward curves.

Agg backend (no display on CI or in a container). Each function writes one file and closes its figure.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def aspect_bars(sets: dict[str, Any], target: Path) -> Path:
    """Left: base vs aligned mean per aspect (per set). Right: the paired change with its 95% interval."""
    names = list(sets)
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.4 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        aspects = list(sets[name]["aspects"])
        vals = sets[name]["aspects"]
        x = range(len(aspects))
        ax = axes[row][0]
        ax.bar([i - 0.2 for i in x], [vals[a]["base_mean"] for a in aspects], 0.4, label="base")
        ax.bar([i + 0.2 for i in x], [vals[a]["aligned_mean"] for a in aspects], 0.4, label="aligned")
        ax.set_xticks(list(x), aspects)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: mean reward-model score")
        ax.legend(loc="lower right")
        ax = axes[row][1]
        change = [vals[a]["abs_change"] for a in aspects]
        lo = [vals[a]["abs_change"] - vals[a]["abs_change_ci95"][0] for a in aspects]
        hi = [vals[a]["abs_change_ci95"][1] - vals[a]["abs_change"] for a in aspects]
        colors = ["tab:green" if c >= 0 else "tab:red" for c in change]
        ax.bar(list(x), change, 0.6, yerr=[lo, hi], capsize=4, color=colors)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(list(x), aspects)
        ax.set_title(f"{name}: aligned - base (95% paired bootstrap CI)")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def reward_curves(steps_csv: Path, target: Path) -> Path | None:
    """Every numeric column whose name mentions reward (or safety), against the step column."""
    with open(steps_csv, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    step_key = "step" if "step" in rows[0] else next(iter(rows[0]))
    cols = [c for c in rows[0] if c != step_key and ("reward" in c.lower() or "safety" in c.lower())]
    if not cols:
        return None

    def num(v: str | None) -> float:
        try:
            return float(v) if v not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    steps = [num(r[step_key]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c in cols:
        ax.plot(steps, [num(r.get(c)) for r in rows], label=c, linewidth=1.2)
    ax.set_xlabel(step_key)
    ax.set_title("GRPO training rewards")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
