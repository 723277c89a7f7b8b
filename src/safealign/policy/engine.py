"""The fast GRPO engine: one step of GRPO on CPU, readable top to bottom (nanoGPT style).

Why not TRL's GRPOTrainer for the default run: with its defaults on a CPU (bf16, gradient checkpointing,
LoRA applied unmerged at every decode step, every prompt prefilled G times, the prompt part of the loss
forward computed G times) a step does far more work than its arithmetic needs (``bench/grpo_vs_trl.py``
measures the ratio). This engine runs the
SAME algorithm (group-relative advantages, loss_type="grpo", optional KL, one optimisation pass per batch) and
only removes work:

1. generation in fp32 with the LoRA delta MERGED into the base weights (no extra matmuls per token), a
   plain KV-cached sampling loop, and each prompt prefilled ONCE, its KV cache repeated G times. The decode
   steps run through ``lean_decode.LeanDecoder`` (Llama/Qwen2): HF's per-step forward spends much of each
   token in Python/per-layer bookkeeping and re-packs every weight inside sgemm at batch 16, while the lean
   decoder runs fused q|k|v and gate|up weights pre-packed for MKL once (reused while unchanged), a
   preallocated KV buffer and one SDPA per layer: bit-identical logits, less time per token
   (``bench/grpo_step.py``). Other architectures (or ``generate(lean=False)``) keep HF's forward; both
   paths draw the same ``_sample`` uniforms in the same order, so a seed gives the same tokens either way;
2. ONE reward-model forward scores all K aspects;
3. the loss forward runs each prompt ONCE with gradients, repeats its KV cache G times and runs the
   completions on top (same math as G full sequences: the prompt's activations are identical in all G);
   groups whose advantages are all zero (flat) are left out of the forward entirely (their gradient is 0);
   for Llama/Qwen2 the lm_head, log-softmax and target gather run in one [T, V] buffer (``_TokenLogProb``)
   instead of writing logits, their concatenation, log-softmax and a zero-filled gradient separately;
4. one optimisation pass per batch => the importance ratio is exactly 1, so no old log-probs are computed.
   The loss is TRL's "grpo" aggregation at ratio 1 (its arithmetic lives in ``objective.py``, shared with
   the TRL engine):
       loss = mean_i [ (1/|o_i|) * sum_t ( -A_i * r_t + beta_i * KL_t ) ],  r_t = pi(o_t) / pi(o_t).detach()
   r_t is 1 in value with the gradient of log pi, so the loss value and its gradient are TRL's.
   beta = 0 (the paper's default) needs no reference at all; beta > 0 takes the reference log-probs from
   the same model with its LoRA adapter switched off (one extra no-grad forward, no second model), with
   TRL's k3 estimator for KL_t.

Shapes: B prompts, G completions per prompt, N = B*G sequences, Lp prompt tokens (left padded),
Lc completion tokens (right padded after the first EOS; the EOS itself is kept in the loss, as in TRL).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from safealign.policy.advantages import Advantages, group_advantages
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.lean_decode import SUPPORTED as LEAN_TYPES
from safealign.policy.lean_decode import LeanDecoder
from safealign.policy.objective import (
    PromptTreatment,
    sequence_kl,
    sequence_policy_term,
    shape_rewards,
    token_kl,
)
from safealign.policy.objective import refusal_penalties as refusal_penalties_of
from safealign.policy.reward_adapter import Scorer

if TYPE_CHECKING:
    from safealign.config import GrpoSettings

# ----------------------------------------------------------------------------------------------- inputs


@dataclass
class PromptBatch:
    raw: list[str]  # the user prompts as the reward model sees them
    ids: torch.Tensor  # [B, Lp] chat-templated, left padded
    mask: torch.Tensor  # [B, Lp]


def collate_prompts(raw: Sequence[str], token_ids: Sequence[Sequence[int]], pad_id: int) -> PromptBatch:
    """Left-pad already tokenised prompts (tokenised once per prompt by the caller, not every step)."""
    width = max(len(t) for t in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for i, t in enumerate(token_ids):
        ids[i, width - len(t) :] = torch.tensor(list(t), dtype=torch.long)
        mask[i, width - len(t) :] = 1
    return PromptBatch(list(raw), ids, mask)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------- generation


@contextlib.contextmanager
def merged_lora(model: Any) -> Iterator[Any]:
    """Fold each LoRA delta into its base weight for the duration of the block, then restore it EXACTLY.

    Generation then costs what the base model costs. The base weights are copied back (not
    un-merged by subtraction), so no rounding drift accumulates over hundreds of steps. Without PEFT
    (a plain model) this is a no-op.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield model
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers or not hasattr(model, "disable_adapter"):
        yield model
        return
    saved = []
    with torch.no_grad():
        for layer in layers:
            weight = layer.get_base_layer().weight
            saved.append(weight.detach().clone())
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    weight += layer.get_delta_weight(name).to(weight.dtype)
    try:
        with model.disable_adapter():
            yield model
    finally:
        with torch.no_grad():
            for layer, original in zip(layers, saved, strict=True):
                layer.get_base_layer().weight.copy_(original)


