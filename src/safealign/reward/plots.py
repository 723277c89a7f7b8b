"""Reliability plots: predicted score vs observed label, binned, one PNG per aspect.

A well-calibrated head lies on the diagonal; a head that only learnt the mean is a flat line at the mean.
The bar chart under each curve shows how many held-out rows fell in each bin, so an empty bin is not read
as a calibration failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reliability_bins(pred: np.ndarray, target: np.ndarray, bins: int) -> list[dict[str, float]]:
    """Equal-width bins over [0, 1] of the prediction: mean predicted, mean observed, count per bin."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    keep = ~np.isnan(target)
    pred, target = pred[keep], target[keep]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(pred, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": int(sel.sum()),
                "predicted": float(pred[sel].mean()) if sel.any() else float("nan"),
                "observed": float(target[sel].mean()) if sel.any() else float("nan"),
            }
        )
    return out


def reliability_plot(
    pred: np.ndarray, target: np.ndarray, aspect: str, r2: float, bins: int, path: Path
) -> Path:
    """Write one aspect's reliability plot to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = reliability_bins(pred, target, bins)
    fig, (ax, axn) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="ideal")
    xs = [b["predicted"] for b in table if b["n"]]
    ys = [b["observed"] for b in table if b["n"]]
    ax.plot(xs, ys, marker="o", label="binned")
    keep = ~np.isnan(np.asarray(target, dtype=np.float64))
    ax.scatter(np.asarray(pred)[keep], np.asarray(target)[keep], s=4, alpha=0.15, color="black", label="rows")
    ax.set_ylabel("observed label")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{aspect}: held-out R² = {r2:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    centres = [(b["lo"] + b["hi"]) / 2 for b in table]
    axn.bar(centres, [b["n"] for b in table], width=1.0 / bins * 0.9, color="tab:blue", alpha=0.6)
    axn.set_xlabel("predicted score")
    axn.set_ylabel("rows")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
