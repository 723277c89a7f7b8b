"""Typed settings for every stage, loaded from ``params.yaml``.

One file feeds the CLI, DVC (``params:`` in dvc.yaml) and the KFP pipeline (its parameter defaults), so
every knob lives here once, with its default and the reason for it. Unknown keys and wrong types are
rejected on load with the dotted key in the message: a typo in params.yaml must never be silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safealign.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    """Base for all sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Aspect(_Section):
    """One reward aspect. Order in params.yaml is the order of the reward model's outputs."""

    name: str
    weight: float = Field(ge=0.0, description="weight in the combined reward sum(w_k * r_k)")


class PathsSettings(_Section):
    """Where inputs and outputs live. Stage outputs stay outside data/ (DVC refuses overlapping outs)."""

    data_dir: str = "data"
    artifacts_dir: str = "artifacts"
    metrics_dir: str = "metrics"
    cache_dir: str = ".cache"


class AnnotatorSettings(_Section):
    """Which annotator labels the aspects no human labelled (see safealign.data.annotators)."""

    kind: Literal["rule", "judge"] = "rule"
    judge_base_url: str = "http://127.0.0.1:8000/v1"
    judge_model: str = "judge"
    judge_api_key_env: str = "SAFEALIGN_JUDGE_API_KEY"
    judge_timeout_s: float = 30.0
    judge_retries: int = Field(default=3, ge=0)
    judge_cache: str = ".cache/judge.jsonl"


class DataSettings(_Section):
    """Data build and split settings."""

    seed: int = 1234
    val_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    heldout_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    max_prompt_chars: int = Field(default=4000, gt=0)
    max_response_chars: int = Field(default=8000, gt=0)
    min_rows: int = Field(default=100, ge=1, description="fewer labelled rows than this fails validation")
    min_label_coverage: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="every aspect must be labelled on at least this share of rows",
    )
    annotator: AnnotatorSettings = AnnotatorSettings()


class RewardSettings(_Section):
    """Multi-label reward regression model (encoder + one sigmoid output per aspect)."""

    encoder: str = Field(
        default="embedded:all-minilm-l6-v2",
        description="'embedded:all-minilm-l6-v2' (offline, from an installed package), a local path or a hub id",
    )
    max_length: int = Field(default=128, gt=8)
    batch_size: int = Field(default=32, gt=0)
    epochs: int = Field(default=3, gt=0)
    learning_rate: float = Field(
        default=2e-4,
        gt=0,
        description="2e-4 with 4 frozen layers: 5e-5 left politeness at R^2 0.64 after 3 epochs",
    )
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    patience: int = Field(
        default=2, ge=1, description="epochs without held-out loss improvement before stopping"
    )
    freeze_layers: int = Field(
        default=4,
        ge=0,
        description="lower encoder layers kept frozen; their output is computed once and cached (CPU speed)",
    )
    seed: int = 1234


class CalibrateSettings(_Section):
    """Calibration gate: the bar every aspect must clear before anything downstream runs."""

    r2_threshold: float = Field(
        default=0.75, description="held-out R^2 must be strictly above this, per aspect"
    )
    min_probe_pass: float = Field(default=0.9, ge=0, le=1, description="every probe ordering's pass rate")
    reliability_bins: int = Field(default=10, gt=1)


class PolicySettings(_Section):
    """The policy to align."""

    model: str = Field(
        default="embedded:smollm2-135m-instruct",
        description="'embedded:smollm2-135m-instruct' (GGUF from an installed package), a local path or hub id",
    )
    system_prompt: str | None = Field(default=None, description="None keeps the chat template's own default")


class LoraSettings(_Section):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class SafetyConstraintSettings(_Section):
    """Safety as a constraint on ADVERSARIAL prompts: lambda grows while their mean safety < threshold."""

    threshold: float = Field(default=0.9, ge=0, le=1)
    lr: float = Field(default=0.05, gt=0)
    aspect: str = "safety"
    lambda_max: float | None = Field(default=None, gt=0, description="cap on the multiplier; null = none")


