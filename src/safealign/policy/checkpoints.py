"""GRPO checkpoints of the fast engine: everything needed to continue a run exactly, and which run it is.

A checkpoint holds the adapter, optimizer, scheduler, every RNG state (python, numpy, torch, the prompt
sampler), the constraint's lambda, the selection state, the step and the metric rows so far, written
atomically. Killed at any moment, the same command resumes from the last checkpoint and finishes with the
same number of steps; the resumed steps draw the same prompts and samples as an uninterrupted run would.

Which run a checkpoint belongs to is its fingerprint: a hash of every input that changes what the run
trains or selects: the ``grpo`` settings (the step count included: checkpoint selection validates the last
step, so a 4-step run and the first 4 steps of an 8-step run differ), the policy, the aspects, the reward
model folder, the train splits, the code that generates, scores and validates, and the versions of the
libraries doing the arithmetic. Only the checkpoint cadence is left out (it changes when state is saved,
not what is trained). Each run keeps its checkpoints in its own folder::

    <checkpoints_dir>/run-<fingerprint>/step-NNNNNN/{adapter/, state.pt, metrics.csv, checkpoint.json}
    <checkpoints_dir>/run-<fingerprint>/steps.csv   every step's row, appended as it happens

so pruning (the ``KEEP_CHECKPOINTS`` newest) never touches another run's checkpoints, and a run with other
settings starts from step 0 beside them. A checkpoint of the same settings PAST the requested step count
(a longer run) is refused rather than guessed at: see ``refuse_checkpoints_past``.

``state.pt`` holds tensors, numbers, strings and containers only, and is read with
``torch.load(weights_only=True)``: a checkpoint folder is data, and loading it never runs code from it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from safealign.common.atomic import atomic_dir, remove_stale_temps
from safealign.common.hashing import file_hash, tree_hash
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.errors import ConfigError
from safealign.policy.constraint import LagrangeConstraint
from safealign.policy.outputs import csv_to_rows, rows_to_csv, save_adapter
from safealign.policy.prompts import PromptSampler
from safealign.policy.reward_adapter import Scorer

if TYPE_CHECKING:
    from safealign.policy.selection import Selector

log = logging.getLogger(__name__)

RUN_PREFIX = "run-"
CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
STATE_FILE = "state.pt"
META_FILE = "checkpoint.json"
STEP_LOG = "steps.csv"
# The code that decides what a run trains (generation, loss, advantages, rewards, validation), relative to
# the safealign package: editing it starts a new run instead of resuming one trained by the old code.
TRAJECTORY_CODE = ("policy", "reward/model.py", "refusal/__init__.py")
TRAJECTORY_LIBRARIES = ("torch", "transformers", "peft", "numpy")


# --------------------------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class RunIdentity:
    """``fingerprint``: what a checkpoint must match to be resumed; ``settings_key``: the same without the
    step count (a longer or shorter run of the same settings shares it)."""

    fingerprint: str
    settings_key: str
    steps: int

    def folder(self, root: Path) -> Path:
        return root / f"{RUN_PREFIX}{self.fingerprint}"


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def code_digest() -> str:
    """Hash of the source files in ``TRAJECTORY_CODE``, as installed."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for rel in TRAJECTORY_CODE:
        path = package / rel
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(source.relative_to(package).as_posix().encode() + b"\0")
            digest.update(source.read_bytes() if source.is_file() else b"missing")
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in TRAJECTORY_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def run_identity(settings: Settings, scorer: Scorer, init_adapter: Path | None = None) -> RunIdentity:
    """The run's fingerprint and settings key (see the module docstring for what they cover).

    ``init_adapter``: the adapter a refresh round continues from (its content hash joins the fingerprint).
    The round count and refresh size are left out: they decide what happens after this run, so a first
    round trained with ``grpo.rounds: 1`` is resumed, not redone, when the rounds are raised.
    """
    layout = Layout.from_settings(settings)
    grpo = settings.grpo.model_dump(mode="json")
    for key in ("checkpoint_every", "rounds", "refresh_prompts"):
        grpo.pop(key, None)
    steps = int(grpo.pop("steps"))
    doc = {
        "grpo": grpo,
        "policy": settings.policy.model_dump(mode="json"),
        "aspects": settings.model_dump(mode="json")["aspects"],
        # validation decodes in batches of this size when checkpoint selection is on
        "selection_batch_size": settings.evaluate.batch_size if settings.grpo.selection else None,
        "scorer": type(scorer).__name__,
        "reward_model": tree_hash(layout.reward_model_dir),
        "adversarial_train": file_hash(layout.adversarial_split("train")),
        "benign_train": file_hash(layout.benign_split("train")),
        "code": code_digest(),
        "libraries": _library_versions(),
    }
    if init_adapter is not None:
        doc["init_adapter"] = tree_hash(init_adapter)
    key = _digest(doc)
    return RunIdentity(fingerprint=_digest({"settings": key, "steps": steps}), settings_key=key, steps=steps)


