"""Evaluation's generation, which now lives in ``safealign.policy.decoding`` (one fast path for every caller).

Kept as a name so code written against ``safealign.evaluation.generate`` still imports; new code imports
``safealign.policy.decoding`` directly.
"""

from __future__ import annotations

from safealign.policy.decoding import format_turns, generate_from_texts, generate_replies

__all__ = ["format_turns", "generate_from_texts", "generate_replies"]
