"""The register set: refusals and hard negatives in the registers of other chat-model families.

Why it exists: the refusal set (:mod:`safealign.data.refusal_set`) comes from one small model's register,
and a detector tuned on it scored recall 0.72 on human-labelled replies of other chat models, below a plain
list of refusal openings. This set widens the wording the detector is measured on, one ``register`` per
family style (long moralising refusals, terse refusals, a safety lecture then a redirect, partial
compliance, "as an AI language model I do not condone ...", "it is not appropriate to ...", arguing
against the premise, needless refusals of safe prompts), and each register carries its own hard negatives
(compliance in the same register, factual answers about crimes or a fictional character's limits,
apologies followed by compliance). Evaluation holds a whole register out
(:mod:`safealign.evaluation.registers`): that is the figure that predicts a model the detector never saw.

Source of truth: ``texts/register_set.jsonl`` (written for this project, committed, reviewed like code;
regenerate with ``scripts/write_register_set.py``). Labels follow the refusal set's rubric
(``texts/refusal_rubric.md``); the categories and their refusal labels are the same. A second, blind
labelling pass over ``texts/register_second_pass_blind.jsonl`` is in ``texts/register_second_pass.jsonl``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safealign.common.jsonl import iter_jsonl
from safealign.data import refusal_set
from safealign.data.refusal_set import CATEGORIES
from safealign.data.schema import PROMPT_KINDS, normalize_prompt
from safealign.errors import DataError

TEXTS = Path(__file__).with_name("texts")
SOURCE_FILE = TEXTS / "register_set.jsonl"
BLIND_FILE = TEXTS / "register_second_pass_blind.jsonl"
SECOND_PASS_FILE = TEXTS / "register_second_pass.jsonl"

# register -> (the chat-model family whose public style it is written in, what it looks like)
REGISTERS: dict[str, tuple[str, str]] = {
    "moralising_long": (
        "Llama-2-chat-like",
        "long, apologetic, moralising refusals; warm preambles before compliance",
    ),
    "ai_language_model": (
        "GPT-3.5-era-like",
        "'As an AI language model, I do not condone ...'; third-person declines",
    ),
    "terse": ("GPT-4o / Claude-3-like", "one-line refusals and one-line answers"),
    "lecture_redirect": ("Gemini/Bard-like", "bold-faced safety lecture, bullet lists, then a redirect"),
    "safer_version": ("GPT-4-like", "partial compliance: general background, the operational part declined"),
    "not_appropriate": (
        "Vicuna/Mistral-instruct-like",
        "'It is not appropriate / ethical / respectful to ...'",
    ),
    "premise_pushback": ("Claude-2-like", "argues against the premise instead of doing the task"),
    "over_refusal": ("several families", "needless refusals of safe prompts, beside plain answers to them"),
}
# The original refusal set's register (SmolLM2-135M and text written to match it), for evaluation only.
SMOLLM2_REGISTER = "smollm2"
FIELDS = ("id", "prompt", "reply", "prompt_kind", "register", "category", "refusal", "labeller", "source")
SOURCE = "written:register-set"
BLIND_SIZE = 120


def row_id(prompt: str, reply: str) -> str:
    """Stable id from the normalised prompt and the exact reply (prefix ``rg-``, apart from ``rs-``)."""
    digest = hashlib.sha256(f"{normalize_prompt(prompt)}\0{reply}".encode()).hexdigest()
    return f"rg-{digest[:12]}"


def _check_row(row: Any, where: str) -> dict[str, Any]:
    """One row against the schema; the error names the place (file:line) and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    for field in ("prompt", "reply", "labeller", "source"):
        if not isinstance(row[field], str) or not row[field].strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string")
    if row["prompt_kind"] not in PROMPT_KINDS:
        raise DataError(
            f"{where}: field 'prompt_kind' must be one of {PROMPT_KINDS}, got {row['prompt_kind']!r}"
        )
    if row["register"] not in REGISTERS:
        raise DataError(
            f"{where}: field 'register' must be one of {sorted(REGISTERS)}, got {row['register']!r}"
        )
    if row["category"] not in CATEGORIES:
        raise DataError(
            f"{where}: field 'category' must be one of {sorted(CATEGORIES)}, got {row['category']!r}"
        )
    if not isinstance(row["refusal"], bool) or row["refusal"] != CATEGORIES[row["category"]]:
        raise DataError(
            f"{where}: field 'refusal' must be {CATEGORIES[row['category']]} for category {row['category']!r}"
        )
    if (
        "{" in row["reply"]
        and "}" in row["reply"]
        and any(f"{{{k}}}" in row["reply"] for k in ("act", "ger", "ans"))
    ):
        raise DataError(f"{where}: field 'reply' still holds an unfilled slot")
    expected = row_id(row["prompt"], row["reply"])
    if row["id"] != expected:
        raise DataError(
            f"{where}: field 'id' is {row['id']!r}, expected {expected!r} (hash of prompt and reply)"
        )
    return {f: row[f] for f in FIELDS}


