"""Batched, deterministic generation for evaluation: the same decoding for the base and the aligned policy.

Why this shape: evaluation time is inside the 20-minute budget of ``make run``. Prompts are sorted by
token length so a batch pads little (left padding, which decoder-only generation needs), greedy decoding
makes base and aligned directly comparable (no sampling noise in the difference), and the caller merges the
LoRA adapter into the base weights so the aligned model costs no more per token than the base.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> list[str]:
    """Greedy replies to ``prompts`` (chat template applied), returned in input order.

    A prompt is a user message, or a whole conversation (a list of chat turns ending with the user's) for
    the robustness suite's two-turn attacks.
    """
    from safealign.policy.loading import format_prompt

    texts = [
        format_prompt(tokenizer, p, system_prompt)
        if isinstance(p, str)
        else format_turns(tokenizer, p, system_prompt)
        for p in prompts
    ]
    return generate_from_texts(
        model, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed
    )


@torch.no_grad()
def generate_from_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    stopping_criteria: Any = None,
) -> list[str]:
    """Greedy replies to already-templated prompt texts, in input order.

    Shared by evaluation and the served policy, so a served reply is the evaluated reply, token for token.
    ``stopping_criteria`` (transformers' StoppingCriteriaList) lets the server stop a generation at its
    request deadline or on shutdown; evaluation passes none.
    """
    if not texts:
        return []
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    replies: list[str] = [""] * len(texts)
    model.eval()
    device = next(model.parameters()).device
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=stopping_criteria,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            replies[i] = text.strip()
    log.info("generated %d replies in %.1f s", len(texts), time.perf_counter() - started)
    return replies


def format_turns(tokenizer: Any, turns: list[dict[str, str]], system_prompt: str | None) -> str:
    """A multi-turn conversation in the chat template, ready for the assistant's next turn."""
    if not turns or turns[-1].get("role") != "user":
        raise ValueError("a conversation must end with a user turn")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages = system + list(turns)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return body + "Assistant:"
