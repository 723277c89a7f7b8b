"""Where each stage reads and writes, in one place, so the CLI, DVC and KFP agree on paths.

data/ holds inputs only (tracked by data.dvc); stage outputs live under artifacts/ and metrics/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from safealign.config import Settings

SPLITS = ("train", "val", "heldout")


@dataclass(frozen=True)
class Layout:
    data_dir: Path
    artifacts_dir: Path
    metrics_dir: Path
    cache_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        p = settings.paths
        return cls(Path(p.data_dir), Path(p.artifacts_dir), Path(p.metrics_dir), Path(p.cache_dir))

    # ---- inputs (data/) ----
    @property
    def adversarial_prompts(self) -> Path:
        return self.data_dir / "prompts_adversarial.jsonl"

    @property
    def benign_prompts(self) -> Path:
        return self.data_dir / "prompts_benign.jsonl"

    @property
    def labelled(self) -> Path:
        return self.data_dir / "labelled.jsonl"

    @property
    def probes(self) -> Path:
        return self.data_dir / "probes.jsonl"

    @property
    def refusal_set(self) -> Path:
        return self.data_dir / "refusal_set.jsonl"

    @property
    def onpolicy_set(self) -> Path:
        """Real policy replies labelled by hand on every aspect: the calibration gate's on-policy check."""
        return self.data_dir / "onpolicy_set.jsonl"

    @property
    def refusal_rubric(self) -> Path:
        return self.data_dir / "REFUSAL_RUBRIC.md"

    @property
    def sources_doc(self) -> Path:
        return self.data_dir / "SOURCES.md"

    # ---- validate ----
    @property
    def splits_dir(self) -> Path:
        return self.artifacts_dir / "splits"

    def labelled_split(self, split: str) -> Path:
        return self.splits_dir / f"labelled_{split}.jsonl"

    def adversarial_split(self, split: str) -> Path:
        """Adversarial prompts are split train/heldout; held-out prompts are never used in GRPO."""
        return self.splits_dir / f"adversarial_{split}.jsonl"

    def benign_split(self, split: str) -> Path:
        return self.splits_dir / f"benign_{split}.jsonl"

    @property
    def validation_dir(self) -> Path:
        return self.artifacts_dir / "validation"

    # ---- reward / calibrate ----
    @property
    def reward_model_dir(self) -> Path:
        return self.artifacts_dir / "reward_model"

    @property
    def calibration_dir(self) -> Path:
        return self.artifacts_dir / "calibration"

    # ---- grpo ----
    @property
    def policy_dir(self) -> Path:
        return self.artifacts_dir / "policy"

    @property
    def adapter_dir(self) -> Path:
        return self.policy_dir / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.artifacts_dir / "grpo_checkpoints"

    @property
    def grpo_steps_csv(self) -> Path:
        return self.metrics_dir / "grpo_steps.csv"

    # ---- evaluate / promote ----
    @property
    def evaluation_dir(self) -> Path:
        return self.artifacts_dir / "evaluation"

    def metrics_file(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"
