"""Policy replies cached by content, so the same model on the same prompts with the same decoding is decoded
once: the base policy in every evaluation, refresh round and candidate, and the base validation of
checkpoint selection in every GRPO run with the same carve.

Why by content: the base policy's replies depend only on its weights, the exact prompt texts (system prompt
and chat template included), the tokenizer, the decoding settings and the decoding code. A key over all of
those needs no invalidation rule: a changed input is a different key, an unchanged one is the same answer.

The key (sha256) covers:
- the policy's effective weights (``weights_fingerprint``: every tensor's name, dtype, shape and bytes,
  with the LoRA delta folded in, plus the architecture config), so a base model and "base + a zero
  adapter" (GRPO's step 0) share entries, while any trained step has its own;
- the tokenizer (``tokenizer_fingerprint``: vocabulary, special tokens, chat template, class);
- the exact templated prompt texts, in order;
- the decoding (``Decoding.key()`` and the path taken, lean or ``model.generate``);
- the code: ``decoding.DECODER_VERSION`` (passed in ``decoding``) and the torch and transformers versions;
- the CPU's kernel level and torch's thread count: both choose matmul kernels whose rounding can move a
  near-tie between two tokens, and a cached reply must be the reply this machine would generate.

Entries are JSON files ``<cache_dir>/replies/<key>.json`` written atomically (temporary file + rename), and
carry their key, their count and a sha256 of their replies. An entry that does not parse or does not match
is ignored with a warning and regenerated (then overwritten): never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from safealign.common.atomic import write_json
from safealign.policy.lean_decode import lora_folded, unwrap

log = logging.getLogger(__name__)

FORMAT = 1
# Config fields that name where a model came from, not what it computes.
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype")

# weights fingerprints per HF model, valid while every tensor's (id, storage, in-place version) is unchanged
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _effective_tensors(model: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the weights the policy decodes with, names as a plain (un-PEFT-ed) model has them.

    Only meaningful with every LoRA delta folded into its base weight (or no adapter active): then the
    ``base_layer`` weights ARE the policy and the ``lora_*`` tensors add nothing.
    """
    if not lora_folded(model):
        raise ValueError("an active, unmerged LoRA adapter: fold it in (merged_lora) before fingerprinting")
    out = []
    for name, tensor in unwrap(model).state_dict(keep_vars=True).items():
        if ".lora_" in name or "lora_magnitude" in name:
            continue
        out.append((name.replace(".base_layer.", "."), tensor))
    return sorted(out, key=lambda item: item[0])


def weights_fingerprint(model: Any) -> str:
    """sha256 of the policy's effective weights and architecture config; memoised while they are unchanged
    in place (a GRPO step or ``merged_lora`` changes them, and so the fingerprint)."""
    named = _effective_tensors(model)
    stamp = tuple((n, id(t), t.data_ptr(), t._version) for n, t in named)
    owner = unwrap(model)
    hit = _WEIGHTS.get(owner)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    digest = hashlib.sha256()
    config = {k: v for k, v in owner.config.to_dict().items() if k not in _CONFIG_NOISE}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in named:
        data = tensor.detach().contiguous().cpu()
        digest.update(f"\0{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(memoryview(data.view(torch.uint8).reshape(-1).numpy()))
    value = digest.hexdigest()
    _WEIGHTS[owner] = (stamp, value)
    return value


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of what turns text into ids and back: vocabulary, special tokens, chat template, class."""
    stamp = (len(tokenizer), str(tokenizer.special_tokens_map), getattr(tokenizer, "chat_template", None))
    try:
        hit = _TOKENIZERS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        hit = None
    if hit is not None and hit[0] == stamp:
        return hit[1]
    parts = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    value = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    try:
        _TOKENIZERS[tokenizer] = (stamp, value)
    except TypeError:
        pass
    return value


def _replies_digest(replies: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(replies), ensure_ascii=False).encode("utf-8")).hexdigest()


class ReplyCache:
    """Replies by content key under ``<cache_dir>/replies/``; see the module docstring for the key."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.folder = Path(cache_dir) / "replies"

    def key(self, model: Any, tokenizer: Any, texts: Sequence[str], decoding: dict[str, Any]) -> str:
        """The content key of ``model``'s replies to ``texts`` under ``decoding``, which names the decoding
        settings, the path and the decoder's code version (``decoding.DECODER_VERSION``). The model's LoRA
        must be folded in already (``decoding.policy_weights``)."""
        import transformers

        payload = {
            "format": FORMAT,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            # the matmul kernels and their split over threads can move a near-tie between two tokens
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "weights": weights_fingerprint(model),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "decoding": decoding,
            "texts": list(texts),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str, n: int) -> list[str] | None:
        """The cached replies under ``key`` if an intact entry of ``n`` replies is there, else None (with a
        warning when an entry exists but cannot be trusted)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            replies = entry["replies"]
            problem = None
            if entry.get("format") != FORMAT or entry.get("key") != key:
                problem = "its key or format does not match"
            elif not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
                problem = "its replies are not a list of strings"
            elif len(replies) != n or entry.get("n") != n:
                problem = f"it holds {len(replies)} replies, {n} were asked for"
            elif entry.get("sha256") != _replies_digest(replies):
                problem = "its checksum does not match its replies"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"it cannot be read ({type(exc).__name__}: {exc})"
        if problem is not None:
            log.warning("reply cache entry %s ignored and regenerated: %s", path, problem)
            return None
        return list(replies)

    def put(self, key: str, replies: Sequence[str]) -> Path:
        """Write the entry atomically (a reader sees the old entry or the whole new one, never half)."""
        path = self.path(key)
        entry = {"format": FORMAT, "key": key, "n": len(replies), "replies": list(replies)}
        entry["sha256"] = _replies_digest(replies)
        write_json(path, entry)
        return path
