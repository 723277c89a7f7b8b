"""The Great Expectations 1.x suite for data/ and for the written splits.

One ephemeral GX context, one pandas data source, one dataframe asset per checked table, one suite per
asset. Every table carries a ``_line`` column (the 1-based line in its file) that GX returns as the
unexpected index, so a failed expectation points at file, row and field. The split check runs on the
split files as written (read back from disk), not on the in-memory assignment, so a bug in writing cannot
hide a prompt shared between train and held-out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from safealign.config import Settings
from safealign.data import schema
from safealign.data.readers import FileSpec, Problem, Table

LINE = "_line"
FILE = "_file"
log = logging.getLogger(__name__)
# GX logs its own import machinery at INFO, which buries the verdict when the CLI logs at INFO.
logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass
class Check:
    """One table to check: its frame, the file(s) it came from, and the expectations to run on it."""

    name: str
    file: str
    frame: pd.DataFrame
    expectations: list[Any]
    index_columns: tuple[str, ...] = (LINE,)


def table_frame(table: Table) -> pd.DataFrame:
    """Rows as a DataFrame with the line numbers; score columns as float64 (null -> NaN)."""
    spec = table.spec
    extra = sorted({k for row in table.rows for k in row} - set(spec.columns))
    frame = pd.DataFrame(table.rows, columns=list(spec.columns) + extra)
    frame.insert(0, LINE, pd.Series(table.lines, dtype="int64"))
    for col in spec.score_columns:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame


def _common(spec: FileSpec, not_null: tuple[str, ...], min_rows: int = 1) -> list[Any]:
    import great_expectations.expectations as gxe

    exps: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, meta={"check": "rows"})]
    exps += [gxe.ExpectColumnToExist(column=c) for c in spec.columns]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c, meta={"check": "required"}) for c in not_null]
    exps += [gxe.ExpectColumnValuesToBeOfType(column=c, type_="str") for c in not_null]
    exps.append(gxe.ExpectColumnValuesToBeUnique(column="id"))
    for col, (limit, setting) in spec.text_limits.items():
        exps.append(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=col, min_value=1 if col == "prompt" else 0, max_value=limit, meta={"setting": setting}
            )
        )
    return exps


def input_checks(settings: Settings, tables: dict[str, Table]) -> list[Check]:
    """The suite for each input file in data/."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    checks: list[Check] = []
    for name, table in tables.items():
        spec = table.spec
        frame = table_frame(table)
        if name == "adversarial":
            exps = _common(spec, ("id", "prompt", "source"))
        elif name == "benign":
            exps = _common(spec, ("id", "prompt", "category", "family"))
        elif name == "probes":
            exps = _common(spec, schema.PROBE_COLUMNS)
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(column="prompt_kind", value_set=list(schema.PROMPT_KINDS))
            )
        elif name == "labelled":
            exps = _common(spec, schema.LABELLED_BASE_COLUMNS, min_rows=settings.data.min_rows)
            exps.append(
                gxe.ExpectColumnValuesToBeInSet(column="prompt_kind", value_set=list(schema.PROMPT_KINDS))
            )
            for aspect in settings.aspect_names:
                score, source = schema.score_column(aspect), schema.label_source_column(aspect)
                exps += [
                    gxe.ExpectColumnValuesToBeOfType(column=score, type_="float64"),
                    gxe.ExpectColumnValuesToBeBetween(column=score, min_value=0.0, max_value=1.0),
                    # coverage: the share of rows that carry a label for this aspect
                    gxe.ExpectColumnValuesToNotBeNull(
                        column=score,
                        mostly=settings.data.min_label_coverage,
                        meta={"check": "coverage", "setting": "data.min_label_coverage"},
                    ),
                    gxe.ExpectColumnValuesToBeInSet(column=source, value_set=list(schema.LABEL_SOURCES)),
                    # label_source is null exactly when the score is
                    gxe.ExpectColumnValuesToBeNull(
                        column=source,
                        row_condition=Column(score).is_null(),
                        meta={"check": "source_iff_score"},
                    ),
                    gxe.ExpectColumnValuesToNotBeNull(
                        column=source,
                        row_condition=Column(score).is_not_null(),
                        meta={"check": "source_iff_score"},
                    ),
                ]
        else:  # pragma: no cover - file_specs and this function change together
            raise ValueError(f"no suite for {name}")
        checks.append(Check(name, str(spec.path), frame, exps))
    return checks


