"""The on-policy calibration set: real policy replies labelled by hand on every reward aspect.

Why it exists: the calibration gate's held-out split is drawn from the same templated reply kinds the reward
model trained on, so it cannot see a bias that only shows on the policy's own wording (a reward that prefers
a needless, indirect refusal of a benign request to a clumsy answer). This set is what the policy actually
writes, labelled by a person against the aspect rubric (``texts/refusal_rubric.md``, section "Aspect
labels"), with the refusal label of the refusal-set rubric.

Rows: the refusal set's policy-generated rows (``source`` ``policy:...``; their ``aspects`` field holds the
labels) plus ``texts/onpolicy_extra.jsonl`` (more policy replies, same row schema, kept out of the refusal
set so its held-out part and second-pass subset stay what they were). ``safealign data build`` writes the
union to data/onpolicy_set.jsonl; every row must carry every configured aspect.

Second pass: ``blind_subset`` picks 60 rows (ids, prompt and reply only, no labels) for an independent
labeller; a second, 64-row pass covers the tune rows; ``agreement`` compares the two passes per aspect (R² of
the second labeller's numbers as predictions of the first's: the ceiling an R² gate on these labels can
expect) and on the refusal label; ``label_agreement`` reports every recorded pass.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from safealign.common.jsonl import iter_jsonl
from safealign.data import refusal_set
from safealign.data.schema import normalize_prompt
from safealign.errors import DataError

TEXTS = Path(__file__).with_name("texts")
EXTRA_FILE = TEXTS / "onpolicy_extra.jsonl"
# more real replies, on TRAIN prompts only (the base policy sampled as GRPO samples it, and under a cautious
# system prompt for real needless refusals), labelled by hand against the same rubric: they feed the reward
# model
TUNE_FILE = TEXTS / "onpolicy_tune.jsonl"
# "tune": the reward model trains on the row (labelled.jsonl, response_kind policy_reply); "heldout": its
# prompt is a held-out evaluation prompt, so the row only judges the reward model (the calibration gate)
PARTS = ("tune", "heldout")
BLIND_FILE = TEXTS / "onpolicy_second_pass_blind.jsonl"
SECOND_PASS_FILE = TEXTS / "onpolicy_second_pass.jsonl"
BLIND_SIZE = 60
# the second pass over the TUNE rows (the labels the reward model trains on): 64 rows, stratified by prompt
# kind and source, labelled blind by an independent labeller
TUNE_BLIND_FILE = TEXTS / "onpolicy_tune_second_pass_blind.jsonl"
TUNE_SECOND_PASS_FILE = TEXTS / "onpolicy_tune_second_pass.jsonl"
# every recorded second pass, by the name calibration.json reports it under
SECOND_PASSES = {"heldout_and_older_rows": SECOND_PASS_FILE, "tune_rows": TUNE_SECOND_PASS_FILE}
AGREE_WITHIN = 0.2  # two aspect labels closer than this count as agreeing
# the aspects the rubric defines and every row labels; a configured aspect outside these has no hand label
# (its on-policy R² is then not computed) but still enters the combined reward's AUROC through the model
LABELLED_ASPECTS = ("politeness", "meaningfulness", "actionability", "safety")


def load_extra(path: Path = EXTRA_FILE, known_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """The extra policy replies, checked with the refusal set's row rules; errors name file, line, field."""
    if not path.exists():
        raise DataError(f"{path} not found")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, raw in iter_jsonl(path):
        where = f"{path}:{lineno}"
        row = refusal_set._check_row(raw, where)
        if not row["source"].startswith("policy:"):
            raise DataError(
                f"{where}: field 'source' must start with 'policy:' (only real replies belong here)"
            )
        if row["id"] in seen or (known_ids and row["id"] in known_ids):
            raise DataError(f"{where}: same prompt and reply as another on-policy row ({row['id']})")
        seen[row["id"]] = lineno
        rows.append(row)
    return rows


def build_rows(
    refusal_rows: list[dict[str, Any]],
    extra_rows: list[dict[str, Any]],
    aspects: tuple[str, ...] | list[str] = LABELLED_ASPECTS,
) -> list[dict[str, Any]]:
    """Policy rows of the refusal set + the extra rows, sorted by id; each must label ``aspects``."""
    rows = [r for r in refusal_rows if r["source"].startswith("policy:")] + list(extra_rows)
    for r in rows:
        missing = [a for a in aspects if r["aspects"].get(a) is None]
        if missing:
            raise DataError(f"on-policy row {r['id']} ({r['source']}): aspect label(s) {missing} missing")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError("on-policy rows: the same prompt and reply appear twice")
    return sorted(rows, key=lambda r: r["id"])


def assign_parts(
    rows: list[dict[str, Any]], prompt_split: Any, benign_heldout_prompts: set[str]
) -> list[dict[str, Any]]:
    """Each row with its ``part``: held out when its prompt is a held-out evaluation prompt.

    Adversarial prompts split by ``prompt_split`` (the prompt hash the adversarial split uses); benign ones
    by membership of the held-out benign prompts (split by template family), falling back to the hash for a
    prompt that is not in the benign file. So the reward model never trains on a reply to a prompt the
    evaluation reports on, and the gate judges it on prompts it never saw.
    """
    out = []
    for r in rows:
        held = prompt_split(r["prompt"]) == "heldout"
        if r["prompt_kind"] == "benign" and normalize_prompt(r["prompt"]) in benign_heldout_prompts:
            held = True
        out.append({**r, "part": "heldout" if held else "tune"})
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    """data/onpolicy_set.jsonl: the refusal set's fields plus ``part``."""
    refusal_set.write(path, rows, (*refusal_set.FIELDS, "part"))


