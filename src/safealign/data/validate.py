"""The validate stage: check data/, split it by prompt, and write the splits only if every check passes.

Order of work, and why:
1. Strict reading (safealign.data.readers): broken JSON, non-UTF-8 bytes, empty files, missing columns, NaN,
   out-of-range scores and oversized texts fail here with file, row and field, before any table exists.
2. Split assignment by prompt (schema.split_of): the same normalized prompt lands in the same split in
   every file. Adversarial and benign prompts have no 'val' use, so their 'val' share goes to train (GRPO).
   Benign prompts split by template family instead (benign.benign_split_of), so no held-out prompt has a
   sibling in training; they never occur in labelled.jsonl, so the two rules cannot disagree (the GX split
   check would catch it if they did).
3. The splits are written into a temporary directory, read back, and Great Expectations checks the input
   tables and the written splits (safealign.data.gx_suite).
4. Only when every expectation passes are the splits, the reports and metrics/validation.json renamed into
   place. On failure the previous good outputs stay byte-identical; the failed run's report goes to
   artifacts/validation_failed/ so it can be read without touching them.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from safealign import tracking
from safealign.common.atomic import atomic_dir, write_json, write_json_result, write_text
from safealign.common.layout import SPLITS, Layout
from safealign.common.nested import numeric_leaves
from safealign.config import Settings
from safealign.data import gx_suite, schema
from safealign.data.benign import benign_split_of
from safealign.data.readers import DataValidationError, Problem, Table, read_all
from safealign.errors import DataError

log = logging.getLogger(__name__)

PROMPT_SPLITS = ("train", "heldout")  # adversarial and benign prompts: val folded into train


# GX's own HTML pages under artifacts/validation/ (see _write_reports): renderings of gx/<suite>.json
GX_RENDERINGS = ("gx/*.html",)


def failed_report_dir(layout: Layout) -> Path:
    return layout.artifacts_dir / "validation_failed"


def assign_splits(settings: Settings, tables: dict[str, Table]) -> dict[str, list[dict[str, Any]]]:
    """'labelled/train' -> rows, ...; every row keeps its original columns and order."""
    d = settings.data
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        out[f"labelled/{split}"] = []
    for kind in schema.PROMPT_KINDS:
        for split in PROMPT_SPLITS:
            out[f"{kind}/{split}"] = []
    for kind, table in tables.items():
        if kind == "probes":
            continue
        for row in table.rows:
            if kind == "benign":
                # By template family, so a held-out benign prompt never has a sibling in training.
                split = benign_split_of(row["family"], d.seed, d.benign_heldout_fraction)
            else:
                split = schema.split_of(row["prompt"], d.seed, d.val_fraction, d.heldout_fraction)
            if kind != "labelled" and split == "val":
                split = "train"
            out[f"{kind}/{split}"].append(row)
    return out


def split_path(layout: Layout, label: str) -> Path:
    kind, split = label.split("/")
    return {
        "labelled": layout.labelled_split,
        "adversarial": layout.adversarial_split,
        "benign": layout.benign_split,
    }[kind](split)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts(
    settings: Settings, tables: dict[str, Table], splits: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    rows: dict[str, dict[str, int]] = {}
    for kind, table in tables.items():
        rows[kind] = {"total": len(table.rows)}
    for label, split_rows in splits.items():
        kind, split = label.split("/")
        rows[kind][split] = len(split_rows)
    labelled = tables["labelled"].rows
    coverage: dict[str, float] = {}
    sources: dict[str, dict[str, int]] = {}
    for aspect in settings.aspect_names:
        scored = [r for r in labelled if r.get(schema.score_column(aspect)) is not None]
        coverage[aspect] = round(len(scored) / len(labelled), 6) if labelled else 0.0
        sources[aspect] = dict(
            sorted(Counter(str(r.get(schema.label_source_column(aspect))) for r in scored).items())
        )
    return {"rows": rows, "coverage": coverage, "label_sources": sources}


def _index_html(report: dict[str, Any], pages: dict[str, str]) -> str:
    """A small landing page: verdict, counts, coverage, and links to GX's own page per suite."""
    e = html.escape
    verdict = "PASSED" if report["success"] else "FAILED"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>safealign data validation</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse;margin-bottom:1.5em}.FAILED{color:#b00}.PASSED{color:#070}</style>",
        f"</head><body><h1>Data validation: <span class='{verdict}'>{verdict}</span></h1>",
        f"<p>data version (data.dvc md5): <code>{e(str(report.get('data_version', 'n/a')))}</code></p>",
    ]
    if report.get("problems"):
        parts.append(
            "<h2>Problems</h2><table><tr><th>file</th><th>row</th><th>field</th><th>problem</th></tr>"
        )
        for p in report["problems"]:
            parts.append(
                f"<tr><td>{e(p['file'])}</td><td>{e(str(p['row']))}</td><td>{e(str(p['field']))}</td>"
                f"<td>{e(p['message'])}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Great Expectations suites</h2><table><tr><th>suite</th><th>file</th><th>passed</th>"
        "<th>expectations passed</th><th>GX report</th></tr>"
    )
    for name, suite in report["suites"].items():
        link = f"<a href='{e(pages[name])}'>{e(pages[name])}</a>" if name in pages else ""
        parts.append(
            f"<tr><td>{e(name)}</td><td>{e(suite['file'])}</td><td>{suite['success']}</td>"
            f"<td>{suite['successful']}/{suite['evaluated']}</td><td>{link}</td></tr>"
        )
    parts.append("</table>")
    if "rows" in report:
        parts.append(
            "<h2>Rows per file and split</h2><table><tr><th>file</th><th>split</th><th>rows</th></tr>"
        )
        for kind, counts in report["rows"].items():
            for split, n in counts.items():
                parts.append(f"<tr><td>{e(kind)}</td><td>{e(split)}</td><td>{n}</td></tr>")
        parts.append(
            "</table><h2>Label coverage per aspect</h2><table><tr><th>aspect</th><th>coverage</th>"
            "<th>label sources</th></tr>"
        )
        for aspect, cov in report["coverage"].items():
            parts.append(
                f"<tr><td>{e(aspect)}</td><td>{cov:.1%}</td><td>{e(json.dumps(report['label_sources'][aspect]))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _write_reports(
    target: Path, report: dict[str, Any], checks: list[gx_suite.Check], results: dict[str, Any]
) -> None:
    """report.json, report.html (landing page) and gx/<suite>.html + gx/<suite>.json (GX's own output)."""
    gx_dir = target / "gx"
    gx_dir.mkdir(parents=True, exist_ok=True)
    pages: dict[str, str] = {}
    for check in checks:
        result = results[check.name]
        (gx_dir / f"{check.name}.json").write_text(
            json.dumps(result.describe_dict(), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
        )
        try:
            (gx_dir / f"{check.name}.html").write_text(gx_suite.render_html(result), encoding="utf-8")
            pages[check.name] = f"gx/{check.name}.html"
        except Exception as exc:  # noqa: BLE001 - a renderer bug must not hide the verdict
            log.warning("GX could not render %s to HTML: %s", check.name, exc)
    write_json(target / "report.json", report)
    write_text(target / "report.html", _index_html(report, pages))


def _write_failure(
    layout: Layout, report: dict[str, Any], checks: list[gx_suite.Check], results: dict[str, Any]
) -> Path:
    failed = failed_report_dir(layout)
    with atomic_dir(failed) as tmp_failed:
        _write_reports(tmp_failed, report, checks, results)
    return failed


def _validate(settings: Settings, layout: Layout) -> dict[str, Any]:
    shutil.rmtree(failed_report_dir(layout), ignore_errors=True)  # a stale failure report would mislead
    try:
        tables = read_all(settings)
    except DataValidationError as exc:
        report = {
            "success": False,
            "stage": "strict reading",
            "suites": {},
            "problems": [p.__dict__ for p in exc.problems],
        }
        failed = _write_failure(layout, report, [], {})
        raise DataValidationError(
            exc.problems,
            hint=f"full report: {failed / 'report.html'} (outputs of the last good run are unchanged)",
        ) from None
    splits = assign_splits(settings, tables)
    checks = gx_suite.input_checks(settings, tables)
    base_report: dict[str, Any] = {
        "data_version": tracking.data_version(),
        "inputs": {
            name: {"file": str(t.spec.path), "sha256": _sha256(t.spec.path)} for name, t in tables.items()
        },
    }
    with contextlib.ExitStack() as stack:
        # a rerun on the same data leaves identical outputs as they are (issue 32: no output byte changes)
        tmp_splits = stack.enter_context(atomic_dir(layout.splits_dir, keep_identical=True))
        written: dict[str, Path] = {}
        for label, rows in splits.items():
            path = tmp_splits / split_path(layout, label).name
            _write_jsonl(path, rows)
            written[label] = path
        checks.append(gx_suite.split_check(gx_suite.read_split_files(written), str(layout.splits_dir)))
        results = gx_suite.run_checks(checks)
        problems: list[Problem] = []
        for check in checks:
            problems += gx_suite.problems_from(check, results[check.name])
        suites = {c.name: gx_suite.result_summary(c.name, c, results[c.name]) for c in checks}
        expectations = {
            key: sum(s[key] for s in suites.values()) for key in ("evaluated", "successful", "unsuccessful")
        }
        if problems:
            report = {
                **base_report,
                "success": False,
                "suites": suites,
                "expectations": expectations,
                "problems": [p.__dict__ for p in problems],
            }
            failed = _write_failure(layout, report, checks, results)
            raise DataValidationError(
                problems,
                hint=f"full report: {failed / 'report.html'} (outputs of the last good run are unchanged)",
            )
        summary = {"success": True, **_counts(settings, tables, splits), "expectations": expectations}
        report = {
            **base_report,
            **summary,
            "suites": suites,
            "splits": {label: str(split_path(layout, label)) for label in splits},
        }
        # GX's HTML pages carry the time they were rendered and random element ids: they count by name
        # only; what they show is compared through gx/*.json and report.json beside them
        tmp_validation = stack.enter_context(
            atomic_dir(layout.validation_dir, keep_identical=True, renderings=GX_RENDERINGS)
        )
        _write_reports(tmp_validation, report, checks, results)
        write_json_result(layout.metrics_file("validation"), summary)
    shutil.rmtree(failed_report_dir(layout), ignore_errors=True)
    return summary


def validate_data(settings: Settings) -> dict[str, Any]:
    """Validate data/ and write splits and reports atomically; DataError (exit 2) names file, row, field."""
    import mlflow

    layout = Layout.from_settings(settings)
    with tracking.stage_run(settings, "validate"):
        try:
            summary = _validate(settings, layout)
        except DataError as exc:
            mlflow.set_tag("safealign.validation_error", str(exc)[:5000])
            mlflow.log_metric("validation.success", 0.0)
            if failed_report_dir(layout).exists():
                mlflow.log_artifacts(str(failed_report_dir(layout)), artifact_path="validation_failed")
            raise
        mlflow.log_metrics(numeric_leaves(summary, "validation"))
        mlflow.log_artifacts(str(layout.validation_dir), artifact_path="validation")
    log.info("validation passed: %s", json.dumps(summary["rows"], sort_keys=True))
    return summary
