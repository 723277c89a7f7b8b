"""The hand-labelled refusal set: real policy replies and written ones, each labelled against a rubric.

Why it exists: every refusal number the project reports (evaluation, promotion gates, checkpoint selection)
comes from a rule detector, and a detector nobody measured is an assumption. This set measures it. It is
also the shared human-labelled set of real replies for reward-model work, so each row has room for
per-aspect labels (``aspects``, null = not labelled).

Source of truth: ``texts/refusal_set.jsonl`` (committed, reviewed like code); ``safealign data build`` checks
it and copies it, with the rubric, into data/ (tracked by data.dvc). Row fields are in ``FIELDS``; the
rubric (``texts/refusal_rubric.md``) defines the categories.

Held-out part: ``split_of_row`` hashes the row id with a fixed salt. It was fixed before any detector change
was made, and detector changes are judged on the ``tune`` part only; the ``heldout`` part is what the
evaluation reports. The salt and fraction must never change (that would reshuffle the held-out rows).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from safealign.common.jsonl import iter_jsonl
from safealign.data.schema import PROMPT_KINDS, normalize_prompt
from safealign.errors import DataError

SOURCE_FILE = Path(__file__).with_name("texts") / "refusal_set.jsonl"
RUBRIC_FILE = Path(__file__).with_name("texts") / "refusal_rubric.md"
BLIND_FILE = Path(__file__).with_name("texts") / "refusal_second_pass_blind.jsonl"
SECOND_PASS_FILE = Path(__file__).with_name("texts") / "refusal_second_pass.jsonl"

# category -> the refusal label it implies (the rubric's table)
CATEGORIES: dict[str, bool] = {
    "direct_refusal": True,
    "indirect_refusal": True,
    "partial_refusal": True,
    "refusal_with_alternative": True,
    "redirect": True,
    "disclaimer_then_comply": False,
    "evasive": False,
    "off_topic": False,
    "compliance": False,
}
FIELDS = ("id", "prompt", "reply", "prompt_kind", "source", "category", "refusal", "labeller", "aspects")
SOURCES_PREFIXES = ("policy:", "written")
HELDOUT_SALT = "safealign-refusal-set-v1"
HELDOUT_FRACTION = 0.5
BLIND_SIZE = 100


def row_id(prompt: str, reply: str) -> str:
    """Stable id from the normalised prompt and the exact reply."""
    digest = hashlib.sha256(f"{normalize_prompt(prompt)}\0{reply}".encode()).hexdigest()
    return f"rs-{digest[:12]}"


def split_of_row(row_id_: str) -> str:
    """'heldout' or 'tune', by a fixed hash of the id (see the module docstring)."""
    digest = hashlib.sha256(f"{HELDOUT_SALT}:{row_id_}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION else "tune"


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    for field in ("prompt", "source", "labeller"):
        if not isinstance(row[field], str) or not row[field].strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string")
    if not isinstance(row["reply"], str):
        raise DataError(f"{where}: field 'reply' must be a string (it may be empty)")
    if row["prompt_kind"] not in PROMPT_KINDS:
        raise DataError(
            f"{where}: field 'prompt_kind' must be one of {PROMPT_KINDS}, got {row['prompt_kind']!r}"
        )
    if not row["source"].startswith(SOURCES_PREFIXES):
        raise DataError(
            f"{where}: field 'source' must start with one of {SOURCES_PREFIXES}, got {row['source']!r}"
        )
    if row["category"] not in CATEGORIES:
        raise DataError(
            f"{where}: field 'category' must be one of {sorted(CATEGORIES)}, got {row['category']!r}"
        )
    if not isinstance(row["refusal"], bool) or row["refusal"] != CATEGORIES[row["category"]]:
        raise DataError(
            f"{where}: field 'refusal' must be {CATEGORIES[row['category']]} for category {row['category']!r}"
        )
    if not isinstance(row["aspects"], dict) or any(
        v is not None and not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0)
        for v in row["aspects"].values()
    ):
        raise DataError(f"{where}: field 'aspects' must map aspect names to a number in [0, 1] or null")
    expected = row_id(row["prompt"], row["reply"])
    if row["id"] != expected:
        raise DataError(
            f"{where}: field 'id' is {row['id']!r}, expected {expected!r} (hash of prompt and reply)"
        )
    return {f: row[f] for f in FIELDS}


def load(path: Path = SOURCE_FILE) -> list[dict[str, Any]]:
    """Read and check every row; errors name the file, line and field. Rows come back sorted by id."""
    return load_checked(path, _check_row)


def load_checked(path: Path, check: Callable[[Any, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a reply file, each through ``check(raw, "file:line")``; a repeated id (same prompt and
    reply) or an empty file is an error. Shared by the refusal, on-policy and register sets."""
    if not path.exists():
        raise DataError(f"{path} not found")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, raw in iter_jsonl(path):
        row = check(raw, f"{path}:{lineno}")
        if row["id"] in seen:
            raise DataError(f"{path}:{lineno}: same prompt and reply as line {seen[row['id']]}")
        seen[row["id"]] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return sorted(rows, key=lambda r: r["id"])


def write(path: Path, rows: Iterable[dict[str, Any]], fields: Iterable[str] = FIELDS) -> None:
    """One sorted-key JSON object per line with ``fields``, so a regenerated file diffs cleanly. Written by
    temporary file and rename: a row that fails part way leaves the previous file as it was."""
    from safealign.common.atomic import atomic_file

    fields = tuple(fields)
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps({f: row[f] for f in fields}, sort_keys=True, ensure_ascii=False) + "\n")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "total": len(rows),
        "refusals": sum(r["refusal"] for r in rows),
        "heldout": sum(split_of_row(r["id"]) == "heldout" for r in rows),
        "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
        "by_prompt_kind": dict(sorted(Counter(r["prompt_kind"] for r in rows).items())),
    }


def blind_subset(rows: list[dict[str, Any]], n: int = BLIND_SIZE) -> list[dict[str, str]]:
    """The rows of the second labelling pass, WITHOUT the first pass's labels (id, prompt, reply only).

    Chosen by a seeded hash, stratified so refusals and non-refusals are both well represented (kappa on a
    sample that is nearly all one class says little).
    """

    def key(r: dict[str, Any]) -> str:
        return hashlib.sha256(f"second-pass:{r['id']}".encode()).hexdigest()

    yes = sorted((r for r in rows if r["refusal"]), key=key)
    no = sorted((r for r in rows if not r["refusal"]), key=key)
    half = min(n // 2, len(yes), len(no))
    chosen = yes[:half] + no[: n - half] if len(no) >= n - half else yes[: n - len(no)] + no
    return [{"id": r["id"], "prompt": r["prompt"], "reply": r["reply"]} for r in sorted(chosen, key=key)]
