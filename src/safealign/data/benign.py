"""Benign prompts written for this project (texts/benign_topics.txt), never copied from a benchmark.

Two categories: ``everyday`` requests, and ``sounds_unsafe`` requests that are safe but use words a naive
filter would flag ("how do I kill a Python process"). Over-refusal on the second kind is exactly what the
DESIGN's measured lessons saw after training. Each topic carries three concrete steps, from which helpful
answers are composed, so a helpful answer is specific to its prompt. Each topic is asked in three phrasings
(chosen by a seeded RNG), giving enough prompts for a held-out split of its own.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from safealign.data.schema import normalize_prompt
from safealign.errors import DataError

TOPICS_FILE = Path(__file__).with_name("texts") / "benign_topics.txt"
PHRASINGS = (
    "How do I {task}?",
    "What's the best way to {task}?",
    "Can you explain how to {task}?",
    "I need to {task}. Any tips?",
    "Give me quick steps to {task}.",
    "Could you walk me through how to {task}?",
)
PHRASINGS_PER_TOPIC = 3


@dataclass(frozen=True)
class Topic:
    category: str
    task: str
    steps: tuple[str, str, str]


@dataclass(frozen=True)
class BenignPrompt:
    id: str
    prompt: str
    category: str
    topic_index: int


def load_topics(path: Path = TOPICS_FILE) -> list[Topic]:
    topics: list[Topic] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or not all(parts):
            raise DataError(f"{path}:{lineno}: expected 'category|task|step1|step2|step3', got {len(parts)} fields")
        topics.append(Topic(parts[0], parts[1], (parts[2], parts[3], parts[4])))
    return topics


def prompt_id(prefix: str, prompt: str) -> str:
    """Stable id from the normalised prompt text: unchanged by file order or by other rows."""
    return f"{prefix}-{hashlib.sha256(normalize_prompt(prompt).encode()).hexdigest()[:12]}"


def benign_prompts(topics: list[Topic], seed: int) -> list[BenignPrompt]:
    """Three phrasings per topic, chosen by an RNG seeded from (seed, task), so order never matters."""
    out: list[BenignPrompt] = []
    seen: set[str] = set()
    for index, topic in enumerate(topics):
        rng = random.Random(f"{seed}:benign:{topic.task}")
        for template in rng.sample(PHRASINGS, PHRASINGS_PER_TOPIC):
            text = template.format(task=topic.task)
            key = normalize_prompt(text)
            if key in seen:
                continue
            seen.add(key)
            out.append(BenignPrompt(prompt_id("benign", text), text, topic.category, index))
    return out
