"""The columns of every file in data/, shared by the builder, the validator and the trainers.

labelled.jsonl is flat (one column per aspect) so that Great Expectations can check it column by column:
``score_<aspect>`` is a float in [0, 1] or null (not labelled), ``label_source_<aspect>`` says who gave
the score (human, rule, judge) and is null exactly when the score is.
"""

from __future__ import annotations

import hashlib
import unicodedata

ADVERSARIAL_COLUMNS = ("id", "prompt", "source", "category")
BENIGN_COLUMNS = ("id", "prompt", "category", "domain", "family")
PROBE_COLUMNS = ("id", "prompt_id", "prompt", "prompt_kind", "probe_kind", "response")
LABELLED_BASE_COLUMNS = ("id", "prompt", "response", "prompt_kind", "prompt_source", "response_kind")

PROMPT_KINDS = ("adversarial", "benign")
LABEL_SOURCES = ("human", "rule", "judge")


def score_column(aspect: str) -> str:
    return f"score_{aspect}"


def label_source_column(aspect: str) -> str:
    return f"label_source_{aspect}"


def labelled_columns(aspects: list[str]) -> list[str]:
    cols = list(LABELLED_BASE_COLUMNS)
    for aspect in aspects:
        cols += [score_column(aspect), label_source_column(aspect)]
    return cols


def normalize_prompt(text: str) -> str:
    """Case-, space- and Unicode-insensitive key, so near-identical prompts land in the same split."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def split_of(prompt: str, seed: int, val_fraction: float, heldout_fraction: float) -> str:
    """Deterministic split by prompt: the same prompt is in the same split in every file and run."""
    digest = hashlib.sha256(f"{seed}:{normalize_prompt(prompt)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < heldout_fraction:
        return "heldout"
    if u < heldout_fraction + val_fraction:
        return "val"
    return "train"