def read_split_files(paths: dict[str, Path]) -> pd.DataFrame:
    """Read written split files back: one row per line with file, line, split name, normalized prompt and
    near-duplicate key.

    ``paths`` maps a label like 'labelled/heldout' to its file.
    """
    import json

    rows: list[dict[str, Any]] = []
    for label, path in paths.items():
        kind, split = label.split("/")
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if line.strip():
                    row = json.loads(line)
                    prompt = row["prompt"]
                    rows.append(
                        {
                            FILE: str(path),
                            LINE: line_no,
                            "id": str(row.get("id", "")),
                            "kind": kind,
                            "split": split,
                            "normalized_prompt": schema.normalize_prompt(prompt),
                            "near_duplicate_key": schema.near_duplicate_key(prompt),
                        }
                    )
    return pd.DataFrame(
        rows, columns=[FILE, LINE, "id", "kind", "split", "normalized_prompt", "near_duplicate_key"]
    )


def split_check(frame: pd.DataFrame, label: str) -> Check:
    """No normalized prompt on two sides (held-out vs the rest, over every file), nor in two labelled splits.

    Near duplicates too: two prompts with the same ``schema.near_duplicate_key`` (a copy with punctuation,
    accents or look-alike letters changed) on both sides of the held-out line fail, since the split hash
    would place them independently. Rows already failing the exact check are not reported twice.

    GX has no 'values map to one group' expectation, so the group count per prompt is computed here and GX
    checks that it is exactly 1 on every row, which keeps file and line of each offending row.
    """
    import great_expectations.expectations as gxe

    frame = frame.copy()
    frame["side"] = frame["split"].where(frame["split"] == "heldout", "train_or_val")
    frame["sides_sharing_prompt"] = (
        frame.groupby("normalized_prompt")["side"].transform("nunique").astype("int64")
    )
    near_sides = frame.groupby("near_duplicate_key")["side"].transform("nunique").astype("int64")
    frame["sides_sharing_near_duplicate"] = near_sides.where(frame["sides_sharing_prompt"] == 1, 1)
    labelled = frame["kind"] == "labelled"
    counts = frame[labelled].groupby("normalized_prompt")["split"].nunique()
    frame["labelled_splits_sharing_prompt"] = (
        frame["normalized_prompt"].map(counts).where(labelled).astype("float64")
    )
    exps = [
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "heldout"]),
        gxe.ExpectColumnValuesToBeBetween(
            column="sides_sharing_prompt", min_value=1, max_value=1, meta={"check": "heldout_overlap"}
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="sides_sharing_near_duplicate",
            min_value=1,
            max_value=1,
            meta={"check": "heldout_near_duplicate"},
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="labelled_splits_sharing_prompt",
            min_value=1,
            max_value=1,
            meta={"check": "labelled_overlap"},
        ),
    ]
    return Check("splits", label, frame, exps, index_columns=(FILE, LINE, "id"))