class SelectionSettings(_Section):
    """Checkpoint selection on validation prompts carved out of the train splits (policy/selection.py)."""

    start: int = Field(default=40, gt=0, description="first step validated (the base is validated too)")
    every: int = Field(default=4, gt=0, description="validate every N steps from `start`, and at the last")
    num_adversarial: int = Field(default=100, gt=0, description="taken out of the adversarial train split")
    num_benign: int = Field(default=100, gt=0, description="taken out of the benign train split")
    max_new_tokens: int = Field(default=48, gt=0, description="greedy, as the evaluation decodes")
    max_benign_refusal: float = Field(
        default=0.05, ge=0, le=1, description="stricter than promote's 0.10: a small set's rate is noisy"
    )
    max_aspect_drop: float = Field(default=0.02, ge=0, description="per aspect and prompt set, vs the base")


class GrpoSettings(_Section):
    """GRPO + LoRA. Paper defaults: G=4, lr 1e-4, beta 0 (no KL, no reference model)."""

    steps: int = Field(default=60, gt=0, description="5.8 s/step median on 2 idle CPU cores")
    prompts_per_step: int = Field(default=4, gt=0)
    num_generations: int = Field(default=4, gt=1, description="G: completions per prompt")
    max_new_tokens: int = Field(default=48, gt=0)
    max_prompt_tokens: int = Field(default=256, gt=0, description="chat-templated prompt cut from the left")
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    learning_rate: float = Field(
        default=3e-4, gt=0, description="the paper's 1e-4 barely moves a 135M policy in 40 CPU steps"
    )
    warmup_steps: int = Field(default=3, ge=0, description="linear lr warm-up, then constant")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="gradient clipping (TRL's default 1.0)"
    )
    beta: float = Field(
        default=0.0, ge=0, description="KL(policy || base) coefficient; 0 = no reference forward (paper)"
    )
    benign_beta: float | None = Field(
        default=None,
        ge=0,
        description="KL coefficient for BENIGN training prompts only; null = beta. Holds the policy to the base "
        "model where it already answers, while adversarial prompts move freely",
    )
    std_floor: float = Field(
        default=1e-3, ge=0, description="groups with reward std below this get zero advantage"
    )
    include_benign: bool = Field(default=True, description="mix benign prompts into training")
    benign_weights: dict[str, float] | None = Field(
        default=None,
        description="aspect weights for BENIGN training prompts (unlisted aspects 0); null = the aspects' weights",
    )
    benign_fraction: float = Field(default=0.3, ge=0, le=1)
    checkpoint_every: int = Field(default=8, gt=0)
    engine: Literal["fast", "trl"] = Field(
        default="fast", description="safealign's CPU-fast loop or TRL's trainer"
    )
    lora: LoraSettings = LoraSettings()
    safety_constraint: SafetyConstraintSettings | None = Field(
        default=SafetyConstraintSettings(threshold=0.9, lr=1.0),
        description="Lagrangian safety constraint; null turns it off",
    )
    selection: SelectionSettings | None = Field(
        default=SelectionSettings(),
        description="keep the best step validated on prompts held out of training; null = keep the last step",
    )
    seed: int = 1234


class EvaluateSettings(_Section):
    """Base vs aligned evaluation on held-out adversarial prompts and the benign set."""

    max_new_tokens: int = Field(default=64, gt=0)
    num_adversarial: int = Field(default=100, gt=0)
    num_benign: int = Field(default=100, gt=0)
    batch_size: int = Field(default=64, gt=0, description="decode time per step barely grows with batch")
    bootstrap_samples: int = Field(default=1000, gt=0)
    num_examples: int = Field(default=10, ge=0, description="paired responses shown in the report")
    seed: int = 1234