def _check_part_row(raw: Any, where: str) -> dict[str, Any]:
    row = refusal_set._check_row(raw, where)
    part = raw.get("part")
    if part not in PARTS:
        raise DataError(f"{where}: field 'part' must be one of {PARTS}, got {part!r}")
    return {**row, "part": part}


def load(path: Path) -> list[dict[str, Any]]:
    """data/onpolicy_set.jsonl as written by the data build (the refusal set's checks, plus ``part``)."""
    if not path.exists():
        raise DataError(f"{path} not found: run `safealign data build` (or `dvc pull`)")
    return refusal_set.load_checked(path, _check_part_row)


def heldout(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that judge the reward model (never trained on)."""
    return [r for r in rows if r.get("part") == "heldout"]


def blind_subset(rows: list[dict[str, Any]], n: int = BLIND_SIZE) -> list[dict[str, str]]:
    """``n`` rows for the second pass, WITHOUT labels; a seeded hash order, a quarter per (kind, refusal) cell
    where the cell has enough rows (agreement on a sample of one kind of reply says little)."""

    def key(r: dict[str, Any]) -> str:
        return hashlib.sha256(f"onpolicy-second-pass:{r['id']}".encode()).hexdigest()

    cells: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=key):
        cells.setdefault((r["prompt_kind"], r["refusal"]), []).append(r)
    chosen: list[dict[str, Any]] = []
    order = sorted(cells, key=lambda c: (len(cells[c]), c))  # small cells first; larger ones fill up
    for i, cell in enumerate(order):
        chosen += cells[cell][: (n - len(chosen)) // (len(order) - i)]
    return [{"id": r["id"], "prompt": r["prompt"], "reply": r["reply"]} for r in sorted(chosen, key=key)]


def load_second_pass(path: Path = SECOND_PASS_FILE) -> list[dict[str, Any]] | None:
    """The second labeller's rows ({id, aspects, refusal}), or None while nobody has done the pass."""
    if not path.exists():
        return None
    out = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("aspects"), dict):
            raise DataError(f"{path}:{lineno}: expected an object with 'id' and 'aspects'")
        out.append(row)
    return out


def agreement(
    first: list[dict[str, Any]], second: list[dict[str, Any]], aspects: list[str]
) -> dict[str, Any]:
    """Per aspect: n, MAE, Spearman, share within ``AGREE_WITHIN``; refusal label: agreement and kappa.

    Rows of the second pass that are not in the first (a stale blind file) are an error, not skipped.
    """
    from safealign.common.stats import cohen_kappa, spearman

    by_id = {r["id"]: r for r in first}
    unknown = [s["id"] for s in second if s["id"] not in by_id]
    if unknown:
        raise DataError(
            f"second pass: ids not in the on-policy set {unknown[:3]} (regenerate the blind file)"
        )
    out: dict[str, Any] = {"n_rows": len(second), "within": AGREE_WITHIN, "aspects": {}}
    for a in aspects:
        pairs = [
            (float(by_id[s["id"]]["aspects"][a]), float(s["aspects"][a]))
            for s in second
            if s["aspects"].get(a) is not None and by_id[s["id"]]["aspects"].get(a) is not None
        ]
        if not pairs:
            out["aspects"][a] = {"n": 0}
            continue
        x, y = np.array(pairs).T
        spread = float(((x - x.mean()) ** 2).sum())
        out["aspects"][a] = {
            "n": len(pairs),
            "r2": 1.0 - float(((x - y) ** 2).sum()) / spread if spread > 0 else None,
            "mae": float(np.abs(x - y).mean()),
            "spearman": spearman(x, y),
            "share_within": float((np.abs(x - y) < AGREE_WITHIN + 1e-9).mean()),
        }
    ref = [(bool(by_id[s["id"]]["refusal"]), bool(s["refusal"])) for s in second if "refusal" in s]
    if ref:
        a_, b_ = zip(*ref, strict=True)
        kappa = cohen_kappa(list(a_), list(b_))
        out["refusal"] = {
            "n": len(ref),
            "agreement": sum(x == y for x, y in ref) / len(ref),
            "kappa": None if kappa is None or math.isnan(kappa) else kappa,
        }
    return out


def label_agreement(rows: list[dict[str, Any]], aspects: list[str]) -> dict[str, Any]:
    """``agreement`` of every recorded second pass (``SECOND_PASSES``) with the first pass in ``rows``.

    A pass not recorded yet is None; a pass none of whose rows is in ``rows`` (a team's own on-policy set) is
    reported as not applicable rather than failing calibration; a pass only partly in ``rows`` is a stale
    blind file and fails in ``agreement``."""
    known = {r["id"] for r in rows}
    out: dict[str, Any] = {}
    for name, path in SECOND_PASSES.items():
        second = load_second_pass(path)
        if second is None:
            out[name] = None
        elif not any(s["id"] in known for s in second):
            out[name] = {"n_rows": 0, "note": f"no row of {path.name} is in this on-policy set"}
        else:
            out[name] = agreement(rows, second, aspects)
    return out
