"""The GRPO stage's prompts: each step's draw, and their tokenisation.

Both engines read the same train split files (``safealign.common.jsonl.read_prompts``; held-out prompts are
never read by training); the fast engine also draws each step's prompts itself (``PromptSampler``) and
tokenises each distinct prompt once (``PromptEncoder``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from safealign.policy.engine import PromptBatch, collate_prompts
from safealign.policy.loading import format_prompt


class PromptSampler:
    """Draws each step's prompts: adversarial train prompts, mixed with benign ones at ``benign_fraction``.

    Its numpy Generator is separate from the global RNGs and is checkpointed, so a resumed run draws the
    same prompts as an uninterrupted one.
    """

    def __init__(
        self, adversarial: list[str], benign: list[str], per_step: int, benign_fraction: float, seed: int
    ):
        self.adversarial = adversarial
        self.benign = benign
        self.per_step = per_step
        self.n_benign = int(round(per_step * benign_fraction)) if benign else 0
        self.n_benign = min(self.n_benign, per_step - 1) if adversarial else per_step
        self.rng = np.random.default_rng(seed)

    def draw(self) -> tuple[list[str], list[bool]]:
        """This step's prompts and, per prompt, whether it is adversarial (the safety constraint's scope)."""
        n_adv = self.per_step - self.n_benign
        adv = [
            self.adversarial[i]
            for i in self.rng.choice(len(self.adversarial), n_adv, replace=n_adv > len(self.adversarial))
        ]
        ben = (
            [
                self.benign[i]
                for i in self.rng.choice(
                    len(self.benign), self.n_benign, replace=self.n_benign > len(self.benign)
                )
            ]
            if self.n_benign
            else []
        )
        return adv + ben, [True] * len(adv) + [False] * len(ben)


    def draw_benign(self, k: int) -> list[str]:
        """``k`` distinct benign train prompts (all when fewer), from the same checkpointed generator."""
        k = min(k, len(self.benign))
        return [self.benign[i] for i in self.rng.choice(len(self.benign), k, replace=False)] if k else []


class PromptEncoder:
    """Chat template + tokenisation, once per distinct prompt (cached), truncated from the left."""

    def __init__(self, tokenizer: Any, system_prompt: str | None, max_tokens: int):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens
        self._cache: dict[str, list[int]] = {}

    def ids(self, prompt: str) -> list[int]:
        if prompt not in self._cache:
            text = format_prompt(self.tokenizer, prompt, self.system_prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cache[prompt] = ids[-self.max_tokens :]
        return self._cache[prompt]

    def batch(self, prompts: list[str]) -> PromptBatch:
        return collate_prompts(prompts, [self.ids(p) for p in prompts], int(self.tokenizer.pad_token_id))