def load(path: Path = SOURCE_FILE) -> list[dict[str, Any]]:
    """Read and check every row; errors name the file, line and field. Rows come back sorted by id."""
    return refusal_set.load_checked(path, _check_row)


def write(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One sorted-key JSON object per line, so a regenerated file diffs cleanly."""
    refusal_set.write(path, rows, FIELDS)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per register, category and prompt kind (what docs/evaluation.md reports)."""
    return {
        "total": len(rows),
        "refusals": sum(r["refusal"] for r in rows),
        "by_register": {
            reg: {
                "rows": sum(r["register"] == reg for r in rows),
                "refusals": sum(r["register"] == reg and r["refusal"] for r in rows),
            }
            for reg in REGISTERS
        },
        "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
        "by_prompt_kind": dict(sorted(Counter(r["prompt_kind"] for r in rows).items())),
    }


def as_refusal_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register rows in the refusal set's shape (``source`` kept, ``aspects`` empty), for shared tooling."""
    return [dict(r, aspects={}) for r in rows]


def blind_subset(rows: list[dict[str, Any]], n: int = BLIND_SIZE) -> list[dict[str, str]]:
    """The second pass's rows WITHOUT labels or register (id, prompt, reply only), by a seeded hash.

    Stratified by register (n / registers each) and, inside a register, half refusals and half not, so
    kappa is measured on every register's wording and on both classes.
    """

    def key(r: dict[str, Any]) -> str:
        return hashlib.sha256(f"register-second-pass:{r['id']}".encode()).hexdigest()

    per = max(2, n // len(REGISTERS))
    chosen: list[dict[str, Any]] = []
    for reg in REGISTERS:
        yes = sorted((r for r in rows if r["register"] == reg and r["refusal"]), key=key)
        no = sorted((r for r in rows if r["register"] == reg and not r["refusal"]), key=key)
        chosen += yes[: per // 2] + no[: per - per // 2]
    return [{"id": r["id"], "prompt": r["prompt"], "reply": r["reply"]} for r in sorted(chosen, key=key)]


def load_second_pass(path: Path = SECOND_PASS_FILE) -> list[dict[str, Any]] | None:
    """The blind second pass's labels (``id``, ``refusal``, ``category``, ``labeller``), or None if absent."""
    if not path.exists():
        return None
    out = []
    for lineno, raw in iter_jsonl(path):
        if not isinstance(raw, dict) or not isinstance(raw.get("refusal"), bool) or not raw.get("id"):
            raise DataError(f"{path}:{lineno}: each row needs 'id' and a boolean 'refusal'")
        if raw.get("category") is not None and raw["category"] not in CATEGORIES:
            raise DataError(f"{path}:{lineno}: field 'category' must be one of {sorted(CATEGORIES)}")
        out.append(raw)
    return out
