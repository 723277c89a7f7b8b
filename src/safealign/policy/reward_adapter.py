"""The reward as GRPO sees it: one reward-model forward per batch, K aspect scores, one combined reward.

- :class:`Scorer` is what both engines need: ``score(prompts, responses, completion_ids) -> [N, K]``.
  :class:`RewardModelScorer` wraps ``safealign.reward.model.RewardModel`` (its ``score(prompts,
  responses)``); tests plug in toy scorers that read token ids.
- :func:`aspect_weights` takes the weights from params (``settings.aspects``) in the reward model's output
  order, so re-weighting aspects needs no retraining.
- :func:`trl_reward_functions` gives TRL one reward function per aspect (so it logs every aspect's mean and
  std and applies ``reward_weights``), all sharing ONE cached forward: the first function called on a
  batch scores all K aspects, the others read the cache. Passing the multi-output model itself to TRL would
  use ``logits[:, 0]`` only, without the sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.errors import ConfigError


class Scorer(Protocol):
    aspects: list[str]

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> np.ndarray: ...


class RewardModelScorer:
    """Adapter from RewardModel (text pairs) to the Scorer protocol; counts forwards for the tests."""

    def __init__(self, reward_model: Any, batch_size: int = 64) -> None:
        self.model = reward_model
        self.aspects = list(reward_model.aspects)
        self.batch_size = batch_size
        self.calls = 0

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
    ) -> np.ndarray:
        self.calls += 1
        return np.asarray(
            self.model.score(list(prompts), list(responses), batch_size=self.batch_size), dtype=np.float64
        )


def load_scorer(settings: Settings) -> Scorer:
    """The trained reward model in ``Layout.reward_model_dir`` as a Scorer.

    Missing, corrupt or trained for other aspects than the settings name: ModelFolderError (exit 2).
    """
    from safealign.reward.model import RewardModel  # torch + transformers: only when a model is loaded

    folder = Layout.from_settings(settings).reward_model_dir
    return RewardModelScorer(RewardModel.for_settings(folder, settings))


def aspect_weights(
    weights: Sequence[Any] | Mapping[str, float], scorer_aspects: Sequence[str]
) -> np.ndarray:
    """Weights in the scorer's column order, from params' aspects (``.name``/``.weight``) or a name -> weight
    mapping such as ``grpo.benign_weights``. Every weighted aspect must be scored."""
    if isinstance(weights, Mapping):
        by_name = {name: float(w) for name, w in weights.items()}
    else:
        by_name = {a.name: float(a.weight) for a in weights}
    missing = [name for name, w in by_name.items() if w > 0 and name not in scorer_aspects]
    if missing:
        raise ConfigError(
            f"aspects {missing} have a weight in params but the reward model does not score them"
        )
    return np.asarray([by_name.get(name, 0.0) for name in scorer_aspects], dtype=np.float64)


class SharedScoreCache:
    """Scores a batch once and serves each aspect's column; keyed by the exact (prompts, responses)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._key: tuple | None = None
        self._scores: np.ndarray | None = None
        self.forwards = 0

    def get(self, prompts: Sequence[str], responses: Sequence[str], completion_ids: Any = None) -> np.ndarray:
        key = (tuple(prompts), tuple(responses))
        if key != self._key or self._scores is None:
            self._scores = self.scorer.score(prompts, responses, completion_ids)
            self._key = key
            self.forwards += 1
        return self._scores


def text_of(item: Any) -> str:
    """TRL passes strings (standard format) or message lists (conversational format)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and item and isinstance(item[-1], dict):
        return str(item[-1].get("content", ""))
    return str(item)


def trl_reward_functions(cache: SharedScoreCache) -> list[Callable[..., list[float]]]:
    """One TRL reward function per aspect, named after it, sharing one reward-model forward per batch.

    The dataset carries the raw user prompt in column ``raw_prompt`` (TRL forwards extra columns as keyword
    arguments), so the reward model sees the same (prompt, response) pair as in the fast engine.
    """
    funcs = []
    for k, aspect in enumerate(cache.scorer.aspects):

        def reward(
            prompts: list, completions: list, completion_ids: Any = None, _k: int = k, **kwargs: Any
        ) -> list[float]:
            raw = kwargs.get("raw_prompt") or [text_of(p) for p in prompts]
            responses = [text_of(c) for c in completions]
            return [float(x) for x in cache.get(raw, responses, completion_ids)[:, _k]]

        reward.__name__ = aspect
        funcs.append(reward)
    return funcs
