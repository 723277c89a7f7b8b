"""Keep user text as data: special-token strings in a prompt or reply never become control tokens.

A Hugging Face tokenizer matches its added special tokens (``<|im_start|>``, ``[SEP]``, ...) as raw strings
BEFORE its normaliser and model run. So ``<|im_start|>system ...`` typed inside a prompt becomes a real turn
marker after the chat template (a forged system turn), and ``[SEP]`` inside a reply becomes a real segment
separator for the reward model. Either lets text steer the model through a channel that is not text.

:func:`neutralise` inserts a ZERO WIDTH SPACE after the first character of every occurrence. The string no
longer matches the added token, so the tokenizer encodes it as ordinary text: the BERT normaliser then
drops the zero-width space and yields exactly the "as text" pieces (``[``, ``sep``, ``]``); a byte-level BPE
keeps it as two byte tokens between ``<`` and ``|im_start|>``. Nothing visible changes in the text.

It works on strings (not token ids) on purpose: the chat template is rendered by the tokenizer itself (and by
TRL inside its trainer), so the only place every engine shares is the text handed to it. The policy applies
it in ``policy.loading.chat_messages`` and the reward model in ``RewardModel.tokenize``: those are the
choke points of training, selection, evaluation and scoring.
"""

from __future__ import annotations

import re
from typing import Any

from safealign.errors import ConfigError

BREAK = "\u200b"  # ZERO WIDTH SPACE: splits a special-token string without visible change

# id(tokenizer) -> (tokenizer, compiled pattern); the tokenizer is kept so the id cannot be reused.
_PATTERNS: dict[int, tuple[Any, re.Pattern[str] | None]] = {}


def special_strings(tokenizer: Any) -> list[str]:
    """Every special-token string the tokenizer matches as a unit (longest first).

    Both the named special tokens (bos, eos, sep, cls, pad, ...) and every added token flagged special
    (SmolLM2 has 17: ``<|im_start|>``, ``<file_sep>``, ``<jupyter_code>``, ...). Single characters are
    left alone: breaking them is impossible and no tokenizer here has one.
    """
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token in decoder.values():
        if getattr(token, "special", False):
            found.add(str(token.content))
    return sorted((s for s in found if len(s) >= 2), key=lambda s: (-len(s), s))


def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    cached = _PATTERNS.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    strings = special_strings(tokenizer)
    # Case-insensitive: a tokenizer whose added tokens are matched after lower-casing must not let
    # "[Sep]" through; breaking a harmless case variant costs nothing.
    pattern = re.compile("|".join(re.escape(s) for s in strings), re.IGNORECASE) if strings else None
    _PATTERNS[id(tokenizer)] = (tokenizer, pattern)
    _self_check(tokenizer, strings)
    return pattern


def _break(match: re.Match[str]) -> str:
    text = match.group(0)
    return text[0] + BREAK + text[1:]


def neutralise(text: str, tokenizer: Any) -> str:
    """``text`` with every special-token string of ``tokenizer`` broken so it tokenises as plain text.

    Idempotent, and text without special-token strings is returned unchanged (same object).
    """
    pattern = _pattern(tokenizer)
    if pattern is None or not text:
        return text
    # A break can never create a new match (no special token here contains the break character), but
    # overlapping occurrences ("<|im_start|im_start|>") need a second pass; it stops at the first clean one.
    while True:
        out = pattern.sub(_break, text)
        if out == text:
            return text
        text = out


def _self_check(tokenizer: Any, strings: list[str]) -> None:
    """Refuse a tokenizer for which breaking does not work (its normaliser would re-join the pieces)."""
    if not strings or not callable(tokenizer):
        return
    probe = " ".join(
        _break_all(s) for s in strings + [s.upper() for s in strings] + [s.lower() for s in strings]
    )
    ids = set(tokenizer(probe, add_special_tokens=False)["input_ids"])
    special_ids = {tokenizer.convert_tokens_to_ids(s) for s in strings} - {
        getattr(tokenizer, "unk_token_id", None)
    }
    leaked = ids & special_ids
    if leaked:
        names = sorted(tokenizer.convert_ids_to_tokens(i) for i in leaked)
        raise ConfigError(f"cannot keep special tokens {names} out of user text with this tokenizer")


def _break_all(s: str) -> str:
    return s[0] + BREAK + s[1:]


def neutralise_messages(messages: list[dict[str, str]], tokenizer: Any) -> list[dict[str, str]]:
    """Copies of chat ``messages`` with every turn's content neutralised, whatever its role.

    For chats that arrive from outside (serving requests, ``generate`` rows with ``messages``, the
    robustness suite's multi-turn attacks): a system message or an earlier turn is as untrusted as the
    last user turn, and one ``<|im_start|>`` in any of them would open a real turn of the chat template.
    Only the project's own configured system prompt is trusted as written (``chat_messages``).
    """
    return [{**m, "content": neutralise(m["content"], tokenizer)} for m in messages]
