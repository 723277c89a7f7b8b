"""Which GRPO engine runs: ``grpo.engine = auto | fast | trl``, and what each refuses up front.

- ``fast`` is written for the CPU: its decoder packs weights for MKL, its loss buffers and KV caches are
  CPU tensors, and it has no data parallelism. On a machine with CUDA it refuses rather than silently
  training on the CPU next to an idle GPU.
- ``trl`` is TRL's GRPOTrainer with safealign's extensions (``trl_extensions.py``): CPU, one GPU, or many
  through ``accelerate launch`` (DeepSpeed, vLLM generation).
- ``auto`` (the default) picks ``fast`` on a CPU-only machine and ``trl`` when CUDA is available, so the same
  params.yaml runs the embedded default on a laptop and the Qwen configs on a GPU node.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from safealign.config import Settings
from safealign.errors import ConfigError

Engine = Literal["fast", "trl"]


def cuda_available() -> bool:
    """True where torch sees a CUDA device (``CUDA_VISIBLE_DEVICES=`` hides them all)."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(settings: Settings) -> Engine:
    """The engine ``grpo.engine`` names, with ``auto`` resolved by the device: fast on CPU, trl on CUDA."""
    engine = settings.grpo.engine
    if engine == "auto":
        return "trl" if cuda_available() else "fast"
    return engine


def check_fast_supported(settings: Settings) -> None:
    """Refuse the fast engine where it would not do what was asked: on CUDA, or in several processes."""
    if cuda_available():
        raise ConfigError(
            "grpo.engine=fast runs on the CPU only (its decoder and loss are written for CPU tensors), "
            "and this machine has CUDA: set grpo.engine=trl (or auto) to train on the GPU, or hide the "
            "GPUs with CUDA_VISIBLE_DEVICES= to train on the CPU anyway"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "grpo.engine=fast has no data parallelism: under `accelerate launch` (WORLD_SIZE > 1) use "
            "grpo.engine=trl"
        )


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def use_vllm(settings: Settings) -> bool:
    """``grpo.use_vllm``, with null meaning: when vLLM is importable and CUDA is available."""
    want = settings.grpo.use_vllm
    if want is None:
        return vllm_importable() and cuda_available()
    if want and not vllm_importable():
        raise ConfigError(
            "grpo.use_vllm=true but vllm is not installed: install it or set grpo.use_vllm=null"
        )
    if want and not cuda_available():
        raise ConfigError("grpo.use_vllm=true needs a CUDA device: set grpo.use_vllm=null on this machine")
    return bool(want)


def use_bf16(settings: Settings) -> bool:
    """``grpo.bf16``, with null meaning: bf16 autocast on CUDA, fp32 on the CPU (bf16 is slower there)."""
    want = settings.grpo.bf16
    return cuda_available() if want is None else bool(want)
