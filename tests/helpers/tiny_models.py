"""Real tiny models for registry and serving tests: a seeded random 2-layer policy with a LoRA adapter, and
a tiny-encoder reward model. Built once per label and copied, because promotion now logs MLflow models that
must load (the registry checks contents, not just bytes)."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

from helpers.tiny import TINY_ENCODER, TINY_POLICY

_BUILT: dict[tuple[str, str], Path] = {}


def overrides(cache_dir: Path) -> list[str]:
    return [
        f"policy.model={TINY_POLICY}",
        f"reward.encoder={TINY_ENCODER}",
        f"paths.cache_dir={cache_dir}",
        "reward.max_length=32",
        "evaluate.max_new_tokens=6",
    ]


def _store(kind: str, label: str, build) -> Path:
    key = (kind, label)
    if key not in _BUILT or not _BUILT[key].exists():
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix=f"tiny-{kind}-")) / "model"
        build(folder)
        _BUILT[key] = folder
    return _BUILT[key]


def adapter(target: Path, settings, label: str) -> Path:
    """A LoRA adapter on the tiny policy whose weights are seeded by ``label`` (distinct labels differ)."""

    def build(folder: Path) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        from safealign.policy.loading import load_policy

        model, _tok = load_policy(settings)
        torch.manual_seed(zlib.crc32(label.encode()))
        peft_model = get_peft_model(
            model,
            LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        peft_model.save_pretrained(str(folder))

    return _copy(_store("adapter", label, build), target)


def reward_model(target: Path, settings, label: str = "reward-v1") -> Path:
    def build(folder: Path) -> None:
        import torch

        from safealign.reward.model import RewardModel

        torch.manual_seed(zlib.crc32(label.encode()))
        RewardModel.from_settings(settings).save_pretrained(folder)

    return _copy(_store("reward", label, build), target)


def _copy(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target
