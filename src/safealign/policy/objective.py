"""The GRPO objective, defined once: what both engines (fast and TRL) compute from a scored batch.

Each feature's arithmetic lives here and nowhere else; ``engine.grpo_step`` and the TRL extensions
(``trl_extensions.SafealignGRPOTrainer``) call these functions, and tests hold the two engines equal on one
batch. The features:

- **per-kind aspect weights** (``grpo.benign_weights``): every prompt's completions combine the K aspect
  scores with its kind's weight row (adversarial prompts: the aspects' weights; benign: their own);
- **the safety constraint** (``grpo.safety_constraint``): the Lagrangian term ``lambda * (safety -
  threshold)`` is added to the rewards of the prompts it covers (adversarial ones), and the multiplier's
  dual step sees only their mean safety (``constraint.LagrangeConstraint``);
- **group advantages with the std floor** (``grpo.std_floor``): ``advantages.group_advantages``, flat
  groups get zero advantage;
- **the benign refusal penalty** (``grpo.benign_refusal_penalty``): a completion to a benign prompt that
  the refusal judge calls a refusal loses a fixed amount of reward (``refusal_penalties``), so GRPO's one
  refusal register cannot spread to requests with no harm in them while the reward model rates a needless
  refusal about as high as a weak answer;
- **per-sample KL coefficients** (``grpo.benign_beta``): each sequence's KL(pi || base) term has its own
  coefficient, summed per token with TRL's k3 estimator and averaged over the sequence's tokens (the
  ``loss_type="grpo"`` aggregation);
- **the learning-rate schedule**: linear warm-up to a constant rate.

Arrays are numpy float64 for rewards (scores come from a reward model, not from autograd) and torch for
anything with a gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from safealign.policy.advantages import Advantages, group_advantages
from safealign.policy.constraint import LagrangeConstraint

__all__ = [
    "Advantages",
    "Objective",
    "PromptTreatment",
    "Shaped",
    "group_advantages",
    "lr_factor",
    "refusal_penalties",
    "sequence_kl",
    "sequence_policy_term",
    "shape_rewards",
    "token_kl",
]


# ------------------------------------------------------------------------------------------- rewards


@dataclass(frozen=True)
class Shaped:
    """One batch's rewards: the aspect mix, what the advantages see, and what the constraint's update sees."""

    combined: np.ndarray  # [N] each completion's weighted aspect sum (its prompt kind's weights)
    rewards: np.ndarray  # [N] combined + the Lagrangian term on covered completions - refusal penalties
    covered: np.ndarray  # [N] bool: the constraint applies (its prompt is adversarial)
    safety: np.ndarray | None  # [N] the constrained aspect's scores; None without a constraint
    penalties: np.ndarray | None = None  # [N] refusal penalties subtracted (None: no penalty this batch)

    @property
    def penalised_share(self) -> float:
        """Share of the batch's completions that lost a refusal penalty (0 without one)."""
        return 0.0 if self.penalties is None else float((self.penalties > 0).mean())

    def constraint_mean(self) -> float | None:
        """Mean constrained-aspect score over the covered completions: the dual step's input (None: none)."""
        if self.safety is None or not self.covered.any():
            return None
        return float(self.safety[self.covered].mean())


