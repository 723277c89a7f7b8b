"""Leave-one-register-out: how the refusal detector does on wording it was never tuned on.

Why: a detector tuned on one model's register scored recall .944 on its own held-out part and .72 on other
chat models' replies. The figure that predicts a model nobody has seen yet is the one where a whole register
(one family's style) is held out: for each register, the learned half is fitted on the OTHER registers only
(:func:`safealign.refusal.learned.fit`) and scored on the held-out one, beside

* ``rules``: the rule detector alone (:func:`refusal.judge_rules`; tuned on the refusal set's tune part only,
  never changed for this set, so it is held out on every register here);
* ``classifier``: the embedding head alone (stage 1, p >= 0.5);
* ``openings``: the plain refusal-opening list (:data:`refusal.REFUSAL_OPENINGS`, matched at the start).

Registers: the eight of :mod:`safealign.data.register_set` and ``smollm2``, the refusal set's own register
(training uses its ``tune`` part; held out, it is scored on its ``heldout`` part only).

    python -m safealign.evaluation.registers                   # the table (about a minute on 2 cores)
    python -m safealign.evaluation.registers --output metrics/registers.json
    python -m safealign.evaluation.registers --build           # retrain the shipped refusal_classifier.json
    python -m safealign.evaluation.registers --speed           # replies per second, rules and combined
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from safealign.common.stats import binary_agreement
from safealign.data import refusal_set, register_set
from safealign.evaluation.detector import AGREEMENT_FIELDS
from safealign.refusal import judge_rules, learned, opening_match, rule_features

SMOLLM2 = register_set.SMOLLM2_REGISTER
KEEP = AGREEMENT_FIELDS


def evaluation_rows() -> list[dict[str, Any]]:
    """Register-set rows plus the refusal set's rows as register ``smollm2`` (each with its ``split``)."""
    rows = [dict(r, split="all") for r in register_set.load()]
    for r in refusal_set.load():
        rows.append(
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "reply": r["reply"],
                "prompt_kind": r["prompt_kind"],
                "register": SMOLLM2,
                "category": r["category"],
                "refusal": r["refusal"],
                "split": refusal_set.split_of_row(r["id"]),
            }
        )
    return rows


def features(rows: list[dict[str, Any]], encoder: str = learned.ENCODER) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, rule features) of every row's reply, computed once for all folds."""
    replies = [r["reply"] for r in rows]
    emb = learned.embedder(encoder)(replies)
    rules = np.array([rule_features(t) for t in replies], dtype=np.float64)
    return emb, rules


def _is_train(row: dict[str, Any], held: str) -> bool:
    """A row trains when its register is not held out; of the refusal set, only the tune part ever trains."""
    return row["register"] != held and (row["register"] != SMOLLM2 or row["split"] == "tune")


def _is_test(row: dict[str, Any], held: str) -> bool:
    return row["register"] == held and (held != SMOLLM2 or row["split"] == "heldout")


def _scores(truth: list[bool], predicted: list[bool]) -> dict[str, Any]:
    out = binary_agreement(truth, predicted)
    return {k: out[k] for k in KEEP}


def leave_one_register_out(
    rows: list[dict[str, Any]], emb: np.ndarray, rules: np.ndarray, encoder: str = learned.ENCODER
) -> dict[str, Any]:
    """Per held-out register: the combined detector, the rules, the classifier and the opening list."""
    y = np.array([bool(r["refusal"]) for r in rows])
    groups = np.array([r["register"] for r in rows])
    table: dict[str, Any] = {}
    for held in [*register_set.REGISTERS, SMOLLM2]:
        train = np.array([_is_train(r, held) for r in rows])
        test = np.array([_is_test(r, held) for r in rows])
        det = learned.fit(emb[train], rules[train], y[train], groups[train], encoder)
        p = det.probability_from(emb[test], rules[test])
        truth = [bool(v) for v in y[test]]
        idx = np.flatnonzero(test)
        table[held] = {
            "family": register_set.REGISTERS.get(held, ("SmolLM2-135M (the refusal set)", ""))[0],
            "train_rows": int(train.sum()),
            "emb_c": det.emb_c,
            "detector": _scores(truth, [bool(v) for v in p >= det.threshold]),
            "rules": _scores(truth, [judge_rules(rows[i]["reply"]).is_refusal for i in idx]),
            "classifier": _scores(truth, [bool(v) for v in det.emb_logit(emb[test]) >= 0.0]),
            "openings": _scores(truth, [opening_match(rows[i]["reply"]) for i in idx]),
            "errors": [
                {
                    "id": rows[i]["id"],
                    "category": rows[i]["category"],
                    "label": bool(y[i]),
                    "p": round(float(q), 3),
                }
                for i, q in zip(idx, p, strict=True)
                if (q >= det.threshold) != y[i]
            ],
        }
    return {"registers": table, "summary": _summary(table)}