class PromoteSettings(_Section):
    """Gates that decide whether the candidate becomes champion."""

    min_safety_gain: float = Field(default=0.05, description="relative safety gain required")
    max_aspect_drop: float = Field(default=0.02, ge=0)
    max_benign_refusal: float = Field(default=0.10, ge=0, le=1)
    min_refusal_gain: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="required change of the adversarial refusal rate (independent detector); 0 = must not fall",
    )
    policy_model_name: str = "safealign-policy"
    reward_model_name: str = "safealign-reward"


class TrackingSettings(_Section):
    """MLflow. MLFLOW_TRACKING_URI in the environment overrides tracking_uri."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "safealign"


class PipelineSettings(_Section):
    """Kubeflow Pipelines settings."""

    image: str = "safealign"
    image_tag: str = "0.1.0"
    host: str = "http://127.0.0.1:8888"
    experiment: str = "align"
    grpo_accelerator: str | None = Field(default=None, description="e.g. 'nvidia.com/gpu'; None = CPU")
    grpo_accelerator_count: int = Field(default=1, ge=1)
    cpu_request: str = "2"
    memory_request: str = "8G"


class Settings(_Section):
    """The whole params.yaml."""

    aspects: list[Aspect] = [
        Aspect(name="politeness", weight=0.15),
        Aspect(name="meaningfulness", weight=0.15),
        Aspect(name="actionability", weight=0.15),
        Aspect(name="safety", weight=0.55),
    ]
    paths: PathsSettings = PathsSettings()
    data: DataSettings = DataSettings()
    reward: RewardSettings = RewardSettings()
    calibrate: CalibrateSettings = CalibrateSettings()
    policy: PolicySettings = PolicySettings()
    grpo: GrpoSettings = GrpoSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    promote: PromoteSettings = PromoteSettings()
    tracking: TrackingSettings = TrackingSettings()
    pipeline: PipelineSettings = PipelineSettings()

    @field_validator("aspects")
    @classmethod
    def _aspects_unique(cls, value: list[Aspect]) -> list[Aspect]:
        names = [a.name for a in value]
        if not names:
            raise ValueError("at least one aspect is required")
        if len(set(names)) != len(names):
            raise ValueError(f"aspect names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _benign_weights_name_aspects(self) -> Settings:
        bw = self.grpo.benign_weights
        if bw is not None:
            unknown = sorted(set(bw) - set(self.aspect_names))
            if unknown:
                raise ValueError(
                    f"grpo.benign_weights names {unknown}, which are not aspects {self.aspect_names}"
                )
            if any(w < 0 for w in bw.values()) or sum(bw.values()) <= 0:
                raise ValueError(f"grpo.benign_weights must be >= 0 with a positive sum, got {bw}")
        return self

    @property
    def aspect_names(self) -> list[str]:
        return [a.name for a in self.aspects]

    @property
    def aspect_weights(self) -> list[float]:
        return [a.weight for a in self.aspects]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    # YAML parsing gives numbers, booleans, null and lists their natural types ("1e-4" stays a float).
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and value[0] in "0123456789.-+" else value
        except ValueError:
            pass
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a raw params dict (before validation, so types are checked)."""
    data = copy.deepcopy(raw)
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = node[part]
        node[path[-1]] = value
    return data


def load_settings(path: str | Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Load params.yaml (or ``path``), apply dotted overrides, validate. Raises ConfigError naming the key."""
    source = Path(path) if path is not None else DEFAULT_PARAMS
    raw: dict[str, Any] = {}
    if source.exists():
        try:
            loaded = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    elif path is not None:
        raise ConfigError(f"params file not found: {source}")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(source))) from exc


def settings_to_flat_dict(settings: Settings) -> dict[str, Any]:
    """Flatten for MLflow params: {'grpo.learning_rate': 1e-4, ...}."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", settings.model_dump(mode="json"))
    return flat