def combine(scores: np.ndarray, weights: np.ndarray, group_size: int) -> np.ndarray:
    """Each completion's weighted aspect sum; ``weights`` is [K] for all or [B, K], one row per prompt."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        return s @ w
    return (s * np.repeat(w, group_size, axis=0)).sum(axis=1)


def shape_rewards(
    scores: np.ndarray,
    weights: np.ndarray,
    group_size: int,
    aspects: Sequence[str],
    constraint: LagrangeConstraint | None = None,
    constrained: Sequence[bool] | None = None,
    penalties: np.ndarray | None = None,
) -> Shaped:
    """The rewards advantages are computed from: per-prompt weights, plus the Lagrangian term where covered,
    minus each completion's refusal penalty (``penalties``, [N], from :func:`refusal_penalties`).

    ``constrained`` has one flag per prompt (default: all); the term uses the constraint's CURRENT lambda
    (before this step's dual update). The penalty never reaches ``combined`` (the aspect mix the metrics
    report) nor the constraint's dual step.
    """
    combined = combine(scores, weights, group_size)
    covered = np.ones(len(combined), dtype=bool)
    if constrained is not None:
        covered = np.repeat(np.asarray(constrained, dtype=bool), group_size)
    penalty = None if penalties is None else np.asarray(penalties, dtype=np.float64)
    minus = 0.0 if penalty is None else penalty
    if constraint is None:
        return Shaped(combined, combined - minus, covered, None, penalty)
    safety = np.asarray(scores, dtype=np.float64)[:, list(aspects).index(constraint.aspect)]
    rewards = np.where(covered, constraint.shape(combined, safety), combined)
    return Shaped(combined, rewards - minus, covered, safety, penalty)


def refusal_penalties(
    texts: Sequence[str], per_prompt: Sequence[float], group_size: int
) -> np.ndarray | None:
    """[N] each completion's refusal penalty: its prompt's penalty where the refusal judge says "refuse".

    ``per_prompt`` is one penalty per prompt (:meth:`Objective.prompt_refusal_penalties`: benign prompts
    ``grpo.benign_refusal_penalty``, adversarial ones 0). None when no prompt has one, so a run without the
    penalty never calls the judge.
    """
    per_completion = np.repeat(np.asarray(per_prompt, dtype=np.float64), group_size)
    if len(per_completion) != len(texts):
        raise ValueError(f"{len(texts)} completions for {len(per_prompt)} prompts x G={group_size}")
    if not per_completion.any():
        return None
    from safealign.refusal import is_refusal

    refused = np.array([bool(p) and is_refusal(t) for p, t in zip(per_completion, texts, strict=True)])
    return np.where(refused, per_completion, 0.0)


# ------------------------------------------------------------------------------------------- loss


def sequence_policy_term(
    logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """Each sequence's policy-gradient term, [n]: mean over its tokens of ``-A * ratio`` at ratio 1.

    ``ratio = exp(logp - logp.detach())`` is 1 in value and has the gradient of ``logp``: TRL's clipped
    surrogate ``-min(ratio * A, clip(ratio) * A)`` for one optimisation pass per batch (the clip is inactive
    at 1), so both engines report the same loss value and follow the same gradient.
    """
    m = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - logprobs.detach())
    per_token = -advantages.to(logprobs.dtype)[:, None] * ratio
    return (per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) by the k3 estimator TRL's GRPO uses: exp(d) - d - 1 with d = ref - logp.

    Unbiased for samples from pi, never negative, and with gradient only through ``logprobs``.
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, betas: torch.Tensor
) -> torch.Tensor:
    """Each sequence's KL term of the GRPO loss, [n]: ``beta_i * mean over its tokens of KL_t``.

    Rows with ``beta_i = 0`` contribute exactly 0, value and gradient, whatever their reference holds: their
    log-ratio is set to 0 BEFORE the exp, because a large one (an unlikely token at a low temperature, or a
    placeholder reference) would overflow exp() to inf, and inf * 0 is NaN in the backward pass.
    """
    m = mask.to(logprobs.dtype)
    b = torch.as_tensor(betas, dtype=logprobs.dtype, device=logprobs.device)
    ref = torch.where((b != 0)[:, None], ref_logprobs, logprobs.detach())  # log-ratio 0 where beta is 0
    kl = token_kl(logprobs, ref)
    return b * (kl * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


# ------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then constant (paper).

    Step 0 already trains at ``1 / (warmup + 1)`` of the rate (a schedule starting at 0 wastes a step).
    """
    return min(1.0, (step + 1) / (warmup_steps + 1))


# ------------------------------------------------------------------------------------------- per kind


