"""params.yaml, generated from config.py: every default with its description as a comment above it.

config.py is the one source of defaults and of their documentation; params.yaml is what DVC, the CLI
and the KFP pipeline read, and the file a user reads first. Generating one from the other means the two
cannot disagree (a value or a comment): ``safealign config dump --output params.yaml`` (``make params``)
rewrites it, and tests/test_config.py fails when the committed file differs from what config.py renders.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

from safealign.config import Settings

WIDTH = 110
INDENT = "  "
HEADER = """\
# THE config of safealign: the CLI, DVC (dvc.yaml `params:`) and the KFP pipeline all read this file.
# GENERATED from src/safealign/config.py (`safealign config dump --output params.yaml`, or `make params`):
# change a default or its description there and regenerate; tests/test_config.py fails when they differ.
# For one run, override on the command line with --set section.key=value, or pass a file with --params
# that sets only the keys it changes (configs/*.yaml); unknown keys are an error.
"""


def _scalar(value: Any) -> str:
    """One YAML value on one line (lists and mappings in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment(text: str | None, depth: int) -> list[str]:
    if not text:
        return []
    prefix = INDENT * depth + "# "
    words = " ".join(text.split())
    return textwrap.wrap(
        words, WIDTH, initial_indent=prefix, subsequent_indent=prefix, break_on_hyphens=False
    )


def _field(name: str, description: str | None, value: Any, depth: int) -> list[str]:
    """A key with its comment; a section recurses, a list of sections is one flow mapping per item."""
    pad = INDENT * depth
    lines = _comment(description, depth)
    if isinstance(value, BaseModel):
        lines.append(f"{pad}{name}:")
        for key, info in type(value).model_fields.items():
            lines += _field(key, info.description, getattr(value, key), depth + 1)
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        lines.append(f"{pad}{name}:")
        lines += [f"{pad}{INDENT}- {_scalar(item.model_dump(mode='json'))}" for item in value]
    else:
        lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def render_params(settings: Settings | None = None) -> str:
    """The text of params.yaml for ``settings`` (default: config.py's defaults)."""
    settings = settings if settings is not None else Settings()
    lines = HEADER.splitlines()
    for name, info in Settings.model_fields.items():
        lines += ["", *_field(name, info.description, getattr(settings, name), 0)]
    return "\n".join(lines) + "\n"
