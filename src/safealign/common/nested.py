"""One flattener for nested dicts: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

MLflow params and metrics, KFP Metrics and the validation summary all want dotted keys; each caller only
chooses which leaves it keeps (:func:`numeric_leaves` for metrics). :func:`overrides_of` turns a partial
params file (configs/tiny.yaml) into ``--set`` lines, so tests and benchmarks that layer it over other
settings read the file instead of keeping a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-mapping leaf of ``value`` under its dotted path (a leaf at the top is keyed ``prefix``)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def numeric_leaves(value: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers among the leaves (booleans as 0.0/1.0) as floats; lists, strings and NaN or
    infinity (a figure that could not be computed, e.g. an AUROC with one class) are dropped: KFP's metadata
    and MLflow's metrics cannot carry them."""
    return {
        k: float(v)
        for k, v in flatten(value, prefix).items()
        if isinstance(v, bool | int | float) and math.isfinite(float(v))
    }


def overrides_of(value: Mapping[str, Any]) -> list[str]:
    """``key.path=value`` overrides (the form ``--set`` and ``config.apply_overrides`` read) for every leaf
    of a nested mapping; each value is written as YAML, which is how an override's value is parsed back."""
    return [f"{key}={yaml.safe_dump(leaf, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, leaf in flatten(value).items()]
