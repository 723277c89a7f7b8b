"""Strict JSONL readers for data/: the first line of defence, before Great Expectations.

Great Expectations checks a table; it cannot say anything useful about a file that is not a table yet (a
broken JSON line, bytes that are not UTF-8, an empty file, a NaN that Python's json module happily parses,
a 2 MB prompt that would blow up tokenization). This module turns every such input into a
:class:`DataValidationError` whose problems each name the file, the row (the 1-based line number in the
file, so ``sed -n 7p FILE`` shows it) and the field.
"""

from __future__ import annotations

import codecs
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data import schema
from safealign.errors import DataError

MAX_PROBLEMS = 20  # problems listed in one error message; more are counted, not listed


@dataclass(frozen=True)
class Problem:
    """One bad value: where it is (file, row = line number, field) and what is wrong with it."""

    file: str
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}"
        if self.field is not None:
            where += f" field '{self.field}'"
        return f"{where}: {self.message}"


class DataValidationError(DataError):
    """A DataError that keeps its problems as data (tests and reports read them; the CLI prints the text)."""

    def __init__(self, problems: list[Problem], total: int | None = None, hint: str = "") -> None:
        self.problems = list(problems)
        total = len(problems) if total is None else total
        shown = self.problems[:MAX_PROBLEMS]
        lines = [f"data validation failed ({total} problem{'s' if total != 1 else ''}):"]
        lines += [f"  {p}" for p in shown]
        if total > len(shown):
            lines.append(f"  ... and {total - len(shown)} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class FileSpec:
    """What one data file must look like to the strict reader."""

    name: str
    path: Path
    columns: tuple[str, ...]
    text_limits: dict[str, tuple[int, str]] = field(default_factory=dict)  # column -> (max chars, setting)
    score_columns: tuple[str, ...] = ()
    string_columns: tuple[str, ...] = ()  # must be a string or null (null is GX's business)


@dataclass
class Table:
    """Rows of one file with the line number each came from."""

    spec: FileSpec
    rows: list[dict[str, Any]]
    lines: list[int]


def file_specs(settings: Settings) -> list[FileSpec]:
    """The four input files, their required columns and limits, from Layout and schema."""
    layout = Layout.from_settings(settings)
    d = settings.data
    prompt_limit = (d.max_prompt_chars, "data.max_prompt_chars")
    response_limit = (d.max_response_chars, "data.max_response_chars")
    aspects = settings.aspect_names
    labelled_cols = tuple(schema.labelled_columns(aspects))
    scores = tuple(schema.score_column(a) for a in aspects)
    return [
        FileSpec(
            "adversarial",
            layout.adversarial_prompts,
            schema.ADVERSARIAL_COLUMNS,
            {"prompt": prompt_limit},
            string_columns=schema.ADVERSARIAL_COLUMNS,
        ),
        FileSpec(
            "benign",
            layout.benign_prompts,
            schema.BENIGN_COLUMNS,
            {"prompt": prompt_limit},
            string_columns=schema.BENIGN_COLUMNS,
        ),
        FileSpec(
            "labelled",
            layout.labelled,
            labelled_cols,
            {"prompt": prompt_limit, "response": response_limit},
            score_columns=scores,
            string_columns=tuple(c for c in labelled_cols if c not in scores),
        ),
        FileSpec(
            "probes",
            layout.probes,
            schema.PROBE_COLUMNS,
            {"prompt": prompt_limit, "response": response_limit},
            string_columns=schema.PROBE_COLUMNS,
        ),
    ]


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def _decode(spec: FileSpec, raw: bytes) -> str:
    """UTF-8 or a problem naming the row and, where the line still parses, the field with the bad bytes."""
    fname = str(spec.path)
    if raw.startswith(codecs.BOM_UTF8):
        raise DataValidationError(
            [Problem(fname, 1, None, "starts with a UTF-8 byte-order mark; write plain UTF-8 without BOM")]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line_end = raw.find(b"\n", exc.start)
        line = raw[line_start : line_end if line_end >= 0 else len(raw)]
        bad_field = None
        try:
            obj = json.loads(line.decode("utf-8", errors="replace"))
            if isinstance(obj, dict):
                bad_field = next((k for k, v in obj.items() if isinstance(v, str) and "\ufffd" in v), None)
        except ValueError:
            pass
        raise DataValidationError(
            [
                Problem(
                    fname,
                    row,
                    bad_field,
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at file offset {exc.start}: "
                    f"{exc.reason}); "
                    "data files must be UTF-8 encoded",
                )
            ]
        ) from None


def _check_row(spec: FileSpec, obj: dict[str, Any], row: int) -> list[Problem]:
    fname = str(spec.path)
    problems: list[Problem] = []
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(
                Problem(
                    fname,
                    row,
                    key,
                    f"{value} is not a number; JSON has no NaN or Infinity (use null for 'no label')",
                )
            )
    for col in spec.columns:
        if col not in obj:
            problems.append(Problem(fname, row, col, "missing column"))
    for col in spec.string_columns:
        value = obj.get(col)
        if value is not None and not isinstance(value, str):
            problems.append(
                Problem(fname, row, col, f"expected a string or null, got {_type_name(value)} {value!r:.40}")
            )
    for col in spec.score_columns:
        value = obj.get(col)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(
                Problem(
                    fname,
                    row,
                    col,
                    f"expected a score in [0, 1] or null, got {_type_name(value)} {value!r:.40}",
                )
            )
        elif not 0.0 <= value <= 1.0:
            problems.append(Problem(fname, row, col, f"score {value!r} is outside [0, 1]"))
    for col, (limit, setting) in spec.text_limits.items():
        value = obj.get(col)
        if isinstance(value, str) and len(value) > limit:
            problems.append(
                Problem(
                    fname, row, col, f"{len(value):,} characters, over the limit of {limit:,} ({setting})"
                )
            )
    return problems


def read_table(spec: FileSpec) -> tuple[Table, list[Problem]]:
    """Read one JSONL file strictly: fatal problems (missing, empty, not UTF-8) raise, row problems return."""
    fname = str(spec.path)
    if not spec.path.is_file():
        raise DataValidationError(
            [Problem(fname, None, None, "file not found")],
            hint="restore data/ with `dvc checkout data.dvc` or rebuild it with `safealign data build`",
        )
    raw = spec.path.read_bytes()
    if not raw.strip():
        raise DataValidationError([Problem(fname, None, None, "empty file: no rows")])
    text = _decode(spec, raw)
    table = Table(spec, [], [])
    problems: list[Problem] = []
    for row, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue  # blank lines (and the final newline) carry no row
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(fname, row, None, f"malformed JSON at character {exc.colno}: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(fname, row, None, f"expected a JSON object, got {_type_name(obj)}"))
            continue
        problems += _check_row(spec, obj, row)
        table.rows.append(obj)
        table.lines.append(row)
    return table, problems


def read_all(settings: Settings) -> dict[str, Table]:
    """Read every input file strictly; raise one DataValidationError listing the problems of all files."""
    tables: dict[str, Table] = {}
    problems: list[Problem] = []
    for spec in file_specs(settings):
        try:
            table, found = read_table(spec)
        except DataValidationError as exc:
            problems += exc.problems
            continue
        tables[spec.name] = table
        problems += found
    if problems:
        raise DataValidationError(problems)
    return tables
