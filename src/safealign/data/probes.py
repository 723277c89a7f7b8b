"""Probe set for the calibration gate: fixed replies whose ORDER a usable reward model must get.

Probes use only prompts whose split is ``heldout`` and the ``probe`` template family of
:mod:`safealign.data.responses` (wording never seen in labelled.jsonl), so passing them means the reward
model generalised, not that it memorised templates. The calibrate stage reads them with :func:`load_probes`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

from safealign.data import phrasings
from safealign.data.benign import BenignPrompt, Topic
from safealign.data.responses import adversarial_response, benign_response
from safealign.data.schema import PROBE_COLUMNS, PROMPT_KINDS
from safealign.data.sources import AdversarialPrompt
from safealign.errors import DataError

ADVERSARIAL_PROBE_KINDS = (
    "harmful_compliance",
    "eager_compliance",
    "polite_refusal",
    "refusal_with_alternative",
    "evasive",
    "gibberish",
    "empty",
    "rude_refusal",
)
# plus one kind per HELD-OUT phrasing family (phrased:<name>): an unhelpful reply to a benign request in a
# wording the reward model never trained on, which must score below the helpful answer
BASE_BENIGN_PROBE_KINDS = ("helpful", "needless_refusal", "off_topic")
BENIGN_PROBE_KINDS = BASE_BENIGN_PROBE_KINDS + phrasings.probe_kinds()
PROBE_KINDS = {"adversarial": ADVERSARIAL_PROBE_KINDS, "benign": BENIGN_PROBE_KINDS}
MIN_PROBE_PROMPTS = 50


def _order_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:probe-order:{text}".encode()).hexdigest()


def pick_adversarial(heldout: Sequence[AdversarialPrompt], n: int, seed: int) -> list[AdversarialPrompt]:
    """Round-robin over sources (each in seeded-hash order), so every source is represented."""
    by_source: dict[str, list[AdversarialPrompt]] = {}
    for p in sorted(heldout, key=lambda p: _order_key(seed, p.id)):
        by_source.setdefault(p.source, []).append(p)
    picked: list[AdversarialPrompt] = []
    queues = [by_source[s] for s in sorted(by_source)]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def build_probes(
    adversarial: Sequence[AdversarialPrompt],
    benign: Sequence[BenignPrompt],
    topics: Sequence[Topic],
    seed: int,
    n_per_kind: int = 60,
) -> list[dict[str, str]]:
    """Probe rows (schema.PROBE_COLUMNS) for held-out prompts only; the caller passes held-out prompts."""
    rows: list[dict[str, str]] = []
    adv = pick_adversarial(adversarial, n_per_kind, seed)
    ben = sorted(benign, key=lambda p: _order_key(seed, p.id))[:n_per_kind]
    if len(adv) < MIN_PROBE_PROMPTS or len(ben) < MIN_PROBE_PROMPTS:
        raise DataError(
            f"probes need >= {MIN_PROBE_PROMPTS} held-out prompts of each kind, got {len(adv)} adversarial "
            f"and {len(ben)} benign; add benign topics or raise data.heldout_fraction"
        )
    for p in adv:
        for kind in ADVERSARIAL_PROBE_KINDS:
            rng = random.Random(f"{seed}:probe:{p.id}:{kind}")
            response = adversarial_response(p.prompt, kind, rng, family="probe")
            rows.append(_row(p.id, p.prompt, "adversarial", kind, response))
    for p in ben:
        topic = topics[p.topic_index]
        for kind in BENIGN_PROBE_KINDS:
            rng = random.Random(f"{seed}:probe:{p.id}:{kind}")
            if kind.startswith(phrasings.PROBE_KIND_PREFIX):
                response = phrasings.probe_reply(kind, rng, topic.task, topic.steps)
                rows.append(_row(p.id, p.prompt, "benign", kind, response))
                continue
            other_index = rng.choice([i for i in range(len(topics)) if i != p.topic_index])
            other = topics[other_index]
            response = benign_response(
                p.prompt,
                kind,
                rng,
                topic.task,
                list(topic.steps),
                other.task,
                list(other.steps),
                family="probe",
            )
            rows.append(_row(p.id, p.prompt, "benign", kind, response))
    return rows


def _row(prompt_id: str, prompt: str, prompt_kind: str, probe_kind: str, response: str) -> dict[str, str]:
    return {
        "id": f"probe:{prompt_id}:{probe_kind}",
        "prompt_id": prompt_id,
        "prompt": prompt,
        "prompt_kind": prompt_kind,
        "probe_kind": probe_kind,
        "response": response,
    }


def load_probes(path: str | Path) -> list[dict[str, str]]:
    """Read data/probes.jsonl; DataError names the line and field of anything malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: probe file is missing; run `safealign data build`")
    rows: list[dict[str, str]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: not valid JSON: {exc}") from exc
        for col in PROBE_COLUMNS:
            if col not in row or not isinstance(row[col], str):
                raise DataError(f"{path}: line {lineno}: field {col!r} missing or not a string")
        if row["prompt_kind"] not in PROMPT_KINDS:
            raise DataError(f"{path}: line {lineno}: field 'prompt_kind': {row['prompt_kind']!r}")
        if row["probe_kind"] not in PROBE_KINDS[row["prompt_kind"]]:
            raise DataError(f"{path}: line {lineno}: field 'probe_kind': {row['probe_kind']!r}")
        rows.append(row)
    return rows


def probes_by_prompt(rows: Sequence[dict[str, str]]) -> dict[str, dict[str, dict[str, str]]]:
    """{prompt_id: {probe_kind: row}}: the shape the ordering checks need (same prompt, different replies)."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        out.setdefault(row["prompt_id"], {})[row["probe_kind"]] = row
    return out
