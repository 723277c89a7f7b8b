"""Write src/safealign/data/texts/register_set.jsonl (and the blind second-pass file) from the banks.

The banks (scripts/register_set/topics.py, frames.py, fixed.py) are written by hand for this project. Every
register has its own frames, each frame its own label decided against the rubric when it was written, and
each frame is filled with several different topics (seeded choice, so the output is the same everywhere).
Fixed rows are written whole. Run from the repository root:

    PYTHONPATH=src python scripts/write_register_set.py            # rewrite both files
    PYTHONPATH=src python scripts/write_register_set.py --check    # fail if the committed files differ
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "register_set"))

from fixed import FIXED  # noqa: E402
from frames import FRAMES  # noqa: E402
from topics import ADV, BEN  # noqa: E402

from safealign.data import register_set  # noqa: E402
from safealign.data.refusal_set import CATEGORIES  # noqa: E402

LABELLER = "first-pass (author, label fixed per frame against the rubric when written)"
# rows per frame, by register and frame list
PER_FRAME = {
    "moralising_long": {
        "adv_refuse": 4,
        "adv_comply": 4,
        "ben_comply": 4,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "ai_language_model": {
        "adv_refuse": 4,
        "adv_comply": 4,
        "ben_comply": 4,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "terse": {"adv_refuse": 3, "adv_comply": 3, "ben_comply": 4, "ben_refuse": 4, "adv_comply_long": 5},
    "lecture_redirect": {
        "adv_refuse": 5,
        "adv_comply": 4,
        "ben_comply": 5,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "safer_version": {
        "adv_refuse": 4,
        "adv_comply": 3,
        "ben_comply": 4,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "not_appropriate": {
        "adv_refuse": 4,
        "adv_comply": 4,
        "ben_comply": 5,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "premise_pushback": {
        "adv_refuse": 4,
        "adv_comply": 4,
        "ben_comply": 6,
        "ben_refuse": 4,
        "adv_comply_long": 5,
    },
    "over_refusal": {"ben_refuse": 3, "ben_comply": 6},
}
# words that make a frame wrong for a self-harm request (it is about the law or about other people)
_NOT_FOR_SELF = ("illegal", "offense", "crime", "law", "others", "victim", "anyone", "people", "criminal")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _low(s: str) -> str:
    return s[:1].lower() + s[1:]


def fill(frame: str, topic: dict[str, str]) -> str:
    """The frame with the topic's slots filled (capitalised and lower-cased variants included)."""
    values = dict(topic)
    values.update(
        Ger=_cap(topic.get("ger", "")),
        Harm=_cap(topic.get("harm", "")),
        alt_lc=_low(topic.get("alt", "")),
    )
    return frame.format(**values)


def _fits(frame: str, topic: dict[str, str]) -> bool:
    return not (topic.get("self") and any(w in frame.lower() for w in _NOT_FOR_SELF))


def _framed_rows(register: str, rng: random.Random) -> list[dict[str, Any]]:
    """Rows of one register made from its frames: each frame with k different topics, spread evenly."""
    rows = []
    for part, k in PER_FRAME[register].items():
        bank = ADV if part.startswith("adv") else BEN
        order = list(range(len(bank)))
        rng.shuffle(order)
        cursor = 0
        for category, frame in FRAMES[register][part]:
            used = 0
            tries = 0
            while used < k and tries < len(bank):
                topic = bank[order[cursor % len(order)]]
                cursor += 1
                tries += 1
                if not _fits(frame, topic):
                    continue
                kind = "adversarial" if part.startswith("adv") else "benign"
                rows.append(_row(topic["p"], fill(frame, topic), kind, register, category))
                used += 1
    return rows


def _row(prompt: str, reply: str, kind: str, register: str, category: str) -> dict[str, Any]:
    return {
        "id": register_set.row_id(prompt, reply),
        "prompt": prompt,
        "reply": reply,
        "prompt_kind": kind,
        "register": register,
        "category": category,
        "refusal": CATEGORIES[category],
        "labeller": LABELLER,
        "source": register_set.SOURCE,
    }


def build_rows() -> list[dict[str, Any]]:
    """Every row of the register set, sorted by id, duplicates (same prompt and reply) dropped."""
    rows: dict[str, dict[str, Any]] = {}
    for register in register_set.REGISTERS:
        rng = random.Random(f"register-set:{register}")
        made = _framed_rows(register, rng)
        made += [_row(p, reply, kind, register, cat) for p, kind, cat, reply in FIXED.get(register, [])]
        for r in made:
            rows.setdefault(r["id"], r)
    return sorted(rows.values(), key=lambda r: r["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files, write nothing"
    )
    parser.add_argument(
        "--new-blind",
        action="store_true",
        help="also redraw the blind second-pass file (its labels in register_second_pass.jsonl then need "
        "redoing)",
    )
    args = parser.parse_args(argv)
    rows = build_rows()
    blind = register_set.blind_subset(rows)
    if args.check:
        current = [r["id"] for r in register_set.load()]
        same = current == [r["id"] for r in rows]
        print("register set up to date" if same else "register set differs from the banks")
        return 0 if same else 1
    register_set.write(register_set.SOURCE_FILE, rows)
    if args.new_blind or not register_set.BLIND_FILE.exists():
        with open(register_set.BLIND_FILE, "w", encoding="utf-8", newline="\n") as fh:
            for b in blind:
                fh.write(json.dumps(b, sort_keys=True, ensure_ascii=False) + "\n")
    register_set.load()  # the written file passes the loader's checks
    print(json.dumps(register_set.summary(rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
