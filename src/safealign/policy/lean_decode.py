"""A lean KV-cached decoder for sampling: the same Llama/Qwen2 arithmetic as HF's forward, minus its overhead.

Why: at batch 16 one decode step of SmolLM2-135M multiplies by ~540 MB of fp32 weights, and HF's forward adds
to that a re-pack of every weight inside MKL's sgemm on every ``F.linear`` call plus per-layer bookkeeping
(mask building, cache objects, kwargs plumbing, separate q/k/v and gate/up matmuls, repeat_kv copies).
``bench/grpo_step.py`` measures both paths. This decoder runs one decode step as a short list of plain torch
ops over weights prepared once:

- per layer: ONE q|k|v matmul (plus the fused bias where the architecture has one, e.g. Qwen2), o_proj,
  ONE gate|up matmul, down_proj; RMSNorm in plain torch ops (fp32, as HF);
- rotary cos/sin come from the HF model's OWN rotary-embedding module, so every rope config stays exact;
- a preallocated KV buffer [N, kv_heads, Lp + max_new, head_dim] written in place (no cat, no cache object);
- GQA without copying K/V: the ``n_rep`` query heads that share a kv head are laid out as ``n_rep`` query rows
  of that kv head, so one ``scaled_dot_product_attention`` over [N, kv_heads, n_rep, hd] with an explicit
  additive mask for left padding is exactly HF's repeat_kv attention;
- final norm and the (tied or untied) lm_head;
- every weight pre-packed for MKL (``_mkl_linear``): bit-identical to ``F.linear``, less time per decode
  matmul, for a packed copy of the weights in memory. Prepared weights are cached per model and rebuilt only
  when their source tensors change in place (``merged_lora`` changes the LoRA-targeted ones every step).

The prompt is still prefilled by HF's forward (one call per step); its KV cache is copied into the buffer,
repeated G times. Only ``model_type`` llama and qwen2 with full attention, SiLU MLPs and plain ``nn.Linear``
weights are supported; ``LeanDecoder.build`` returns None for anything else (including a PEFT model whose
LoRA delta is active but not merged), and the caller keeps HF's path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2")


def unwrap(model: Any) -> Any:
    """The HF causal LM under a PEFT wrapper (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _linear(module: Any) -> torch.nn.Linear | None:
    """The plain nn.Linear under a (possibly LoRA-wrapped) projection, or None if it is something else."""
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base if type(base) is torch.nn.Linear else None


def lora_folded(model: Any) -> bool:
    """True when no LoRA layer would add a delta on top of its base weight in a forward.

    That holds inside ``merged_lora`` (adapters disabled, delta folded into the base weights), after
    ``merge_and_unload``, or for a plain model. An ACTIVE unmerged adapter means the base weights alone are
    not the policy: the lean path must not run then.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return True
    for m in model.modules():
        if isinstance(m, LoraLayer):
            if getattr(m, "disable_adapters", False) or getattr(m, "merged", False):
                continue
            if any(name in m.lora_A for name in m.active_adapters):
                return False
    return True


def _stamp(*tensors: torch.Tensor | None) -> tuple:
    """Identity + in-place version of the source weights: a fused copy is valid while this is unchanged."""
    return tuple((id(t), t.data_ptr(), t._version) if t is not None else None for t in tensors)


def _pack(w: torch.Tensor) -> torch.Tensor | None:
    """MKL's pre-packed layout of a weight, or None where MKL packing is unavailable.

    ``F.linear`` at batch 16 re-packs the weight inside sgemm on every call; a weight packed once is read
    directly (~25% less time per decode matmul on this CPU, bit-identical results). The packed buffer is
    over-allocated by MKL's size query but only ~1x the weight is ever touched (resident).
    """
    if not (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")):
        return None
    if w.dtype != torch.float32:
        return None
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 16)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - build without MKL packing
        return None
    return packed if packed.is_mkldnn else None


@dataclass
class _Linear:
    """A (possibly fused) weight [out, in], its optional bias and its MKL-packed form.

    With a packed form, ``w`` only has to carry the shape and dtype: ``_mkl_linear`` computes from the
    packed buffer whenever the row count equals its ``batch_size`` argument, which ``__call__`` always
    passes. A fused weight is therefore not kept unpacked (a zero-stride view stands in for it), saving its
    copy (~280 MB).
    """

    w: torch.Tensor
    b: torch.Tensor | None
    packed: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.w, self.b, x.shape[0])
        return F.linear(x, self.w, self.b)


# Prepared (fused, packed) weights per base model, keyed by the stamps of their sources. ``merged_lora``
# changes the LoRA-targeted weights in place every step, so those are rebuilt; untouched ones (gate|up, down,
# the lm_head usually) are reused across steps. Weak keys: a model that goes away takes its copies with it.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prepared(
    owner: Any, key: str, mods: list[torch.nn.Linear | torch.nn.Embedding], pack: bool
) -> _Linear:
    """The weights of ``mods`` concatenated on the output dim (+ biases), packed; cached while unchanged."""
    weights = [m.weight for m in mods]
    biases = [getattr(m, "bias", None) for m in mods]
    cache = _PREPARED.setdefault(owner, {})
    stamp = (_stamp(*weights), _stamp(*biases), pack)
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    w = weights[0].detach() if len(weights) == 1 else torch.cat([t.detach() for t in weights], dim=0)
    b = None
    if any(t is not None for t in biases):
        b = torch.cat(
            [
                t.detach() if t is not None else torch.zeros(m.weight.shape[0])
                for t, m in zip(biases, mods, strict=True)
            ]
        )
    packed = _pack(w) if pack else None
    if packed is not None and len(weights) > 1:
        w = w.new_zeros(1).expand(w.shape)  # the fused copy is not needed once packed (see _Linear)
    lin = _Linear(w, b, packed)
    cache[key] = (stamp, lin)
    return lin


@dataclass
class _Layer:
    ln1: torch.Tensor
    eps1: float
    qkv: _Linear
    o: _Linear
    ln2: torch.Tensor
    eps2: float
    gate_up: _Linear
    down: _Linear


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm/Qwen2RMSNorm: normalise in fp32, then scale."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanDecoder:
    """Decode steps for one batch: ``start`` after an HF prefill, then ``step(tokens) -> logits``."""

    def __init__(self, hf: Any, layers: list[_Layer], head: _Linear) -> None:
        cfg = hf.config
        self.hf = hf
        self.layers = layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rep = self.heads // self.kv_heads
        attn = hf.model.layers[0].self_attn
        self.scale = float(getattr(attn, "scaling", self.head_dim**-0.5))
        self.embed = hf.model.embed_tokens.weight.detach()
        self.norm_w = hf.model.norm.weight.detach()
        self.norm_eps = float(hf.model.norm.variance_epsilon)
        self.head = head
        self.rotary = hf.model.rotary_emb
        self.k_buf: list[torch.Tensor] = []
        self.v_buf: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.t = 0

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def supports(cls, model: Any) -> bool:
        """Whether ``build`` would return a decoder, checked without preparing (copying, packing) weights."""
        return _parts(model) is not None

    @classmethod
    def build(cls, model: Any, pack: bool = True) -> LeanDecoder | None:
        """A decoder over ``model``'s CURRENT weights, or None if this architecture/state is not supported."""
        parts = _parts(model)
        if parts is None:
            return None
        hf, blocks, head = parts
        layers = []
        for i, (block, (q, k, v, o, gate, up, down)) in enumerate(blocks):
            layers.append(
                _Layer(
                    ln1=block.input_layernorm.weight.detach(),
                    eps1=float(block.input_layernorm.variance_epsilon),
                    qkv=_prepared(hf, f"{i}.qkv", [q, k, v], pack),
                    o=_prepared(hf, f"{i}.o", [o], pack),
                    ln2=block.post_attention_layernorm.weight.detach(),
                    eps2=float(block.post_attention_layernorm.variance_epsilon),
                    gate_up=_prepared(hf, f"{i}.gate_up", [gate, up], pack),
                    down=_prepared(hf, f"{i}.down", [down], pack),
                )
            )
        return cls(hf, layers, _prepared(hf, "lm_head", [head], pack))

    # ------------------------------------------------------------------------------------------ decoding

    def start(self, cache: Any, prompt_mask: torch.Tensor, group_size: int, max_new: int) -> None:
        """Take over HF's prefill cache: each prompt's K/V repeated G times into preallocated buffers.

        ``prompt_mask`` [B, Lp] (left padding). Positions continue from each row's last real token.
        """
        g = group_size
        b, lp = prompt_mask.shape
        n = b * g
        total = lp + max_new
        self.k_buf, self.v_buf = [], []
        for i in range(len(self.layers)):
            k, v = _cache_kv(cache, i)
            if k.shape[0] != b or k.shape[-2] != lp:
                raise ValueError(
                    f"prefill cache layer {i} has shape {tuple(k.shape)}, expected [{b}, ., {lp}, .]"
                )
            kb = torch.empty((n, self.kv_heads, total, self.head_dim), dtype=k.dtype)
            vb = torch.empty_like(kb)
            kb.view(b, g, self.kv_heads, total, self.head_dim)[:, :, :, :lp] = k[:, None]
            vb.view(b, g, self.kv_heads, total, self.head_dim)[:, :, :, :lp] = v[:, None]
            self.k_buf.append(kb)
            self.v_buf.append(vb)
        # Additive float mask (0 = attend, -inf = left padding): a boolean one is converted inside SDPA at
        # every call. No row is ever fully masked (its own newest position is always visible), so no NaN.
        mask = torch.zeros((n, 1, 1, total), dtype=self.embed.dtype)
        mask[:, 0, 0, :lp].masked_fill_(~prompt_mask.bool().repeat_interleave(g, dim=0), float("-inf"))
        self.mask = mask
        self.pos = ((prompt_mask.cumsum(-1) - 1).clamp(min=0)[:, -1] + 1).repeat_interleave(g, dim=0)
        self.t = lp

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([N]); return the next-token logits [N, V]."""
        assert self.mask is not None and self.pos is not None
        n = tokens.shape[0]
        t = self.t
        if t >= self.k_buf[0].shape[-2]:
            raise ValueError("lean decoder: out of preallocated KV positions")
        hd, nh, nkv = self.head_dim, self.heads, self.kv_heads
        x = F.embedding(tokens, self.embed)  # [N, D]
        cos, sin = self.rotary(x[:, None], self.pos[:, None])  # [N, 1, hd], HF's own rope
        mask = self.mask[..., : t + 1]
        for layer, kb, vb in zip(self.layers, self.k_buf, self.v_buf, strict=True):
            h = _rms(x, layer.ln1, layer.eps1)
            qkv = layer.qkv(h).view(n, nh + 2 * nkv, hd)
            qk = qkv[:, : nh + nkv]
            qk = qk * cos + _rotate_half(qk) * sin
            kb[:, :, t] = qk[:, nh:]
            vb[:, :, t] = qkv[:, nh + nkv :]
            q = qk[:, :nh].reshape(n, nkv, self.rep, hd)  # query heads sharing a kv head -> rows of it
            a = F.scaled_dot_product_attention(
                q, kb[:, :, : t + 1], vb[:, :, : t + 1], attn_mask=mask, scale=self.scale
            )
            x = x + layer.o(a.reshape(n, nh * hd))
            h = _rms(x, layer.ln2, layer.eps2)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        x = _rms(x, self.norm_w, self.norm_eps)
        self.t = t + 1
        self.pos = self.pos + 1
        return self.head(x)


def _parts(model: Any) -> tuple[Any, list[tuple[Any, list[torch.nn.Linear]]], torch.nn.Linear] | None:
    """(HF causal LM, [(block, its 7 plain linears q k v o gate up down)], lm_head) when the lean decoder
    computes exactly this model's forward, else None (architecture, activation, attention kind, wrapped
    weights, or an active unmerged LoRA delta)."""
    hf = unwrap(model)
    cfg = getattr(hf, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return None
    if getattr(cfg, "hidden_act", "silu") != "silu" or not lora_folded(model):
        return None
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return None
    inner = getattr(hf, "model", None)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return None
    if type(inner.embed_tokens) is not torch.nn.Embedding:
        return None
    if getattr(cfg, "num_hidden_layers", len(inner.layers)) != len(inner.layers):
        return None
    blocks = []
    for block in inner.layers:
        att, mlp = block.self_attn, block.mlp
        mods = (att.q_proj, att.k_proj, att.v_proj, att.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        lin = [_linear(m) for m in mods]
        if any(m is None for m in lin):
            return None
        blocks.append((block, lin))
    head = hf.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    return hf, blocks, head  # type: ignore[return-value]


def _cache_kv(cache: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer i's keys/values from an HF cache (transformers 5 layers API, or the legacy tuple form)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[i].keys, layers[i].values
    return cache[i][0], cache[i][1]