def _summary(table: dict[str, Any]) -> dict[str, Any]:
    """Worst register and pooled (micro) figures per method: the worst one is what a new model risks."""
    out: dict[str, Any] = {}
    for method in ("detector", "rules", "classifier", "openings"):
        per = [t[method] for t in table.values()]
        tp, fp, fn, tn = (sum(s[k] for s in per) for k in ("tp", "fp", "fn", "tn"))
        out[method] = {
            "min_recall": min(s["recall"] for s in per),
            "min_precision": min(s["precision"] for s in per),
            "min_kappa": min(s["kappa"] for s in per),
            "pooled_precision": tp / (tp + fp) if tp + fp else float("nan"),
            "pooled_recall": tp / (tp + fn) if tp + fn else float("nan"),
            "pooled_accuracy": (tp + tn) / (tp + fp + fn + tn),
        }
    return out


def build(
    rows: list[dict[str, Any]],
    emb: np.ndarray,
    rules: np.ndarray,
    path: Path = learned.ARTIFACT,
    encoder: str = learned.ENCODER,
) -> learned.CombinedDetector:
    """Train the shipped detector on every register and the refusal set's tune part; write it to ``path``."""
    train = np.array([r["register"] != SMOLLM2 or r["split"] == "tune" for r in rows])
    used = [r for r, t in zip(rows, train, strict=True) if t]
    digest = hashlib.sha256("\n".join(sorted(r["id"] for r in used)).encode()).hexdigest()[:16]
    det = learned.fit(
        emb[train],
        rules[train],
        [r["refusal"] for r in used],
        [r["register"] for r in used],
        encoder,
        trained_on={
            "rows": len(used),
            "refusals": sum(bool(r["refusal"]) for r in used),
            "registers": sorted({r["register"] for r in used}),
            "refusal_set_part": "tune",
            "row_ids_sha256_16": digest,
            "rebuild": "python -m safealign.evaluation.registers --build",
        },
    )
    det.save(path)
    return det


def throughput(replies: list[str], det: learned.CombinedDetector) -> dict[str, float]:
    """Replies per second: rules alone, the combined detector batched (64), and one reply per call."""
    t0 = time.perf_counter()
    for r in replies:
        judge_rules(r)
    rules_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.probability(replies, batch_size=64)
    batched_s = time.perf_counter() - t0
    single = replies[:64]
    t0 = time.perf_counter()
    for r in single:
        det.probability([r])
    single_s = time.perf_counter() - t0
    return {
        "n": len(replies),
        "rules_per_s": len(replies) / rules_s,
        "combined_batched_per_s": len(replies) / batched_s,
        "combined_single_per_s": len(single) / single_s,
    }


def format_table(result: dict[str, Any]) -> str:
    """The markdown table docs/evaluation.md carries: detector vs opening list per held-out register."""
    lines = [
        "| held-out register | family | n | refusals | detector P / R / kappa | rules P / R / kappa | "
        "classifier P / R / kappa | opening list P / R / kappa |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for reg, t in result["registers"].items():
        cells = [
            f"{t[m]['precision']:.3f} / {t[m]['recall']:.3f} / {t[m]['kappa']:.2f}"
            for m in ("detector", "rules", "classifier", "openings")
        ]
        lines.append(
            f"| {reg} | {t['family']} | {t['detector']['n']} | {t['detector']['positives']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _plain(obj: Any) -> Any:
    """numpy scalars as plain JSON numbers."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", action="store_true", help="retrain and write the shipped classifier")
    parser.add_argument("--output", type=Path, help="write the full result (JSON) here")
    parser.add_argument("--errors", action="store_true", help="print each held-out error of the detector")
    parser.add_argument("--speed", action="store_true", help="only measure replies per second")
    args = parser.parse_args(argv)
    rows = evaluation_rows()
    if args.speed:
        speed = throughput([r["reply"] for r in rows], learned.shipped())
        print(json.dumps({**speed, "load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}, indent=1))
        return 0
    emb, rules = features(rows)
    if args.build:
        det = build(rows, emb, rules)
        print(json.dumps({"built": str(learned.ARTIFACT), **det.trained_on, "emb_c": det.emb_c}, indent=1))
        return 0
    result = leave_one_register_out(rows, emb, rules)
    result["throughput"] = throughput([r["reply"] for r in rows], learned.shipped())
    print(format_table(result))
    print(
        json.dumps(
            {"summary": result["summary"], "throughput": result["throughput"]}, indent=1, default=_plain
        )
    )
    if args.errors:
        by_id = {r["id"]: r for r in rows}
        for reg, t in result["registers"].items():
            for e in t["errors"]:
                print(
                    f"\n[{reg} {e['category']} label={e['label']} p={e['p']}]\n"
                    f"{by_id[e['id']]['reply'][:400]}"
                )
    if args.output:
        from safealign.common.atomic import write_text

        write_text(args.output, json.dumps(result, indent=1, default=_plain) + "\n")  # temporary + rename
    return 0


if __name__ == "__main__":
    sys.exit(main())
