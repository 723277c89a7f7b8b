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

# The two kinds of prompt, the one spelling every layer uses (data rows, GRPO weights and selection,
# evaluation sets, refresh labelling): harmful requests to refuse, and benign ones to help with.
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


# Characters that render as nothing (or as a blank) but are not format characters (category Cf), so a test
# of the category alone keeps them: the Hangul fillers (U+3164 and its half-width and jamo forms; NFKC maps
# U+3164 and U+FFA0 to U+1160), the combining grapheme joiner, the Khmer inherent vowels, the Mongolian free
# variation selectors, the variation selectors (U+FE00-FE0F, U+E0100-E01EF) and the braille blank: Unicode's
# default-ignorable set less what Cf already covers, plus the braille blank.
_INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0, *range(0x180B, 0x1810),
     *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)  # fmt: skip


def _visible(text: str) -> str:
    """``text`` without characters that render as nothing: format characters (Unicode category Cf: zero-width
    spaces and joiners, word joiners, the BOM, soft hyphens, bidi marks) and the fillers and selectors of
    ``_INVISIBLE``, so they must not make two prompts differ.
    """
    return "".join(c for c in text if unicodedata.category(c) != "Cf" and ord(c) not in _INVISIBLE)


# Letters of other scripts that look like Latin ones (lower case, after case-folding) and that NFKC leaves
# alone: Cyrillic, Greek, Armenian, and Latin/IPA forms. A small hand-made table of the common ones from
# Unicode's confusables list (no installed dependency carries that list); full-width, mathematical and other
# compatibility forms are NFKC's job.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "һ": "h", "ԛ": "q",
        "ԝ": "w", "ӏ": "l", "ё": "e", "ї": "i",
        # Greek
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
        "χ": "x", "ϲ": "c", "ϳ": "j",
        # Armenian
        "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "զ": "q", "լ": "l", "ռ": "n",
        # Latin and IPA look-alikes
        "ı": "i", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ɪ": "i", "ʏ": "y", "ᴏ": "o", "ᴄ": "c", "ᴠ": "v",
        "ᴡ": "w", "ᴢ": "z",
    }
)  # fmt: skip


def normalize_prompt(text: str) -> str:
    """Case-, space-, Unicode-, look-alike- and invisible-character-insensitive key of a prompt's split.

    NFKC (compatibility forms: full-width letters, ligatures, mathematical letters, non-breaking spaces),
    invisible characters removed (``_visible``), case-folded, look-alike letters of other scripts mapped to
    Latin (``_CONFUSABLES``), whitespace runs folded to one space. A copy of a held-out prompt edited with
    any of these keys as the original and lands in the same split. A text with none of them keys exactly
    as before, so the splits of data without them are unchanged (tests/test_data_build.py pins that on the
    default data).
    """
    folded = _visible(unicodedata.normalize("NFKC", text)).casefold().translate(_CONFUSABLES)
    return " ".join(folded.split())


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
