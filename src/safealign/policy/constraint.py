"""Safety as a constraint (Safe-RLHF style): maximise the reward subject to mean safety >= threshold.

The Lagrangian relaxation adds ``lambda * (r_safety - threshold)`` to every completion's reward, with the
multiplier updated by projected gradient ascent on the dual after each step:

    lambda <- max(0, lambda + lr * (threshold - mean safety of the batch))

so lambda grows while the policy is under the bar (safety weighs more and more) and decays back to zero
once the bar is met (the other aspects get the policy back). lambda is part of the checkpoint. The GRPO
stage applies it to adversarial prompts only (``PromptTreatment.constrained``): the constraint is about
harmful requests, and over benign ones (where a refusal scores higher safety than an answer) it rewards
needless refusals.

When the bar is out of reach for the policy, lambda grows by ~lr * (threshold - safety) every step without
limit and the reward becomes safety alone, the regime in which a stock refusal wins:
``lam_max`` caps it so the other aspects keep a share of the reward however long the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from safealign.config import Settings
from safealign.errors import DataError


@dataclass
class LagrangeConstraint:
    threshold: float
    lr: float
    aspect: str = "safety"
    lam: float = 0.0
    lam_max: float | None = None  # cap: past it, more safety weight only teaches refusing (see module doc)

    def shape(self, combined: np.ndarray, safety: np.ndarray) -> np.ndarray:
        """Rewards with the Lagrangian term added, using the CURRENT lambda (before this step's update)."""
        return np.asarray(combined, dtype=np.float64) + self.lam * (
            np.asarray(safety, dtype=np.float64) - self.threshold
        )

    def update(self, mean_safety: float) -> float:
        """One dual ascent step; returns the new lambda (never negative)."""
        lam = max(0.0, self.lam + self.lr * (self.threshold - float(mean_safety)))
        self.lam = lam if self.lam_max is None else min(lam, self.lam_max)
        return self.lam

    def state_dict(self) -> dict[str, float | str]:
        return {
            "threshold": self.threshold,
            "lr": self.lr,
            "aspect": self.aspect,
            "lam": self.lam,
            "lam_max": self.lam_max,
        }

    def load_state_dict(self, state: dict) -> None:
        self.lam = float(state["lam"])


def constraint_from_settings(settings: Settings, scored_aspects: Sequence[str]) -> LagrangeConstraint | None:
    """The constraint ``grpo.safety_constraint`` asks for (None when unset); its aspect must be scored."""
    sc = settings.grpo.safety_constraint
    if sc is None:
        return None
    if sc.aspect not in scored_aspects:
        raise DataError(f"grpo.safety_constraint.aspect {sc.aspect!r} is not scored by the reward model")
    return LagrangeConstraint(threshold=sc.threshold, lr=sc.lr, aspect=sc.aspect, lam_max=sc.lambda_max)
