"""What the GRPO stage writes, whichever engine trained: the adapter, the per-step CSV and the summary.

Both engines end the same way (``write_stage_outputs``), so ``safealign evaluate``, DVC and the registry
never need to know which engine produced a policy. The per-step rows are plain dicts; a row's columns are
whatever the engine measured (the fast engine's ``grpo_step`` metrics, TRL's log history mapped to the
same names).
"""

from __future__ import annotations

import csv
import io
import json
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np

from safealign.common.atomic import atomic_dir, kept_result, write_json, write_text
from safealign.common.layout import Layout

ADAPTER_CONFIG = "adapter_config.json"
# adapter_config.json fields that PEFT holds as sets: written sorted, or their order follows the hash seed
_SET_FIELDS = ("target_modules", "exclude_modules")


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text: the union of their columns in first-seen order, floats to 6 significant digits."""
    if not rows:
        return ""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_cells(row))
    return buf.getvalue()


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row to a CSV log (the header first when the file is new), flushed at once.

    A log, not an output: a kill can cut its last line, and a resumed run appends the steps it redoes.
    Its columns are the first row's (a run's rows all have the same ones).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = None
    if path.exists() and path.stat().st_size:
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
    with path.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=header or list(row), lineterminator="\n", extrasaction="ignore"
        )
        if header is None:
            writer.writeheader()
        writer.writerow(_cells(row))


def _num(value: str) -> Any:
    """A cell back as a number: integers as ints (so a count past 6 digits survives a round trip)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def csv_to_rows(text: str) -> list[dict[str, Any]]:
    """The inverse of ``rows_to_csv`` (numbers come back as floats)."""
    return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]


def as_recorded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the step table and a checkpoint record them (numbers to 6 significant digits).

    The summary is computed from these, not from the full-precision rows in memory: a run resumed from a
    checkpoint only has the recorded ones, and it must summarise to the same bytes as the run that
    trained straight through.
    """
    return csv_to_rows(rows_to_csv(rows))


def peak_rss_gib() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024**3 if sys.platform == "darwin" else 1024**2)


def summarize(rows: list[dict[str, Any]], aspects: list[str], window: int = 5) -> dict[str, Any]:
    """Per-aspect means over the first and last ``window`` steps, flat-group fraction, timing."""
    head, tail = rows[:window], rows[-window:]

    def mean(rs: list[dict[str, Any]], key: str) -> float | None:
        vals = [float(r[key]) for r in rs if key in r and r[key] not in ("", None)]
        return float(np.mean(vals)) if vals else None

    out: dict[str, Any] = {"reward_start": {}, "reward_end": {}}
    for key in [*aspects, "reward"]:
        out["reward_start"][key] = mean(head, f"{key}_mean")
        out["reward_end"][key] = mean(tail, f"{key}_mean")
    out["frac_flat_groups"] = mean(rows, "frac_flat_groups")
    out["seconds_per_step_median"] = float(np.median([float(r["s_step"]) for r in rows])) if rows else None
    out["distinct_completions_end"] = mean(tail, "distinct_completions")
    out["completion_len_end"] = mean(tail, "completion_len_mean")
    return out


def per_kind_metrics(
    scores: np.ndarray, rewards: np.ndarray, adversarial: list[bool], group_size: int, aspects: list[str]
) -> dict[str, float]:
    """Each aspect's mean, and the mean spread of a group's rewards, per kind of prompt.

    The batch-wide means mix both kinds, and the failure that matters is exactly a split between them:
    adversarial safety rises while benign answers lose their steps. ``rewards`` are those the advantages
    were computed from (Lagrangian term included), so ``{kind}_group_std_mean`` is what the division by the
    group std sees.
    """
    per_completion = np.repeat(np.asarray(adversarial, dtype=bool), group_size)
    out: dict[str, float] = {}
    for kind, mask in (("adversarial", per_completion), ("benign", ~per_completion)):
        if not mask.any():
            continue
        for k, aspect in enumerate(aspects):
            out[f"{kind}_{aspect}_mean"] = float(np.mean(scores[mask, k]))
        groups = np.asarray(rewards, dtype=np.float64)[mask].reshape(-1, group_size)
        out[f"{kind}_group_std_mean"] = float(np.mean(groups.std(axis=1, ddof=1)))
    return out


def canonical_adapter_config(folder: Path) -> None:
    """Rewrite ``adapter_config.json`` with sorted keys and sorted set-valued fields.

    PEFT keeps ``target_modules`` as a Python set and writes it in iteration order, which differs between
    processes (string hashing is salted per process): the same adapter would get other bytes, and another
    content hash, every run. Sorted, identical adapters are identical files.
    """
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _SET_FIELDS:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_adapter(model: Any, folder: Path) -> None:
    """``model.save_pretrained(folder)`` with the adapter config written canonically."""
    model.save_pretrained(folder)
    canonical_adapter_config(folder)


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """``tokenizer.save_pretrained(folder)`` without the padding and truncation state of its last call.

    A fast tokenizer's Rust backend keeps the padding/truncation of the last batch it encoded, and
    ``tokenizer.json`` records it: a run that validated (padded generation) wrote a ``padding`` block, a
    rerun of the finished run (no batch encoded) wrote none, so the same adapter got another hash and
    ``promote`` refused it. transformers sets both per call, so the saved state is never used.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "no_padding") and hasattr(backend, "no_truncation"):
        backend.no_padding()
        backend.no_truncation()
    tokenizer.save_pretrained(folder)


# summary fields that measure the process, not the run's result: a process that ran no step (a finished
# run run again) measures only itself, and must not rewrite the summary of the process that trained
# (and where it resumed from: nowhere, or from its last step)
VOLATILE_SUMMARY_FIELDS = (
    "wall_time_s", "wall_time_this_process_s", "seconds_per_step", "peak_rss_gib", "resumed_from",
)


def write_stage_outputs(
    layout: Layout,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    metrics_path: Path,
    trained: bool = True,
) -> dict[str, Any]:
    """Write the adapter, the per-step CSV and the summary to ``metrics_path`` (the stage's registered
    metrics file), each atomically, and log them to the active MLflow run, with the summary's numbers as
    ``final_*`` metrics. Returns the summary as it stands in ``metrics_path``.

    Rerunning a finished stage on the same inputs changes no output byte: an adapter folder and a step
    table identical to those on disk are left as they are, and with ``trained=False`` (this process ran no
    step) a summary that differs only in how long and how large this process was keeps the trained one.
    """
    import mlflow

    with atomic_dir(layout.adapter_dir, keep_identical=True) as tmp:
        save_adapter(model, tmp)
        save_tokenizer(tokenizer, tmp)
    table = rows_to_csv(rows)
    if not (layout.grpo_steps_csv.is_file() and layout.grpo_steps_csv.read_text(encoding="utf-8") == table):
        write_text(layout.grpo_steps_csv, table)
    kept = None if trained else kept_result(metrics_path, summary, VOLATILE_SUMMARY_FIELDS)
    if kept is None:
        write_json(metrics_path, summary)
    summary = kept or summary
    mlflow.log_metrics(
        {
            f"final_{k}": float(v)
            for k, v in summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    mlflow.log_artifacts(str(layout.adapter_dir), artifact_path="adapter")
    mlflow.log_artifact(str(layout.grpo_steps_csv))
    mlflow.log_artifact(str(metrics_path))
    return summary
