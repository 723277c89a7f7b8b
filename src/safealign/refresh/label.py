"""One refresh round's new data: the policy's replies to TRAIN prompts, labelled, as a data version.

Why: the reward model was trained on templated replies; GRPO then finds what it misjudges in the policy's
own wording (Safe-RLHF's reason for refreshing the preference data between rounds). So the policy answers
train prompts (greedy, as the evaluation decodes), the configured annotator (``data.annotator``: the
offline rubric or the LLM judge) scores every aspect, and the rule refusal judge records whether the reply
refuses. The rows have the labelled data's schema plus ``refresh_round`` and ``policy_adapter`` (the
adapter's content hash), and go to ``data/refresh/round-N.jsonl``: inside data/, so they become part of
the next ``dvc add data`` version, and the file a round wrote is reused only for the same adapter.

Held-out prompts never enter: only the train splits are read, and a train prompt whose normalised text
also appears in a held-out split is dropped (validation already forbids that; this is the second lock,
because a leak here would train the reward model on the very replies the evaluation scores).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from safealign.common.atomic import atomic_file
from safealign.common.jsonl import iter_jsonl, read_prompt_rows
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.data.schema import PROMPT_KINDS, label_source_column, normalize_prompt, score_column
from safealign.errors import DataError

REFRESH_SUBDIR = "refresh"


def refresh_file(layout: Layout, round_no: int) -> Path:
    """``data/refresh/round-N.jsonl``: the rows round N adds to the reward data."""
    return layout.data_dir / REFRESH_SUBDIR / f"round-{round_no}.jsonl"


def _split(layout: Layout, kind: str, split: str) -> Path:
    return layout.adversarial_split(split) if kind == "adversarial" else layout.benign_split(split)


def heldout_prompts(layout: Layout) -> set[str]:
    """Normalised texts of every held-out prompt (adversarial and benign)."""
    out: set[str] = set()
    for kind in PROMPT_KINDS:
        path = _split(layout, kind, "heldout")
        if path.exists():
            out.update(normalize_prompt(r["prompt"]) for r in read_prompt_rows(path))
    return out


def choose_prompts(layout: Layout, n: int, seed: int) -> list[dict[str, str]]:
    """``n // 2`` adversarial and ``n - n // 2`` benign TRAIN prompts (fewer when a split is smaller), seeded.

    Each item: ``{"id", "prompt", "prompt_kind"}``, adversarial first, in a stable order.
    """
    held = heldout_prompts(layout)
    rng = random.Random(seed)
    chosen: list[dict[str, str]] = []
    for kind, want in zip(PROMPT_KINDS, (n // 2, n - n // 2), strict=True):
        path = _split(layout, kind, "train")
        rows = [r for r in read_prompt_rows(path) if normalize_prompt(r["prompt"]) not in held]
        picked = rng.sample(rows, min(want, len(rows)))
        chosen += [
            {"id": str(r.get("id", i)), "prompt": r["prompt"], "prompt_kind": kind}
            for i, r in enumerate(picked)
        ]
    if not chosen:
        raise DataError(f"no train prompts to sample in {layout.splits_dir}")
    return chosen


def label_rows(
    settings: Settings, prompts: list[dict[str, str]], replies: list[str], round_no: int, adapter_hash: str
) -> list[dict[str, Any]]:
    """Rows of the labelled schema: the annotator's scores per aspect, the refusal judge's verdict."""
    from safealign.data.annotators import make_annotator
    from safealign.refusal import judge

    annotator = make_annotator(settings)
    source = str(getattr(annotator, "name", settings.data.annotator.kind))
    rows = []
    for i, (item, reply) in enumerate(zip(prompts, replies, strict=True)):
        scores = annotator.annotate(item["prompt"], item["prompt_kind"], reply)
        verdict = judge(reply)
        row: dict[str, Any] = {
            "id": f"refresh-{round_no}-{i:05d}",
            "prompt": item["prompt"],
            "response": reply,
            "prompt_kind": item["prompt_kind"],
            "prompt_source": f"refresh:{item['prompt_kind']}:{item['id']}",
            "response_kind": {"refuse": "refusal", "comply": "compliance"}.get(verdict.verdict, "empty"),
            "refusal": verdict.is_refusal,
            "refresh_round": round_no,
            "policy_adapter": adapter_hash,
        }
        for aspect in settings.aspect_names:
            value = scores.get(aspect)
            row[score_column(aspect)] = None if value is None else round(float(value), 4)
            row[label_source_column(aspect)] = None if value is None else source
        rows.append(row)
    return rows


def sample_replies(settings: Settings, adapter_dir: Path, prompts: list[dict[str, str]]) -> list[str]:
    """Greedy replies of base + ``adapter_dir`` to ``prompts`` (the evaluation's decoding), read from the
    reply cache when this policy already answered these prompts (a rerun of the round)."""
    from safealign.policy.decoding import generate_replies
    from safealign.policy.loading import load_policy_with_adapter
    from safealign.policy.reply_cache import ReplyCache

    model, tokenizer = load_policy_with_adapter(settings, adapter_dir, merge=True)
    return generate_replies(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        system_prompt=settings.policy.system_prompt,
        max_new_tokens=settings.grpo.max_new_tokens,
        batch_size=settings.evaluate.batch_size,
        seed=settings.grpo.seed,
        cache=ReplyCache(settings.paths.cache_dir),
    )


def read_refresh(path: Path) -> list[dict[str, Any]]:
    """The rows of one refresh file; DataError names the file and row of anything malformed."""
    rows = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise DataError(f"{path}:{lineno}: fields 'prompt' and 'response' must be strings")
        rows.append(row)
    return rows


def write_refresh(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def refresh_key(settings: Settings, adapter_hash: str, round_no: int) -> str:
    """What decides a round's rows: the adapter that replies, how many prompts, decoding and labelling."""
    doc = {
        "adapter": adapter_hash,
        "round": round_no,
        "prompts": settings.grpo.refresh_prompts,
        "seed": settings.grpo.seed,
        "max_new_tokens": settings.grpo.max_new_tokens,
        "system_prompt": settings.policy.system_prompt,
        "annotator": settings.data.annotator.model_dump(mode="json"),
        "aspects": settings.aspect_names,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def refresh_round_data(
    settings: Settings, layout: Layout, adapter_dir: Path, adapter_hash: str, round_no: int
) -> tuple[Path, list[dict[str, Any]], bool]:
    """Round ``round_no``'s rows: read back when the same adapter and settings wrote them, else sampled.

    Returns ``(file, rows, reused)``. A file left by another adapter or other settings is replaced: the
    data version then changes, which ``safealign run`` reports until it is committed.
    """
    path = refresh_file(layout, round_no)
    key = refresh_key(settings, adapter_hash, round_no)
    if path.exists():
        rows = read_refresh(path)
        if rows and all(r.get("refresh_key") == key for r in rows):
            return path, rows, True
    prompts = choose_prompts(layout, settings.grpo.refresh_prompts, settings.grpo.seed + round_no)
    replies = sample_replies(settings, adapter_dir, prompts)
    labelled = label_rows(settings, prompts, replies, round_no, adapter_hash)
    rows = [row | {"refresh_key": key} for row in labelled]
    write_refresh(path, rows)
    return path, rows, False
