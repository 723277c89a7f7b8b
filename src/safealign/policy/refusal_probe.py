"""Greedy probes for needless refusals: which benign train prompts the policy's greedy reply refuses.

Why: the refusal register GRPO learns on harmful prompts reaches benign ones in the GREEDY reply (what
evaluation, selection and serving decode) long before a sampled completion takes it: in a default run none
of 192 sampled benign completions was a refusal while 6% of greedy benign replies were (docs/experiments.md),
so ``grpo.benign_refusal_penalty`` on samples alone never fired. With ``grpo.benign_refusal_probe`` = k the
fast engine decodes k benign train prompts greedily before each step; the prompts whose greedy reply the
refusal judge calls a refusal take the places of the step's drawn benign prompts, and that greedy reply takes
the place of the last of their G samples, where the penalty meets it. The greedy reply is not a sample of the
policy, so this biases the gradient on purpose: it pushes down exactly the reply evaluation would read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from safealign.policy.engine import eos_token_ids, generate, merged_lora
from safealign.policy.prompts import PromptEncoder
from safealign.refusal import is_refusal


def probe_benign(
    model: Any, tokenizer: Any, encoder: PromptEncoder, prompts: Sequence[str], max_new_tokens: int
) -> dict[str, list[int]]:
    """The probed prompts whose greedy reply is a refusal, each with that reply's token ids (through EOS)."""
    if not prompts:
        return {}
    model.eval()
    with merged_lora(model):
        eos, pad = eos_token_ids(model, tokenizer), int(tokenizer.pad_token_id)
        completion, cmask = generate(
            model, encoder.batch(list(prompts)), 1, max_new_tokens, eos, pad, greedy=True
        )
    ids = [row[: int(m.sum())].tolist() for row, m in zip(completion, cmask, strict=True)]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return {p: i for p, i, t in zip(prompts, ids, texts, strict=True) if is_refusal(t)}


def substitute(
    drawn: Sequence[str], adversarial: Sequence[bool], refused: Mapping[str, list[int]]
) -> tuple[list[str], dict[int, list[int]]]:
    """The step's prompts with refused probe prompts in the benign places (in order, as many as fit), and
    the greedy completion each of those places must carry: ``(prompts, {batch index: completion ids})``."""
    prompts, forced = list(drawn), {}
    places = [i for i, adv in enumerate(adversarial) if not adv]
    for place, (prompt, ids) in zip(places, refused.items(), strict=False):
        prompts[place], forced[place] = prompt, list(ids)
    return prompts, forced