def run_fingerprint(settings: Settings, scorer: Scorer, init_adapter: Path | None = None) -> str:
    """What the TRL engine's checkpoints are matched on: ``run_identity(...).settings_key``, everything but
    the step count (TRL's trainer continues a shorter run of the same settings to a larger max_steps)."""
    return run_identity(settings, scorer, init_adapter).settings_key


# --------------------------------------------------------------------------------------------- finding


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk, as its ``checkpoint.json`` describes it."""

    path: Path
    step: int
    steps: int  # the step count of the run that wrote it
    fingerprint: str
    settings_key: str


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Every complete checkpoint of every run under ``root``, lowest step first (unreadable ones skipped)."""
    found = []
    for meta_path in root.glob(f"{RUN_PREFIX}*/{CHECKPOINT_PREFIX}*/{META_FILE}"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            found.append(
                Checkpoint(
                    meta_path.parent,
                    int(meta["step"]),
                    int(meta["steps"]),
                    str(meta["fingerprint"]),
                    str(meta["settings_key"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping checkpoint %s: unreadable %s (%s)", meta_path.parent, META_FILE, exc)
    return sorted(found, key=lambda c: (c.step, str(c.path)))


def remove_leftovers(root: Path) -> list[Path]:
    """Delete what killed checkpoint writes left (``.step-*.tmp-*``) in ``root`` and every run folder."""
    removed = remove_stale_temps(root)
    for folder in sorted(root.glob(f"{RUN_PREFIX}*")) if root.is_dir() else []:
        if folder.is_dir():
            removed += remove_stale_temps(folder)
    return removed


def refuse_checkpoints_past(checkpoints: list[Checkpoint], identity: RunIdentity) -> None:
    """A checkpoint of these settings past the requested step count is a ConfigError (exit 2).

    It comes from a longer run whose earlier steps were pruned: resuming it would report the longer run,
    and training a shorter one beside it is rarely what was meant. The message says how to choose.
    """
    past = [c for c in checkpoints if c.settings_key == identity.settings_key and c.step > identity.steps]
    if past:
        c = past[-1]
        raise ConfigError(
            f"{c.path}: checkpoint at step {c.step} of a {c.steps}-step run with the same settings, past "
            f"grpo.steps={identity.steps}; not resuming it. Set grpo.steps={c.steps} to reuse that run, or "
            f"run `safealign grpo --no-resume` to delete the checkpoints and train {identity.steps} steps "
            "from the start."
        )


# --------------------------------------------------------------------------------------------- state


def plain_state(obj: Any) -> Any:
    """Numpy scalars as Python numbers, recursively: what ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    key = numpy_state["state"]["key"]
    return {
        "python": random.getstate(),
        "numpy": {
            **plain_state({k: v for k, v in numpy_state.items() if k != "state"}),
            "state": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(numpy_state["state"]["pos"])},
        },
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        "key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
        "pos": state["numpy"]["state"]["pos"],
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])


@dataclass(frozen=True)
class RunObjects:
    """The live objects of a run whose state a checkpoint saves and :func:`restore` puts back in place."""

    model: Any  # the LoRA-wrapped policy: its adapter is saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: PromptSampler  # its RNG draws the prompts
    constraint: LagrangeConstraint | None = None  # its lambda
    selector: Selector | None = None  # checkpoint selection's records (None: selection off)


@dataclass(frozen=True)
class Progress:
    """Where a run stands: its last finished step, every step's metric row so far, its wall time so far."""

    step: int
    rows: list[dict[str, Any]]
    elapsed_s: float


def save_checkpoint(root: Path, identity: RunIdentity, objects: RunObjects, progress: Progress) -> Path:
    """Everything needed to continue exactly, written atomically; then this run's older ones are pruned."""
    folder, step, selector = identity.folder(root), progress.step, objects.selector
    target = folder / f"{CHECKPOINT_PREFIX}{step:06d}"
    meta = {"step": step, "steps": identity.steps, "fingerprint": identity.fingerprint,
            "settings_key": identity.settings_key}  # fmt: skip
    with atomic_dir(target) as tmp:
        save_adapter(objects.model, tmp / "adapter")
        state = {
            **meta,
            "optimizer": objects.optimizer.state_dict(),
            "scheduler": plain_state(objects.scheduler.state_dict()),
            "rng": _rng_state(),
            "rng_sampler": objects.sampler.rng.bit_generator.state,
            "constraint": plain_state(objects.constraint.state_dict()) if objects.constraint else None,
            "elapsed_s": float(progress.elapsed_s),
            "selection": plain_state(selector.state_dict() if selector else None),
        }
        torch.save(state, tmp / STATE_FILE)
        (tmp / "metrics.csv").write_text(rows_to_csv(progress.rows), encoding="utf-8")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    mine = [c for c in list_checkpoints(root) if c.fingerprint == identity.fingerprint]
    for old in mine[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old.path, ignore_errors=True)
    return target


def read_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint's whole state, read and checked before any of it is applied (weights_only)."""
    from safetensors.torch import load_file

    state = torch.load(ckpt.path / STATE_FILE, weights_only=True)
    if state.get("step") != ckpt.step or state.get("fingerprint") != ckpt.fingerprint:
        raise ValueError(f"{STATE_FILE} does not match {META_FILE}")
    state["adapter"] = load_file(str(ckpt.path / "adapter" / "adapter_model.safetensors"))
    state["rows"] = csv_to_rows((ckpt.path / "metrics.csv").read_text(encoding="utf-8"))
    return state


def find_resumable(checkpoints: list[Checkpoint], identity: RunIdentity) -> tuple[Checkpoint, dict] | None:
    """This run's newest checkpoint that reads back whole, with its state (a damaged one is skipped)."""
    for ckpt in reversed([c for c in checkpoints if c.fingerprint == identity.fingerprint]):
        try:
            return ckpt, read_checkpoint(ckpt)
        except Exception as exc:  # noqa: BLE001 - any damage: an older checkpoint may be fine
            log.warning("skipping damaged checkpoint %s: %s", ckpt.path, exc)
    return None


def restore(state: dict[str, Any], objects: RunObjects) -> Progress:
    """Put a state read by ``read_checkpoint`` back into the run's objects and the global RNGs; returns
    where the checkpointed run stood."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(objects.model, state["adapter"])
    objects.optimizer.load_state_dict(state["optimizer"])
    objects.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    objects.sampler.rng.bit_generator.state = state["rng_sampler"]
    if objects.constraint is not None and state.get("constraint"):
        objects.constraint.load_state_dict(state["constraint"])
    if objects.selector is not None and state.get("selection"):
        objects.selector.load_state_dict(state["selection"])
    step = int(state["step"])
    return Progress(step, state["rows"][:step], float(state.get("elapsed_s", 0.0)))