def run_checks(checks: list[Check]) -> dict[str, Any]:
    """Run every check in one ephemeral GX context; returns name -> ExpectationSuiteValidationResult."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("safealign_data")
    results: dict[str, Any] = {}
    for check in checks:
        asset = source.add_dataframe_asset(check.name)
        batch = asset.add_batch_definition_whole_dataframe(f"{check.name}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"safealign_{check.name}"))
        for exp in check.expectations:
            suite.add_expectation(exp)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{check.name}", data=batch, suite=suite)
        )
        results[check.name] = definition.run(
            batch_parameters={"dataframe": check.frame},
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": list(check.index_columns),
                "partial_unexpected_count": 10,
            },
        )
    return results


def _row_of(entry: Any) -> int | None:
    if isinstance(entry, dict) and LINE in entry:
        return int(entry[LINE])
    return None


def problems_from(check: Check, result: Any) -> list[Problem]:
    """Turn each failed expectation into a Problem naming file, first failing row and field."""
    problems: list[Problem] = []
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        column = config.kwargs.get("column")
        meta = config.meta or {}
        info = res.exception_info or {}
        if info.get("raised_exception"):
            problems.append(
                Problem(
                    check.file, None, column, f"{config.type} could not run: {info.get('exception_message')}"
                )
            )
            continue
        r = res.result or {}
        index = r.get("partial_unexpected_index_list") or []
        rows = [x for x in (_row_of(e) for e in index) if x is not None]
        files = sorted({e.get(FILE) for e in index if isinstance(e, dict) and e.get(FILE)})
        ids = [e["id"] for e in index if isinstance(e, dict) and e.get("id")]
        file = ", ".join(files) if files else check.file
        values = [v for v in (r.get("partial_unexpected_list") or [])][:5]
        count, total = r.get("unexpected_count"), r.get("element_count")
        if config.type == "expect_table_row_count_to_be_between":
            msg = f"{r.get('observed_value')} rows, need at least {config.kwargs.get('min_value')}"
            if check.name == "labelled":
                msg += " (data.min_rows)"
        elif meta.get("check") == "coverage":
            covered = 1.0 - (r.get("unexpected_percent") or 0.0) / 100.0
            msg = (
                f"labelled on {covered:.1%} of rows, need at least {config.kwargs.get('mostly'):.1%} "
                f"({meta.get('setting')}); {count} rows have no label, the first at row "
                f"{rows[0] if rows else '?'}"
            )
            rows = []  # coverage is a property of the column, not of one row
        elif meta.get("check") == "heldout_near_duplicate":
            msg = (
                f"{count} rows have a near-duplicate prompt (equal after dropping punctuation, accents and "
                f"look-alike letters) on the other side of the held-out line: ids {ids[:6]} in "
                f"{', '.join(sorted({Path(f).name for f in files}))}; remove one copy or make them the same "
                f"prompt"
            )
        elif meta.get("check") in ("heldout_overlap", "labelled_overlap"):
            which = "held-out and train/val" if meta["check"] == "heldout_overlap" else "two labelled splits"
            msg = (
                f"{count} rows have a prompt (normalized) that is in {which}; e.g. rows {rows[:5]} of {file}"
                + (f" (ids {ids[:6]})" if ids else "")
            )
        elif config.type == "expect_column_to_exist":
            msg = "missing column"
        else:
            kwargs = {k: v for k, v in config.kwargs.items() if k not in ("column", "batch_id")}
            msg = f"{config.type}({kwargs}) failed" if kwargs else f"{config.type} failed"
            if count is not None:
                msg += f" on {count} of {total} rows"
            if rows:
                msg += f", e.g. rows {rows[:5]}"
            if values:
                shown = [
                    v if not isinstance(v, str) else (v[:60] + "..." if len(v) > 60 else v) for v in values
                ]
                msg += f", values {shown}"
            if meta.get("setting"):
                msg += f" ({meta['setting']})"
        problems.append(Problem(file, rows[0] if rows else None, column, msg))
    return problems


def render_html(result: Any) -> str:
    """GX's own validation-results page (the Data Docs renderer), as one standalone HTML string.

    The page loads its CSS and JS from public CDNs; offline it shows unstyled but complete content.
    """
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def result_summary(name: str, check: Check, result: Any) -> dict[str, Any]:
    """A compact, JSON-safe summary of one suite's result for report.json."""
    stats = result.statistics
    expectations = []
    for res in result.results:
        config = res.expectation_config
        r = res.result or {}
        expectations.append(
            {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "success": bool(res.success),
                "unexpected_count": r.get("unexpected_count"),
                "observed_value": r.get("observed_value")
                if isinstance(r.get("observed_value"), int | float | str)
                else None,
            }
        )
    return {
        "file": check.file,
        "success": bool(result.success),
        "evaluated": int(stats["evaluated_expectations"]),
        "successful": int(stats["successful_expectations"]),
        "unsuccessful": int(stats["unsuccessful_expectations"]),
        "expectations": expectations,
    }