def _sample(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row from softmax(logits / T), optionally nucleus-filtered.

    Inverse-CDF sampling (one uniform per row, a cumulative sum, a binary search) draws exactly from the
    distribution like ``torch.multinomial``, at a fraction of its cost over a 49k vocabulary on CPU
    (multinomial and exponential-race sampling were 11-30% of decode time here).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs * (probs.cumsum(-1) - probs < top_p)  # always keeps the most likely token
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), dtype=cdf.dtype) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    if order is not None:
        idx = order.gather(-1, idx)
    return idx.squeeze(-1)


def _preallocate(cache: Any, extra: int) -> None:
    """Give each KV-cache layer room for ``extra`` more positions, so decoding writes in place.

    DynamicCache grows by ``torch.cat`` every step, copying the whole cache (8% of decode time here). Each
    layer's keys/values are moved into a buffer with ``extra`` free positions, and ``update`` writes into
    it and returns views. Layers of other cache types are left alone.
    """
    import types

    def update(self: Any, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n = key_states.shape[-2]
        end = self._used + n
        if end > self._buf_k.shape[-2]:  # out of room: fall back to growing
            self._buf_k = torch.cat([self._buf_k[..., : self._used, :], key_states], dim=-2)
            self._buf_v = torch.cat([self._buf_v[..., : self._used, :], value_states], dim=-2)
        else:
            self._buf_k[..., self._used : end, :] = key_states
            self._buf_v[..., self._used : end, :] = value_states
        self._used = end
        self.keys = self._buf_k[..., :end, :]
        self.values = self._buf_v[..., :end, :]
        return self.keys, self.values

    for layer in getattr(cache, "layers", []):
        if type(layer).__name__ != "DynamicLayer" or not getattr(layer, "is_initialized", False):
            continue
        k, v = layer.keys, layer.values
        shape = (*k.shape[:-2], k.shape[-2] + extra, k.shape[-1])
        layer._buf_k = torch.empty(shape, dtype=k.dtype)
        layer._buf_v = torch.empty(shape, dtype=v.dtype)
        layer._buf_k[..., : k.shape[-2], :] = k
        layer._buf_v[..., : v.shape[-2], :] = v
        layer._used = k.shape[-2]
        layer.keys = layer._buf_k[..., : layer._used, :]
        layer.values = layer._buf_v[..., : layer._used, :]
        layer.update = types.MethodType(update, layer)


@torch.no_grad()
def generate(
    model: Any,
    prompts: PromptBatch,
    group_size: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    lean: bool = True,
    greedy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample G completions per prompt. Returns (completion_ids [N, Lc], completion_mask [N, Lc]).

    Each prompt is prefilled once; its KV cache is repeated G times, so prefill costs B prompts, not B*G.
    Sampling uses the global torch RNG (saved in checkpoints). ``lean=True`` decodes with
    ``lean_decode.LeanDecoder`` when the architecture allows it (same arithmetic, same ``_sample`` draws in
    the same order, less overhead per token); otherwise, or with ``lean=False``, every decode step is HF's
    forward. ``greedy=True`` takes the argmax instead of sampling (no RNG drawn): HF's greedy decoding, which
    evaluation, selection and serving use through ``policy/decoding.py``.
    """
    g = group_size
    decoder = LeanDecoder.build(model) if lean else None
    out = model(
        input_ids=prompts.ids,
        attention_mask=prompts.mask,
        position_ids=_positions(prompts.mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.cache
    if decoder is not None:
        decoder.start(cache, prompts.mask, g, max_new_tokens)
        cache = None  # the decoder holds its own copy (repeated G times); free HF's
    else:
        cache.batch_repeat_interleave(g)
        _preallocate(cache, max_new_tokens)
    logits = out.logits[:, -1].repeat_interleave(g, dim=0)
    del out
    attn = prompts.mask.repeat_interleave(g, dim=0)
    pos = _positions(prompts.mask)[:, -1].repeat_interleave(g, dim=0) + 1
    n = attn.shape[0]
    eos = torch.tensor(list(eos_ids), dtype=torch.long)
    finished = torch.zeros(n, dtype=torch.bool)
    tokens: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        tok = logits.argmax(-1) if greedy else _sample(logits, temperature, top_p)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        finished |= torch.isin(tok, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        if decoder is not None:
            logits = decoder.step(tok)
            continue
        attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=pos[:, None],
            cache=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
        pos = pos + 1
    completion = torch.stack(tokens, dim=1)
    return completion, completion_mask(completion, eos_ids)


def splice(
    completion: torch.Tensor,
    cmask: torch.Tensor,
    forced: Mapping[int, Sequence[int]],
    group_size: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put each forced completion in the last of its prompt's G rows; the batch widens if it must.

    The mask is carried, not recomputed: a sampled row cut at the old width has no EOS, and recomputing
    from tokens would count the new padding as completion.
    """
    if not forced:
        return completion, cmask
    width = max([completion.shape[1], *(len(ids) for ids in forced.values())])
    out = torch.full((completion.shape[0], width), pad_id, dtype=completion.dtype)
    mask = torch.zeros((completion.shape[0], width), dtype=cmask.dtype)
    out[:, : completion.shape[1]], mask[:, : completion.shape[1]] = completion, cmask
    for prompt_index, ids in forced.items():
        row = prompt_index * group_size + group_size - 1
        out[row], mask[row] = pad_id, 0
        out[row, : len(ids)] = torch.tensor(list(ids), dtype=completion.dtype)
        mask[row, : len(ids)] = 1
    return out, mask


def completion_mask(completion: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first EOS (TRL's convention), 0 after it."""
    is_eos = torch.isin(completion, torch.tensor(list(eos_ids), dtype=torch.long))
    after = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after).long()


# ----------------------------------------------------------------------------------------------- loss


class _TokenLogProb(torch.autograd.Function):
    """log softmax(h @ W^T + b)[target] / temperature-scaled, per row, materialising at most one [T, V].

    The plain path (``lm_head`` -> cat -> ``cross_entropy``) writes the [T, V] logits three or four times
    (logits, their concatenation, log-softmax, a zero-filled gradient; ~200 MB each at 16 x 64 tokens). Here
    one buffer holds the logits, becomes the softmax in place (saved for backward) and then the gradient of
    the logits in place: same math, ~15% less time for the head + loss and ~0.4 GB less peak memory.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, temperature):  # noqa: ANN001, ANN205
        logits = F.linear(h, weight, bias)
        if temperature != 1.0:
            logits.div_(temperature)
        lse = torch.logsumexp(logits, dim=-1)
        out = logits.gather(1, target[:, None]).squeeze(1) - lse
        probs = logits.sub_(lse[:, None]).exp_()
        ctx.save_for_backward(h, weight, probs, target)
        ctx.temperature = temperature
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        h, weight, probs, target = ctx.saved_tensors
        grad_logits = probs.mul_(-grad_out[:, None])  # d out / d logits = onehot(target) - softmax
        grad_logits[torch.arange(grad_logits.shape[0]), target] += grad_out
        if ctx.temperature != 1.0:
            grad_logits.div_(ctx.temperature)
        grad_h = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_w = grad_logits.t() @ h if ctx.needs_input_grad[1] else None
        grad_b = grad_logits.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None


def _head_split(model: Any) -> tuple[Any, Any] | None:
    """(decoder stack, lm_head) if logits are exactly ``lm_head(decoder(...).last_hidden_state)``, else None.

    True for the Llama/Qwen2 causal LMs (no logit soft-capping or scaling); other models keep the logits path.
    """
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(getattr(hf, "config", None), "model_type", None) not in LEAN_TYPES:
        return None
    head = hf.get_output_embeddings()
    if getattr(hf, "model", None) is None or type(head) is not torch.nn.Linear:
        return None
    return hf.model, head


def completion_logprobs(
    model: Any,
    prompts: PromptBatch,
    completion: torch.Tensor,
    group_size: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log pi(o_t | q, o_<t) for every completion token, [N, Lc], with gradients.

    The prompt runs ONCE per prompt (with gradients) and its KV cache is repeated G times; the completion
    tokens attend to it. Logits are divided by the sampling temperature (as TRL does), so the log-probs are
    those of the distribution that was sampled from. For Llama/Qwen2 the decoder stack returns hidden states
    and ``_TokenLogProb`` does head + log-softmax + gather in one buffer; other models go through the logits.
    """
    g = group_size
    split = _head_split(model)
    body = split[0] if split is not None else model
    pos_p = _positions(prompts.mask)
    kw: dict[str, Any] = {} if split is not None else {"logits_to_keep": 1}
    out = body(input_ids=prompts.ids, attention_mask=prompts.mask, position_ids=pos_p, use_cache=True, **kw)
    first = (out.last_hidden_state[:, -1:] if split is not None else out.logits[:, -1:]).repeat_interleave(
        g, dim=0
    )
    lc = completion.shape[1]
    if lc > 1:
        cache = out.cache
        cache.batch_repeat_interleave(g)
        attn = torch.cat(
            [
                prompts.mask.repeat_interleave(g, dim=0),
                torch.ones((completion.shape[0], lc - 1), dtype=prompts.mask.dtype),
            ],
            dim=1,
        )
        pos_c = pos_p[:, -1:].repeat_interleave(g, dim=0) + 1 + torch.arange(lc - 1)[None, :]
        rest = body(
            input_ids=completion[:, :-1], attention_mask=attn, position_ids=pos_c, cache=cache, use_cache=True
        )
        states = torch.cat([first, rest.last_hidden_state if split is not None else rest.logits], dim=1)
    else:
        states = first
    if split is not None:
        head = split[1]
        h = states.reshape(-1, states.shape[-1])
        logp = _TokenLogProb.apply(h, head.weight, head.bias, completion.reshape(-1), float(temperature))
        return logp.view(completion.shape)
    logits = states.float()
    if temperature != 1.0:  # a [N, Lc, V] division is ~0.2 s on this CPU: skip it when it is a no-op
        logits = logits / temperature
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), completion.reshape(-1), reduction="none")
    return -nll.view(completion.shape)


def grpo_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    num_sequences: int,
    ref_logprobs: torch.Tensor | None = None,
    beta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """TRL loss_type="grpo" at ratio 1 (``objective.py``): per-sequence token mean of -A*ratio (+ beta*KL),
    averaged over N.

    ``num_sequences`` is the batch's full N even when flat groups were left out of ``logprobs``, so the
    result (and its gradient) equals the loss over all N sequences. ``beta`` is one coefficient or one per
    sequence (a [N_kept] tensor), so benign prompts can be held to the base model while adversarial ones
    move freely.
    """
    per_seq = sequence_policy_term(logprobs, mask, advantages)
    betas = torch.as_tensor(beta, dtype=logprobs.dtype).expand(logprobs.shape[0])
    if bool((betas != 0).any()):
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        per_seq = per_seq + sequence_kl(logprobs, ref_logprobs, mask, betas)
    return per_seq.sum() / num_sequences


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    kl: float  # mean per-token KL(pi || pi_ref) over the completion tokens in the forward; 0 when beta = 0


def reference_logprobs(
    model: Any, prompts: PromptBatch, completion: torch.Tensor, group_size: int, temperature: float = 1.0
) -> torch.Tensor:
    """log pi_ref per completion token: the same model with its LoRA adapter switched off (no copy, no grad).

    The adapter starts as a zero delta, so the base model IS the initial policy: the reference TRL would
    keep as a second model costs here one extra forward and no memory.
    """
    with torch.no_grad(), model.disable_adapter():
        return completion_logprobs(model, prompts, completion, group_size, temperature)


def policy_loss(
    model: Any,
    prompts: PromptBatch,
    completion: torch.Tensor,
    cmask: torch.Tensor,
    adv: Advantages,
    group_size: int,
    temperature: float = 1.0,
    beta: float | Sequence[float] = 0.0,
) -> PolicyLoss | None:
    """The GRPO loss of a sampled batch, computed over the groups that have a gradient (None if none has).

    ``beta`` is the KL coefficient, one for all prompts or one per prompt. A flat group with beta = 0 has
    zero advantage and no KL term, so it adds nothing to the loss or its gradient; leaving it out of the
    forward is exact because the mean still divides by the full N. A group with beta > 0 stays in, flat or
    not, because its KL term has a gradient. Columns that are padding in every kept row are trimmed, so the
    forward is as short as the longest kept prompt and completion.
    """
    g = group_size
    per_prompt = torch.as_tensor(beta, dtype=torch.float32).expand(len(adv.flat)).clone()
    keep = ((~adv.flat) | (per_prompt != 0)).nonzero().flatten()
    if not keep.numel():
        return None
    rows = (keep[:, None] * g + torch.arange(g)[None, :]).flatten()
    lp = int(prompts.mask[keep].sum(1).max())
    sub = PromptBatch(
        [prompts.raw[i] for i in keep.tolist()], prompts.ids[keep, -lp:], prompts.mask[keep, -lp:]
    )
    lc = int(cmask[rows].sum(1).max())
    comp, mask = completion[rows, :lc], cmask[rows, :lc]
    row_beta = per_prompt[keep].repeat_interleave(g)
    group_kl = per_prompt[keep] != 0
    with_kl = group_kl.repeat_interleave(g)
    logp = completion_logprobs(model, sub, comp, g, temperature)
    ref = None
    if bool(with_kl.any()):
        # The reference forward runs only over the groups that carry a KL term (the benign ones under
        # benign_beta). The other rows get ref = logp, a KL of exactly 0: a placeholder such as 0 would make
        # exp(ref - logp) overflow to inf, and inf * beta 0 is NaN.
        ref = logp.detach().clone()
        groups = group_kl.nonzero().flatten()
        ref_sub = PromptBatch([sub.raw[i] for i in groups.tolist()], sub.ids[groups], sub.mask[groups])
        ref[with_kl] = reference_logprobs(model, ref_sub, comp[with_kl], g, temperature)
    loss = grpo_loss(logp, mask, adv.values[rows], completion.shape[0], ref_logprobs=ref, beta=row_beta)
    kl = 0.0
    if ref is not None:  # the mean KL over the completion tokens that are penalised
        m = mask[with_kl].to(logp.dtype)
        kl = float((token_kl(logp.detach()[with_kl], ref[with_kl]) * m).sum() / m.sum().clamp(min=1.0))
    return PolicyLoss(loss, kl)


# ----------------------------------------------------------------------------------------------- one step


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus whatever the model config lists (an int or a list)."""
    ids = {int(tokenizer.eos_token_id)}
    cfg = getattr(model.config, "eos_token_id", None)
    if isinstance(cfg, int):
        ids.add(cfg)
    elif isinstance(cfg, list | tuple):
        ids.update(int(x) for x in cfg)
    return sorted(ids)


@dataclass
class StepConfig:
    """The part of ``grpo.*`` one step needs. No defaults here: they live in config.GrpoSettings only."""

    group_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    std_floor: float
    max_grad_norm: float | None
    beta: float  # KL(pi || base) coefficient; 0 = no reference forward

    @classmethod
    def from_settings(cls, grpo: GrpoSettings) -> StepConfig:
        return cls(
            group_size=grpo.num_generations,
            max_new_tokens=grpo.max_new_tokens,
            temperature=grpo.temperature,
            top_p=grpo.top_p,
            std_floor=grpo.std_floor,
            max_grad_norm=grpo.max_grad_norm,
            beta=grpo.beta,
        )


@dataclass
class StepResult:
    metrics: dict[str, float]
    completions: list[str]
    scores: np.ndarray  # [N, K]
    rewards: np.ndarray  # [N] the rewards advantages were computed from (constraint term included)
    advantages: Advantages
    loss: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Trainable:
    """The policy a step trains and what trains it: the LoRA-wrapped model, its tokenizer, the optimizer
    over the adapter's parameters and the learning-rate schedule (None: a fixed rate)."""

    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any = None


def grpo_step(
    policy: Trainable,
    prompts: PromptBatch,
    treatment: PromptTreatment,
    scorer: Scorer,
    cfg: StepConfig,
    constraint: LagrangeConstraint | None = None,
) -> StepResult:
    """Sample, score, compute advantages, one forward/backward, one optimizer step.

    ``treatment`` says how each prompt is treated (``objective.PromptTreatment``): its aspect weights, whether
    the safety ``constraint`` covers it, its KL coefficient, its refusal penalty and a forced completion.
    """
    t0 = time.perf_counter()
    g, model, optimizer = cfg.group_size, policy.model, policy.optimizer

    # 1. generation (G samples per prompt), then the treatment's forced completions
    completion, cmask = sample_completions(model, policy.tokenizer, prompts, cfg, treatment.forced)
    t1 = time.perf_counter()

    # 2. one reward-model forward for all aspects, combined with the treatment's weights (+ Lagrangian term)
    scored = score_completions(policy.tokenizer, prompts, completion, cmask, scorer, treatment, g, constraint)
    adv = group_advantages(torch.as_tensor(scored.rewards, dtype=torch.float32), g, cfg.std_floor)
    t2 = time.perf_counter()

    # 3. one forward/backward over the groups that have a gradient, then the optimizer step
    model.train()
    optimizer.zero_grad(set_to_none=False)
    loss_value = kl = 0.0
    betas = cfg.beta if treatment.betas is None else treatment.betas
    parts = policy_loss(model, prompts, completion, cmask, adv, g, cfg.temperature, betas)
    if parts is not None:
        parts.loss.backward()
        loss_value, kl = float(parts.loss.detach()), parts.kl
    t3 = time.perf_counter()
    grad_norm = optimizer_step(optimizer, policy.scheduler, cfg.max_grad_norm)
    t4 = time.perf_counter()

    # 4. the multiplier's dual step, on the safety of the prompts the constraint covers
    lam = None
    if constraint is not None and scored.safety is not None and scored.covered.any():
        lam = constraint.update(float(scored.safety[scored.covered].mean()))

    timings = {"s_generate": t1 - t0, "s_reward": t2 - t1, "s_forward_backward": t3 - t2,
               "s_optimizer": t4 - t3, "s_step": t4 - t0}  # fmt: skip
    metrics = step_metrics(scorer, scored, adv, cmask, cfg, loss_value, kl, grad_norm, optimizer, timings)
    if lam is not None:
        metrics["lambda"] = lam
    return StepResult(
        metrics=metrics,
        completions=scored.texts,
        scores=scored.scores,
        rewards=np.asarray(scored.rewards),
        advantages=adv,
        loss=loss_value,
        timings=timings,
    )


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: PromptBatch,
    cfg: StepConfig,
    forced: Mapping[int, Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """G samples per prompt (fp32, merged LoRA, prompts prefilled once, KV cache), then the forced ones."""
    model.eval()
    with merged_lora(model):
        eos_ids, pad_id = eos_token_ids(model, tokenizer), int(tokenizer.pad_token_id)
        completion, cmask = generate(
            model, prompts, cfg.group_size, cfg.max_new_tokens, eos_ids, pad_id, cfg.temperature, cfg.top_p
        )
    if forced:
        completion, cmask = splice(completion, cmask, forced, cfg.group_size, pad_id)
    return completion, cmask


@dataclass
class Scored:
    """A batch's completions as the reward sees them."""

    texts: list[str]  # [N] decoded completions
    scores: np.ndarray  # [N, K] one column per aspect
    combined: np.ndarray  # [N] the weighted sum of the aspects
    rewards: np.ndarray  # [N] combined, plus the Lagrangian term on the completions the constraint covers
    safety: np.ndarray | None  # [N] the constrained aspect's scores (None without a constraint)
    covered: np.ndarray  # [N] bool: which completions the constraint covers
    penalised: float = 0.0  # share of the completions that lost a refusal penalty


def score_completions(
    tokenizer: Any,
    prompts: PromptBatch,
    completion: torch.Tensor,
    cmask: torch.Tensor,
    scorer: Scorer,
    treatment: PromptTreatment,
    group_size: int,
    constraint: LagrangeConstraint | None,
) -> Scored:
    """ONE reward-model forward scores all K aspects; the treatment's weights (one row or one per prompt)
    combine them, the constraint's term goes to the prompts it covers, and completions the refusal judge
    calls refusals lose their prompt's penalty (``objective.py``)."""
    g, per_prompt = group_size, treatment.refusal_penalties
    ids_list = [row[: int(m.sum())].tolist() for row, m in zip(completion, cmask, strict=True)]
    texts = tokenizer.batch_decode(ids_list, skip_special_tokens=True)
    raw = [p for p in prompts.raw for _ in range(g)]
    scores = np.asarray(scorer.score(raw, texts, ids_list), dtype=np.float64)
    penalties = None if per_prompt is None else refusal_penalties_of(texts, per_prompt, g)
    shaped = shape_rewards(
        scores, treatment.weights, g, scorer.aspects, constraint, treatment.constrained, penalties
    )
    return Scored(
        texts, scores, shaped.combined, shaped.rewards, shaped.safety, shaped.covered, shaped.penalised_share
    )


def optimizer_step(optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float | None) -> float:
    """Clip the gradient (when ``max_grad_norm`` is set), step the optimizer and the schedule; the norm."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = 0.0
    if max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return grad_norm


def step_metrics(
    scorer: Scorer,
    scored: Scored,
    adv: Advantages,
    cmask: torch.Tensor,
    cfg: StepConfig,
    loss: float,
    kl: float,
    grad_norm: float,
    optimizer: torch.optim.Optimizer,
    timings: dict[str, float],
) -> dict[str, float]:
    """One step's row: per-aspect means/stds, rewards, advantages, loss, lengths, throughput, timings."""
    lengths = cmask.sum(1).float()
    metrics: dict[str, float] = {}
    for k, aspect in enumerate(scorer.aspects):
        metrics[f"{aspect}_mean"] = float(scored.scores[:, k].mean())
        metrics[f"{aspect}_std"] = float(scored.scores[:, k].std())
    metrics.update(
        reward_mean=float(scored.combined.mean()),
        reward_std=float(scored.combined.std()),
        shaped_reward_mean=float(np.mean(scored.rewards)),
        frac_refusal_penalised=scored.penalised,
        **adv.stats(),
        loss=loss,
        kl=kl,
        grad_norm=grad_norm,
        lr=float(optimizer.param_groups[0]["lr"]),
        completion_len_mean=float(lengths.mean()),
        completion_len_max=float(lengths.max()),
        frac_truncated=float((cmask[:, -1] == 1).float().mean())
        if cmask.shape[1] == cfg.max_new_tokens
        else 0.0,
        distinct_completions=float(len(set(scored.texts))),
        gen_tokens=float(lengths.sum()),
        gen_tokens_per_s=float(lengths.sum()) / max(timings["s_generate"], 1e-9),
        **timings,
    )
    return metrics
