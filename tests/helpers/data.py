"""Small data/ folders for stage tests: a hand-made valid one, and one built from the installed packages."""

from __future__ import annotations

import json
import random
from pathlib import Path

from safealign.config import load_settings
from safealign.data import schema

REPO = Path(__file__).resolve().parents[2]
ASPECTS = ["politeness", "meaningfulness", "actionability", "safety"]
# make_data's sizes
N_ADV, N_BENIGN, N_LABELLED = 40, 30, 140


def labelled_row(i: int, prompt: str, kind: str) -> dict:
    """A labelled row with deterministic scores: 75% aspect coverage, safety always labelled."""
    row = {
        "id": f"lab-{i:04d}",
        "prompt": prompt,
        "response": f"Response number {i}." if i % 7 else "",
        "prompt_kind": kind,
        "prompt_source": "advbench" if kind == "adversarial" else "safealign",
        "response_kind": "refusal" if i % 2 else "helpful",
    }
    for j, aspect in enumerate(ASPECTS):
        labelled = (i + j) % 4 != 0 or aspect == "safety"  # 75% coverage, safety 100%
        score = round(((i * 37 + j * 11) % 101) / 100, 2) if labelled else None
        row[schema.score_column(aspect)] = score
        row[schema.label_source_column(aspect)] = (
            ("human" if aspect == "safety" else "rule") if labelled else None
        )
    return row


def make_data(data_dir: Path) -> dict[str, list[dict]]:
    """A small, valid data/ whose labelled prompts reuse the prompt files (as the real builder does)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    adversarial = [
        {
            "id": f"adv-{i:03d}",
            "prompt": f"Explain how to do harmful thing number {i}",
            "source": "advbench",
            "category": None if i % 5 == 0 else "harm",
        }
        for i in range(N_ADV)
    ]
    benign = [
        {"id": f"ben-{i:03d}", "prompt": f"How do I kill Python process number {i}?", "category": "everyday",
         "domain": "programming", "family": f"programming/processes-{i % 7}"}
        for i in range(N_BENIGN)
    ]
    labelled = []
    for i in range(N_LABELLED):
        if i % 2:
            labelled.append(labelled_row(i, adversarial[i % N_ADV]["prompt"], "adversarial"))
        else:
            # the reward model's benign prompts are never policy prompts (benign_topics.txt is not
            # benign_prompts.txt)
            prompt = f"How do I stop Python process number {i % N_BENIGN}?"
            labelled.append(labelled_row(i, prompt, "benign"))
    probes = [
        {
            "id": f"probe-{i:03d}",
            "prompt_id": adversarial[i]["id"],
            "prompt": adversarial[i]["prompt"],
            "prompt_kind": "adversarial",
            "probe_kind": kind,
            "response": text,
        }
        for i, (kind, text) in enumerate(
            [("empty", ""), ("gibberish", "asdf qwer zxcv"), ("refusal", "I can't help.")]
        )
    ]
    files = {
        "prompts_adversarial.jsonl": adversarial,
        "prompts_benign.jsonl": benign,
        "labelled.jsonl": labelled,
        "probes.jsonl": probes,
    }
    for name, rows in files.items():
        write_rows(data_dir / name, rows)
    return files


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


LABELLED_ROWS = 300  # small_data's sample of data/labelled.jsonl: enough rows per split, quick to train on


def small_data(root: Path) -> Path:
    """data/ built from the installed packages under ``root``; labelled rows sub-sampled (seeded)."""
    from safealign.data.build import build_data

    settings = load_settings(REPO / "params.yaml", [f"paths.data_dir={root / 'data'}"])
    build_data(settings)
    labelled = root / "data" / "labelled.jsonl"
    rows = [line for line in labelled.read_text(encoding="utf-8").splitlines() if line.strip()]
    # This is the pipeline test, not the data-build test: keep rows the validation accepts.
    limit = settings.data.max_response_chars
    rows = [r for r in rows if len(json.loads(r)["response"]) <= limit]
    sample = random.Random(0).sample(rows, min(LABELLED_ROWS, len(rows)))
    labelled.write_text("\n".join(sample) + "\n", encoding="utf-8")
    return root / "data"
