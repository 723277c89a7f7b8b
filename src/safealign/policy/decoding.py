"""One generation path for every caller that decodes the policy: evaluation, checkpoint selection, refresh
rounds, batch inference and serving. GRPO samples through the same ``engine.generate``.

Why: evaluation spent 695 s of its 724 s in HF's ``model.generate`` and each selection validation ~62 s,
while GRPO already decoded through the lean KV-cached decoder (``lean_decode.py``). Here every caller gets
that decoder: prompts sorted by token length and batched with left padding (as before), each batch
prefilled once by HF's forward, then ``LeanDecoder`` steps over fused, MKL-packed weights with the LoRA
delta merged into the base weights (``engine.merged_lora``), greedy (argmax, HF's greedy decoding) or
sampled (``engine._sample``).

Greedy replies are HF's greedy replies token for token (``tests/test_decoding.py``): the prefill is HF's
own forward, the decode steps compute HF's arithmetic, the stopping rule is HF's (the generation config's
EOS ids; finished rows are fed the pad token until every row is done). Where that cannot be promised, the
path falls back to ``model.generate`` and says so in the log: architectures the lean decoder does not know
(``LeanDecoder.supports`` says no), a model that is not on the CPU (the decoder's buffers are CPU
tensors), and a generation config whose logits processors would change greedy decoding (a repetition
penalty, a minimum length, ...).

The module sits in ``policy/`` so evaluation, serving and batch inference import it and nothing in
``policy/`` has to import evaluation. ``reply_cache.py`` keys its entries on ``DECODER_VERSION``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from safealign.policy.engine import PromptBatch, generate, merged_lora
from safealign.policy.lean_decode import LeanDecoder, lora_folded

if TYPE_CHECKING:
    from safealign.policy.reply_cache import ReplyCache

log = logging.getLogger(__name__)

# Part of every reply-cache key: bump it whenever a change here or in engine.generate / lean_decode could
# change a reply, so no entry written by the old code is ever read as the new code's answer.
DECODER_VERSION = "lean-greedy-1"

# generation_config fields that add a logits processor (or another search) to HF's greedy decoding, and
# the values under which they do nothing. Any other value: the lean path could not promise HF's replies.
_GREEDY_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "force_words_ids": (None,),
    "constraints": (None,),
    "sequence_bias": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "remove_invalid_values": (None, False),
    "stop_strings": (None,),
    "max_time": (None,),
    "guidance_scale": (None, 1.0),
    "num_beams": (None, 1),
    "num_beam_groups": (None, 1),
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None, 0, 0.0),
    "dola_layers": (None,),
    "watermarking_config": (None,),
    "prompt_lookup_num_tokens": (None,),
    "token_healing": (None, False),
}


@dataclass(frozen=True)
class Decoding:
    """How replies are decoded: greedy when ``temperature`` is None (evaluation's and serving's choice),
    otherwise sampled from softmax(logits / temperature), nucleus-filtered by ``top_p``, seeded."""

    max_new_tokens: int
    batch_size: int
    seed: int
    temperature: float | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (None = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature is None

    def key(self) -> dict[str, Any]:
        """What identifies the replies in a cache key. The seed only matters when sampling; the batch size
        always does (it decides the padding and the matmul shapes, so it can move a near-tie)."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}
        if not self.greedy:
            out.update(temperature=self.temperature, top_p=self.top_p, seed=self.seed)
        return out


