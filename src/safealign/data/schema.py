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
# response_kind of labelled rows that are real policy replies labelled by hand (the on-policy set's tune
# part): the reward trainer repeats them (reward.real_reply_repeat)
REAL_REPLY_KIND = "policy_reply"


def score_column(aspect: str) -> str:
    return f"score_{aspect}"


def label_source_column(aspect: str) -> str:
    return f"label_source_{aspect}"


def labelled_columns(aspects: list[str]) -> list[str]:
    cols = list(LABELLED_BASE_COLUMNS)
    for aspect in aspects:
        cols += [score_column(aspect), label_source_column(aspect)]
    return cols


def _visible(text: str) -> str:
    """``text`` without format characters (Unicode category Cf): zero-width spaces and joiners, word
    joiners, the BOM, soft hyphens and bidi marks render as nothing, so they must not make two prompts differ.
    """
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def normalize_prompt(text: str) -> str:
    """Case-, space-, Unicode- and invisible-character-insensitive key that decides a prompt's split.

    NFKC (compatibility forms: full-width letters, ligatures, non-breaking spaces), format characters
    removed, case-folded, whitespace runs folded to one space. A text with no format character keys exactly
    as before they were removed, so the splits of data without them are unchanged.
    """
    return " ".join(_visible(unicodedata.normalize("NFKC", text)).casefold().split())


# Latin look-alikes in Cyrillic and Greek (lower case, after case-folding) that NFKC leaves alone.
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "һ": "h", "ԛ": "q",
        "ԝ": "w", "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
        "υ": "u", "χ": "x",
    }
)  # fmt: skip


def near_duplicate_key(text: str) -> str:
    """Key under which trivially edited copies of a prompt collide: the held-out line must not separate them.

    On top of :func:`normalize_prompt`: accents stripped (NFKD, combining marks dropped), Cyrillic and Greek
    look-alikes mapped to Latin, and everything but letters and digits dropped (punctuation, spacing,
    emoji). So "How do I bake bread?", "how do i bake bread!!" and "how dо i bake bread" (Cyrillic о) share
    a key. A prompt with no letter or digit keys by its normalised form, so such prompts do not all collide.
    """
    folded = unicodedata.normalize("NFKD", normalize_prompt(text))
    folded = "".join(c for c in folded if not unicodedata.combining(c)).translate(_CONFUSABLES)
    key = "".join(c for c in folded if c.isalnum())
    return key or normalize_prompt(text)


def split_of(prompt: str, seed: int, val_fraction: float, heldout_fraction: float) -> str:
    """Deterministic split by prompt: the same prompt is in the same split in every file and run."""
    digest = hashlib.sha256(f"{seed}:{normalize_prompt(prompt)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < heldout_fraction:
        return "heldout"
    if u < heldout_fraction + val_fraction:
        return "val"
    return "train"
