"""GRPO checkpoints of the fast engine: everything needed to continue a run exactly, and when to.

A checkpoint holds the adapter, optimizer, scheduler, every RNG state (python, numpy, torch, the prompt
sampler), the constraint's lambda, the selection state, the step and the metric rows so far, written
atomically. Killed at any moment, the same command resumes from the last checkpoint and finishes with the
same number of steps; the resumed steps draw the same prompts and samples as an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safealign.atomic import atomic_dir
from safealign.config import Settings
from safealign.layout import Layout
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.outputs import csv_to_rows, rows_to_csv
from safealign.policy.prompts import PromptSampler
from safealign.policy.reward_adapter import Scorer

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
STATE_FILE = "state.pt"


def _file_digest(path: Path) -> str:
    if not path.exists():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_fingerprint(settings: Settings, scorer: Scorer) -> str:
    """What a checkpoint must match to be resumed: everything but the step count and checkpoint cadence.

    Includes the reward model's head and the train prompt files, so retraining the reward model (DVC
    re-running the stage) never resumes a checkpoint trained against the old reward.
    """
    layout = Layout.from_settings(settings)
    grpo = settings.grpo.model_dump(mode="json")
    grpo.pop("steps", None)
    grpo.pop("checkpoint_every", None)
    doc = {
        "grpo": grpo,
        "policy": settings.policy.model_dump(mode="json"),
        "aspects": settings.model_dump(mode="json")["aspects"],
        "scorer": type(scorer).__name__,
        "reward_head": _file_digest(layout.reward_model_dir / "reward_head.safetensors"),
        "reward_config": _file_digest(layout.reward_model_dir / "reward_config.json"),
        "adversarial_train": _file_digest(layout.adversarial_split("train")),
        "benign_train": _file_digest(layout.benign_split("train")),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.exists():
        for path in root.iterdir():
            if path.name.startswith(CHECKPOINT_PREFIX) and (path / STATE_FILE).exists():
                try:
                    found.append((int(path.name[len(CHECKPOINT_PREFIX) :]), path))
                except ValueError:
                    continue
    return sorted(found)


def save_checkpoint(
    root: Path,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: PromptSampler,
    constraint: LagrangeConstraint | None,
    rows: list[dict[str, Any]],
    fingerprint: str,
    elapsed_s: float,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Everything needed to continue exactly, written to a temp dir and renamed (atomic)."""
    target = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {
                "step": step,
                "fingerprint": fingerprint,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_python": random.getstate(),
                "rng_numpy": np.random.get_state(),
                "rng_torch": torch.get_rng_state(),
                "rng_sampler": sampler.rng.bit_generator.state,
                "constraint": constraint.state_dict() if constraint else None,
                "elapsed_s": elapsed_s,
                "selection": selection,
            },
            tmp / STATE_FILE,
        )
        (tmp / "metrics.csv").write_text(rows_to_csv(rows), encoding="utf-8")
    for _, old in _checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    path: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    sampler: PromptSampler,
    constraint: LagrangeConstraint | None,
) -> tuple[int, list[dict[str, Any]], float, dict[str, Any] | None]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = torch.load(path / STATE_FILE, weights_only=False)
    set_peft_model_state_dict(model, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng_python"])
    np.random.set_state(state["rng_numpy"])
    torch.set_rng_state(state["rng_torch"])
    sampler.rng.bit_generator.state = state["rng_sampler"]
    if constraint is not None and state.get("constraint"):
        constraint.load_state_dict(state["constraint"])
    rows = csv_to_rows((path / "metrics.csv").read_text(encoding="utf-8"))
    return int(state["step"]), rows, float(state.get("elapsed_s", 0.0)), state.get("selection")


def find_resumable(root: Path, fingerprint: str) -> Path | None:
    for _, path in reversed(_checkpoints(root)):
        try:
            fp = torch.load(path / STATE_FILE, weights_only=False).get("fingerprint")
        except Exception:  # noqa: BLE001 - a damaged checkpoint is skipped, an older one may be fine
            log.warning("skipping unreadable checkpoint %s", path)
            continue
        if fp == fingerprint:
            return path
        log.warning("checkpoint %s was made with other settings/reward/data; not resuming from it", path)
        return None
    return None
