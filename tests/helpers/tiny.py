"""The tiny-model settings, from their one source: configs/tiny.yaml.

Tests, bench/ and scripts/ used to keep their own copies of these override lists (adding one calibrate knob
touched five files). Now they read the file: whole (a tiny run of every stage) or by section group, layered
under a test's own overrides (later overrides win).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from safealign.common.nested import overrides_of

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
# Section groups of configs/tiny.yaml.
MODELS = ("policy", "reward")  # the random 2-layer policy and reward encoder, with their sizes
SMALL_RUN = ("grpo", "evaluate")  # a GRPO run and an evaluation that take seconds
RELAXED_GATES = ("calibrate",)  # a random encoder cannot clear the real calibration bar


@cache
def _config() -> dict[str, Any]:
    return yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))


def tiny_params(*sections: str) -> dict[str, Any]:
    """configs/tiny.yaml as a nested dict: the given sections (every section when none is given)."""
    unknown = set(sections) - set(_config())
    assert not unknown, f"configs/tiny.yaml has no section {sorted(unknown)}"
    return {k: copy.deepcopy(v) for k, v in _config().items() if not sections or k in sections}


def tiny_overrides(*sections: str) -> list[str]:
    """The same as ``--set`` lines (``policy.model=tiny:...``)."""
    return overrides_of(tiny_params(*sections))


TINY_POLICY: str = tiny_params("policy")["policy"]["model"]
TINY_ENCODER: str = tiny_params("reward")["reward"]["encoder"]
