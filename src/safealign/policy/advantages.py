"""Group-relative advantages (GRPO): no value critic, each completion is judged against its siblings.

For a prompt with G completions and rewards r_1..r_G, A_i = (r_i - mean(r)) / std(r). Sigmoid rewards
saturate, so a group's std can be tiny; dividing by it turns noise into full-size advantages. A group whose
std is below ``std_floor`` is FLAT: its advantages are zero (it carries no signal), and how often that
happens is logged (``frac_flat``), like TRL's ``frac_reward_zero_std``.

std is the unbiased sample std (ddof=1), as in TRL, so non-flat groups come out with unit sample std.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Advantages:
    values: torch.Tensor  # [N] float32, N = groups * G, group-major (prompt 0's G completions first)
    flat: torch.Tensor  # [groups] bool: True where the group was flat (all its advantages are 0)
    group_mean: torch.Tensor  # [groups]
    group_std: torch.Tensor  # [groups]

    @property
    def frac_flat(self) -> float:
        return float(self.flat.float().mean()) if self.flat.numel() else 0.0

    def stats(self) -> dict[str, float]:
        v = self.values
        nonzero = v[v != 0]
        return {
            "adv_mean": float(v.mean()),
            "adv_std": float(v.std(unbiased=False)),
            "adv_abs_max": float(v.abs().max()) if v.numel() else 0.0,
            "adv_frac_nonzero": float(nonzero.numel() / max(1, v.numel())),
            "frac_flat_groups": self.frac_flat,
        }


def group_advantages(rewards: torch.Tensor, group_size: int, std_floor: float) -> Advantages:
    """(r - group mean) / group std per group of ``group_size``; flat groups (std < floor) get zero."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32).flatten()
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (G >= 2)")
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1)
    std = grouped.std(dim=1, unbiased=True)
    flat = std < std_floor
    safe_std = torch.where(flat, torch.ones_like(std), std)
    adv = (grouped - mean[:, None]) / safe_std[:, None]
    adv = torch.where(flat[:, None], torch.zeros_like(adv), adv)
    return Advantages(values=adv.flatten(), flat=flat, group_mean=mean, group_std=std)
