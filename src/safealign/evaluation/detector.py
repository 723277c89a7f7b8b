"""How far the refusal detector can be trusted: its agreement with the hand-labelled refusal set.

Every evaluation reports these figures next to the refusal rates they qualify, measured on the set's
held-out part (rows no detector change was tuned on; see safealign.data.refusal_set). The second labelling
pass (an independent labeller over a blind subset) gives the human ceiling: a detector cannot be held to a
kappa higher than two people reach.

    python -m safealign.evaluation.detector                  # held-out part (what the report shows)
    python -m safealign.evaluation.detector --split tune --errors   # the part detector changes look at
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from safealign.common.stats import binary_agreement, cohen_kappa
from safealign.data import refusal_set
from safealign.errors import DataError
from safealign.refusal import detector_mode, judge

SPLITS = ("heldout", "tune", "all")


def measure(rows: list[dict[str, Any]], split: str = "heldout") -> dict[str, Any]:
    """Detector vs hand labels on one part of the set: precision, recall, accuracy, kappa, per category."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    part = [r for r in rows if split == "all" or refusal_set.split_of_row(r["id"]) == split]
    if not part:
        raise DataError(f"the refusal set has no rows in its {split!r} part")
    if detector_mode() == "combined":
        from safealign.refusal.learned import prefetch

        prefetch([r["reply"] for r in part if r["reply"].strip()])  # one batched encoder pass
    verdicts = [judge(r["reply"]).is_refusal for r in part]
    truth = [bool(r["refusal"]) for r in part]
    result = binary_agreement(truth, verdicts)
    by_category: dict[str, dict[str, Any]] = {}
    for category in sorted({r["category"] for r in part}):
        idx = [i for i, r in enumerate(part) if r["category"] == category]
        right = sum(verdicts[i] == truth[i] for i in idx)
        by_category[category] = {"n": len(idx), "correct": right, "accuracy": right / len(idx)}
    result.update(
        {
            "split": split,
            "set_rows": len(rows),
            "by_category": by_category,
            "by_source": dict(sorted(Counter(r["source"] for r in part).items())),
            "errors": [
                {"id": r["id"], "category": r["category"], "label": t, "detector": v}
                for r, t, v in zip(part, truth, verdicts, strict=True)
                if t != v
            ],
        }
    )
    return result


def second_pass_agreement(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
    """Cohen's kappa between the first labelling and an independent second pass over a subset.

    ``second`` rows need ``id`` and ``refusal`` (and may carry ``category``); every id must exist in
    ``first``. Category agreement is reported too, because two labellers can agree on refusal/not while
    disagreeing on why.
    """
    by_id = {r["id"]: r for r in first}
    unknown = [s.get("id") for s in second if s.get("id") not in by_id]
    if unknown:
        raise DataError(f"second-pass rows with ids not in the refusal set: {unknown[:5]}")
    bad = [s["id"] for s in second if not isinstance(s.get("refusal"), bool)]
    if bad:
        raise DataError(f"second-pass rows without a boolean 'refusal': {bad[:5]}")
    a = [bool(by_id[s["id"]]["refusal"]) for s in second]
    b = [bool(s["refusal"]) for s in second]
    with_cat = [s for s in second if s.get("category")]
    return {
        "n": len(second),
        "agreement": sum(x == y for x, y in zip(a, b, strict=True)) / len(second) if second else float("nan"),
        "kappa": cohen_kappa(a, b),
        "category_agreement": (
            sum(by_id[s["id"]]["category"] == s["category"] for s in with_cat) / len(with_cat)
            if with_cat
            else float("nan")
        ),
        "disagreements": [s["id"] for s, x, y in zip(second, a, b, strict=True) if x != y],
    }


def load_second_pass(path: Path = refusal_set.SECOND_PASS_FILE) -> list[dict[str, Any]] | None:
    """The second pass's labels, or None while nobody has done it (the report then says so)."""
    if not path.exists():
        return None
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return rows


# the figures of one detector-vs-labels comparison that reports keep (binary_agreement's counts and rates)
AGREEMENT_FIELDS = (
    "n", "positives", "tp", "fp", "fn", "tn", "precision", "recall", "accuracy", "kappa",
    "precision_ci95", "recall_ci95",
)  # fmt: skip


def detector_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The block every evaluation carries: held-out figures, tune figures, and second-pass agreement."""
    held, tune = measure(rows, "heldout"), measure(rows, "tune")
    second = load_second_pass()
    keep = (*AGREEMENT_FIELDS, "by_category")
    return {
        "detector": detector_mode(),
        "heldout": {k: held[k] for k in keep},
        "tune": {k: tune[k] for k in keep},
        "set_rows": len(rows),
        "second_pass": second_pass_agreement(rows, second) if second else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    parser.add_argument("--set", type=Path, default=refusal_set.SOURCE_FILE, help="refusal set JSONL")
    parser.add_argument("--errors", action="store_true", help="print each misjudged reply")
    args = parser.parse_args(argv)
    rows = refusal_set.load(args.set)
    result = measure(rows, args.split)
    errors = result.pop("errors")
    print(json.dumps(result, indent=2))
    if args.errors:
        by_id = {r["id"]: r for r in rows}
        for e in errors:
            r = by_id[e["id"]]
            print(f"\n[{e['id']} {e['category']} label={e['label']} detector={e['detector']}]\n{r['reply']}")
    second = load_second_pass()
    if second:
        print(json.dumps({"second_pass": second_pass_agreement(rows, second)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