@dataclass(frozen=True)
class PromptTreatment:
    """How each of one step's B prompts is treated: what ``engine.grpo_step`` needs beside the prompts.

    The GRPO stage builds it from the prompts' kinds (:meth:`Objective.treatment`); a field left at its
    default treats every prompt alike.
    """

    # aspect weights: [K] for every prompt or [B, K] one row per prompt (benign prompts get their own row,
    # grpo.benign_weights)
    weights: np.ndarray
    # one flag per prompt (None: all): the safety constraint's Lagrangian term is added to the flagged
    # prompts' completions only, and the multiplier's update sees only their safety. The stage flags the
    # adversarial ones: a constraint over benign prompts too (where a refusal scores higher safety than an
    # answer) teaches refusing everything once the multiplier is large
    constrained: Sequence[bool] | None = None
    # one KL coefficient per prompt (None: StepConfig.beta for all); benign prompts get grpo.benign_beta
    betas: Sequence[float] | None = None
    # one penalty per prompt for a completion the refusal judge calls a refusal (None: no penalty); benign
    # prompts get grpo.benign_refusal_penalty
    refusal_penalties: Sequence[float] | None = None
    # prompt index -> a completion that replaces the last of its G samples (the greedy refusals
    # refusal_probe found; grpo.benign_refusal_probe)
    forced: Mapping[int, Sequence[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    """Per-kind settings of one run: aspect weights and KL coefficient for adversarial and benign prompts."""

    aspects: tuple[str, ...]
    weights: np.ndarray  # [K] adversarial prompts (params' aspects)
    benign_weights: np.ndarray  # [K] benign prompts (grpo.benign_weights, else the aspects')
    beta: float
    benign_beta: float
    std_floor: float
    group_size: int
    benign_refusal_penalty: float = 0.0

    @classmethod
    def from_settings(cls, settings: object, aspects: Sequence[str]) -> Objective:
        """From params (``settings.aspects`` and ``settings.grpo``), in the reward model's aspect order."""
        from safealign.policy.reward_adapter import aspect_weights

        cfg = settings.grpo  # type: ignore[attr-defined]
        weights = aspect_weights(settings.aspects, aspects)  # type: ignore[attr-defined]
        benign = weights if cfg.benign_weights is None else aspect_weights(cfg.benign_weights, aspects)
        return cls(
            aspects=tuple(aspects),
            weights=weights,
            benign_weights=benign,
            beta=float(cfg.beta),
            benign_beta=float(cfg.beta if cfg.benign_beta is None else cfg.benign_beta),
            std_floor=float(cfg.std_floor),
            group_size=int(cfg.num_generations),
            benign_refusal_penalty=float(cfg.benign_refusal_penalty),
        )

    def prompt_weights(self, adversarial: Sequence[bool]) -> np.ndarray:
        """[B, K]: each prompt's weight row by its kind."""
        return np.stack([self.weights if adv else self.benign_weights for adv in adversarial])

    def prompt_betas(self, adversarial: Sequence[bool]) -> list[float]:
        """Each prompt's KL coefficient by its kind."""
        return [self.beta if adv else self.benign_beta for adv in adversarial]

    def prompt_refusal_penalties(self, adversarial: Sequence[bool]) -> list[float]:
        """Each prompt's refusal penalty by its kind: benign prompts only (a refusal of harm is the goal)."""
        return [0.0 if adv else self.benign_refusal_penalty for adv in adversarial]

    def treatment(
        self, adversarial: Sequence[bool], forced: Mapping[int, Sequence[int]] | None = None
    ) -> PromptTreatment:
        """Each prompt's treatment by its kind: weights, KL coefficient and refusal penalty of its kind, the
        safety constraint on the adversarial ones; ``forced`` completions as given."""
        return PromptTreatment(
            weights=self.prompt_weights(adversarial),
            constrained=adversarial,
            betas=self.prompt_betas(adversarial),
            refusal_penalties=self.prompt_refusal_penalties(adversarial),
            forced=forced or {},
        )

    @property
    def uses_kl(self) -> bool:
        return self.beta != 0 or self.benign_beta != 0

    def shape(
        self,
        scores: np.ndarray,
        adversarial: Sequence[bool],
        constraint: LagrangeConstraint | None,
        texts: Sequence[str] | None = None,
    ) -> Shaped:
        """Rewards of a batch of prompts (G completions each, group-major) given each prompt's kind.

        ``texts`` (the decoded completions) are needed only with a benign refusal penalty.
        """
        penalties = None
        if self.benign_refusal_penalty and not all(adversarial):
            if texts is None:
                raise ValueError("a benign refusal penalty needs the completions' texts")
            penalties = refusal_penalties(texts, self.prompt_refusal_penalties(adversarial), self.group_size)
        return shape_rewards(
            scores,
            self.prompt_weights(adversarial),
            self.group_size,
            self.aspects,
            constraint,
            adversarial,
            penalties,
        )

    def advantages(self, rewards: np.ndarray) -> Advantages:
        return group_advantages(
            torch.as_tensor(rewards, dtype=torch.float32), self.group_size, self.std_floor
        )