# ------------------------------------------------------------------------------------------------ public


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
    temperature: float | None = None,
    top_p: float = 1.0,
    cache: ReplyCache | None = None,
) -> list[str]:
    """Replies to ``prompts`` (chat template applied), returned in input order; greedy unless a
    ``temperature`` is given.

    A prompt is a user message, or a whole conversation (a list of chat turns ending with the user's) for
    the robustness suite's two-turn attacks. With a ``cache`` the replies are read from / written to it.
    """
    from safealign.policy.loading import format_prompt

    texts = [
        format_prompt(tokenizer, p, system_prompt)
        if isinstance(p, str)
        else format_turns(tokenizer, p, system_prompt)
        for p in prompts
    ]
    return generate_from_texts(
        model,
        tokenizer,
        texts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        temperature=temperature,
        top_p=top_p,
        cache=cache,
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
    temperature: float | None = None,
    top_p: float = 1.0,
    cache: ReplyCache | None = None,
    stopping_criteria: Any = None,
) -> list[str]:
    """Replies to already-templated prompt texts, in input order.

    Shared by evaluation, selection, refresh, batch inference and the served policy, so a served reply is
    the evaluated reply, token for token. The seed is set first whatever happens (cache hit included), so
    the caller's RNG stream is the same either way. ``stopping_criteria`` (transformers'
    StoppingCriteriaList: the server's request deadline and shutdown) runs through ``model.generate``,
    which checks it per token; such replies are never cached.
    """
    if not texts:
        return []
    if stopping_criteria is not None:
        decoding = Decoding(max_new_tokens, batch_size, seed, temperature, top_p)
        torch.manual_seed(seed)
        rows = generate_rows(model, tokenizer, list(texts), decoding, lean=False, stop=stopping_criteria)
        return [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    decoding = Decoding(max_new_tokens, batch_size, seed, temperature, top_p)
    torch.manual_seed(seed)
    _prepare_tokenizer(tokenizer)
    texts = list(texts)
    with policy_weights(model):
        path = "lean" if lean_blocker(model, decoding) is None else "hf"
        spec = {**decoding.key(), "path": path, "decoder": DECODER_VERSION}
        key = cache.key(model, tokenizer, texts, spec) if cache is not None else None
        if cache is not None and key is not None:
            hit = cache.get(key, len(texts))
            if hit is not None:
                log.info("%d replies read from the reply cache (%s)", len(hit), key[:12])
                return hit
        rows = generate_rows(model, tokenizer, texts, decoding)
    replies = [text.strip() for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]
    if cache is not None and key is not None:
        cache.put(key, replies)
    return replies


def generate_rows(
    model: Any, tokenizer: Any, texts: Sequence[str], decoding: Decoding, lean: bool = True, stop: Any = None
) -> list[torch.Tensor]:
    """The new tokens of each text's batch row, in input order (pad ids after EOS, as ``model.generate``
    returns them). ``lean=False`` forces HF's ``model.generate``; otherwise it is used only where the lean
    path cannot promise the same replies (logged, with the reason)."""
    _prepare_tokenizer(tokenizer)
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    rows: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(texts)
    model.eval()
    device = next(model.parameters()).device
    started = time.perf_counter()
    with policy_weights(model):
        blocker = lean_blocker(model, decoding) if lean else "lean=False"
        if blocker is not None and lean:
            log.info("lean decoder not used (%s): generating with model.generate", blocker)
        for start in range(0, len(order), decoding.batch_size):
            idx = order[start : start + decoding.batch_size]
            enc = tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            batch = (
                _batch_hf(model, tokenizer, enc, decoding, stop)
                if blocker is not None
                else _batch_lean(model, tokenizer, enc, decoding)
            )
            for i, row in zip(idx, batch, strict=True):
                rows[i] = row
    log.info(
        "generated %d replies in %.1f s (%s)",
        len(texts),
        time.perf_counter() - started,
        "model.generate" if blocker is not None else "lean decoder",
    )
    return rows


def format_turns(tokenizer: Any, turns: list[dict[str, str]], system_prompt: str | None) -> str:
    """A multi-turn conversation in the chat template, ready for the assistant's next turn.

    Every turn is neutralised (``safealign.common.special_tokens``), the assistant's scripted ones too: the
    robustness suite's two-turn attacks carry the request in more than the last turn. The configured
    system prompt is trusted as written.
    """
    from safealign.common.special_tokens import neutralise_messages

    if not turns or turns[-1].get("role") != "user":
        raise ValueError("a conversation must end with a user turn")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages = system + neutralise_messages(list(turns), tokenizer)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return body + "Assistant:"


# ------------------------------------------------------------------------------------------------ choice


@contextlib.contextmanager
def policy_weights(model: Any) -> Iterator[Any]:
    """The policy's weights as plain base weights for the block: an active, unmerged LoRA adapter is folded
    in (``merged_lora``, restored exactly afterwards); an adapter already folded (inside the caller's own
    ``merged_lora``, after ``merge_and_unload``) or no adapter at all is left alone, never merged twice."""
    if lora_folded(model):
        yield model
        return
    with merged_lora(model):
        yield model


def lean_blocker(model: Any, decoding: Decoding) -> str | None:
    """Why the lean decoder cannot give ``model.generate``'s replies for this model, or None if it can.

    Call it with the LoRA folded (``policy_weights``): an active adapter alone is a reason."""
    params = next(iter(model.parameters()), None)
    if params is None or params.device.type != "cpu":
        return f"the model is on {getattr(params, 'device', 'no device')}, the lean decoder runs on the CPU"
    config = getattr(model, "generation_config", None)
    for name, neutral in _GREEDY_NEUTRAL.items():
        value = getattr(config, name, None)
        if value not in neutral:
            return f"generation_config.{name}={value!r} changes decoding"
    if not LeanDecoder.supports(model):
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return f"model_type {model_type!r} or its current state is not supported by the lean decoder"
    return None


def generation_eos_ids(model: Any) -> list[int]:
    """The EOS ids ``model.generate`` stops on: the generation config's (an int or a list), else none."""
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


# ------------------------------------------------------------------------------------------------ batches


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding (decoder-only generation continues every row from its last real token) and a pad id."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def _batch_lean(model: Any, tokenizer: Any, enc: Any, decoding: Decoding) -> torch.Tensor:
    """One batch through ``engine.generate``: HF prefill once, then lean KV-cached decode steps."""
    batch = PromptBatch([], enc["input_ids"], enc["attention_mask"])
    completion, _ = generate(
        model,
        batch,
        1,
        decoding.max_new_tokens,
        generation_eos_ids(model) or [-1],  # no EOS: every row runs to max_new_tokens, as HF does
        int(tokenizer.pad_token_id),
        temperature=decoding.temperature or 1.0,
        top_p=decoding.top_p,
        greedy=decoding.greedy,
    )
    return completion


def _batch_hf(model: Any, tokenizer: Any, enc: Any, decoding: Decoding, stop: Any = None) -> torch.Tensor:
    """One batch through HF's ``model.generate`` (the fallback, the reference the lean path matches, and the
    path of a request that must stop at a deadline: ``stop``)."""
    sampled = {"do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": None}
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    out = model.generate(
        **enc,
        max_new_tokens=decoding.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        stopping_criteria=stop,
        **(greedy if decoding.greedy else sampled),
    )
    return out[:, enc["input_ids"].shape[1] :]
