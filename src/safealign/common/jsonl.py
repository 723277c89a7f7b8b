"""One JSON-lines reader for the stages that read split and probe files.

Each stage checks its own fields; what every reader needs alike (skip blank lines, name the file and row of
a line that is not a JSON object) lives here once, and so does reading a prompt split, which GRPO (its
train prompts) and the evaluation (its held-out prompts) do alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safealign.errors import DataError


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, object) for each non-blank line; DataError names file and row otherwise."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {lineno}: not valid JSON ({exc.msg})") from exc
            except RecursionError as exc:  # the parser recurses per level: ~1,000 nested brackets
                raise DataError(f"{path}: row {lineno}: JSON nested too deeply") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {lineno}: expected an object")
            yield lineno, row


def read_prompt_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a prompt split file, each with a non-empty ``prompt``; DataError names file and row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: prompt split not found (run `safealign validate` first)")
    rows = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{path}:{lineno}: field 'prompt' missing or empty")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no prompts")
    return rows


def read_prompts(path: str | Path) -> list[str]:
    """The ``prompt`` column of a prompt split file (see :func:`read_prompt_rows`)."""
    return [row["prompt"] for row in read_prompt_rows(path)]
