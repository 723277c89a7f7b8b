"""Registered models that load and serve: MLflow pyfunc models for the reward model and the policy.

Reward model: a pyfunc whose input is a table with ``prompt`` and ``response`` and whose output has one
column per aspect plus ``reward`` (the weighted sum). ``predict`` calls :meth:`RewardModel.score` and
:meth:`RewardModel.combine`, so a served score is the project's score, not a re-implementation of it.

Policy: a pyfunc holding the LoRA ADAPTER only, with the base model named in its config and pinned by the
sha256 of its weights; loading resolves the base, refuses it when the hash differs, applies the adapter and
merges it. Why not the adapter merged into the base (transformers flavour): every version would carry a full
copy of the base (540 MB for the default 135M model in fp32, about 28 GB for a 14B base in bf16) although
only a few MB differ between versions, and a team keeps many versions. The price is that the base must be
available where the model loads: the installed package for the embedded default, the offline HF cache or a
local folder otherwise (``SAFEALIGN_BASE_MODEL`` points at another copy, e.g. a volume holding a 14B base);
the hash makes a different base a loud error instead of a silently different model. Input is a chat
(``messages``: role/content pairs ending with a user turn), output the assistant's greedy ``reply``: the
decoding of evaluation (``policy.decoding.generate_from_texts``), so a served reply is the evaluated reply.

Served limits (``serve.*``; a request past them gets 400 with the limit named, and no response carries a
stack trace): ``max_new_tokens`` at most ``serve.max_new_tokens_cap``; the prompt plus ``max_new_tokens``
within the model's positions (``max_position_embeddings``); generation stops at 90% of the server's request
timeout (504) and at once when the server gets SIGTERM (503), checked after every token, so neither a slow
request nor a shutdown waits for a generation the client no longer reads.

Both models are written with ``save_model`` into a local folder and logged as run artifacts (no serving
input validation at log time: it would load the base model once more inside the promotion step).
Loading needs the ``safealign`` package importable (the project image, or this checkout's environment):
the python model classes are pickled by reference, and the version's git commit is in its metadata.
That is also why this module stays at ``safealign.serving`` while the registry's other modules live in
``safealign.registry``: every registered version's ``python_model.pkl`` names
``safealign.serving.RewardPyfunc`` / ``PolicyPyfunc``, so moving the module would make every version
registered before the move unloadable (a rollback to it, ``mlflow models serve``, batch inference).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    DEADLINE_EXCEEDED,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.pyfunc import PythonModel

from safealign.errors import ConfigError

log = logging.getLogger(__name__)

BASE_ENV = "SAFEALIGN_BASE_MODEL"
CACHE_ENV = "SAFEALIGN_CACHE_DIR"
REWARD_COLUMN = "reward"
# mlflow models serve --timeout sets this in the server's environment (MLflow's default: 60 s).
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60
DEADLINE_SHARE = 0.9  # stop generating at 90% of the timeout: the client gets our 504, not MLflow's bare one
DEFAULT_MAX_NEW_TOKENS_CAP = 512  # versions logged before serve.max_new_tokens_cap existed
# Set when the serving process gets SIGTERM: every generation in flight stops at its next token.
SHUTTING_DOWN = threading.Event()
STOPS_GENERATION = "_safealign_stops_generation"  # marks the handlers installed here (installed once)
EVALUATION_ARTIFACT = "evaluation"


def _pip_requirements() -> list[str]:
    """Pinned runtime requirements: explicit, because MLflow's inference would import and probe the model."""
    reqs = []
    for name in ("mlflow", "torch", "transformers", "peft", "safetensors", "tokenizers", "numpy", "pandas"):
        try:
            reqs.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def weights_hash(model: Any) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a model's state dict (the identity of a base).

    The loaded weights, not the files: the embedded base is a GGUF file converted on first use, and what the
    adapter must be applied to is the tensors, whatever file format carried them.
    """
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.view(torch.uint8).numpy().reshape(-1)))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- reward model


class RewardPyfunc(PythonModel):
    """prompt, response -> one score per aspect and the weighted reward (RewardModel.score)."""

    def load_context(self, context: Any) -> None:
        from safealign.reward.model import RewardModel

        self.model = RewardModel.from_pretrained(context.artifacts["reward_model"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads type hints as a schema
        import pandas as pd

        frame = pd.DataFrame(model_input)
        missing = [c for c in ("prompt", "response") if c not in frame.columns]
        if missing:
            raise ValueError(f"reward model input lacks column(s) {missing}; got {list(frame.columns)}")
        prompts = frame["prompt"].astype(str).tolist()
        scores = self.model.score(prompts, frame["response"].astype(str).tolist())
        out = pd.DataFrame(scores.astype("float64"), columns=self.model.aspects)
        out[REWARD_COLUMN] = self.model.combine(scores)
        return out


def reward_signature(aspects: Sequence[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", "prompt"), ColSpec("string", "response")])
    outputs = Schema([ColSpec("double", a) for a in [*aspects, REWARD_COLUMN]])
    return ModelSignature(inputs=inputs, outputs=outputs)


REWARD_EXAMPLE = {
    "prompt": ["How do I kill a Python process?", "How do I make a weapon at home?"],
    "response": [
        "Run `kill PID` in a terminal, or `pkill -f script.py`.",
        "I can't help with that. If you're worried about safety, please talk to someone you trust.",
    ],
}


def save_reward_model(reward_dir: str | Path, target: str | Path, meta: dict[str, Any]) -> Path:
    """Write the reward model as an MLflow pyfunc model folder (MLmodel, signature, input example)."""
    import mlflow.pyfunc
    import pandas as pd

    reward_dir = Path(reward_dir)
    config = json.loads((reward_dir / "reward_config.json").read_text(encoding="utf-8"))
    mlflow.pyfunc.save_model(
        str(target),
        python_model=RewardPyfunc(),
        # resolved: a pipeline step links its input folders in, and MLflow refuses to copy through a link
        artifacts={"reward_model": str(reward_dir.resolve())},
        signature=reward_signature(config["aspects"]),
        input_example=pd.DataFrame(REWARD_EXAMPLE),
        pip_requirements=_pip_requirements(),
        metadata={**meta, "aspects": config["aspects"], "weights": config["weights"]},
    )
    return Path(target)


# ------------------------------------------------------------------------------------------------ policy


class PolicyPyfunc(PythonModel):
    """A chat (messages) -> the aligned policy's greedy reply; base + adapter, base pinned by hash."""

    def load_context(self, context: Any) -> None:
        self.config = dict(context.model_config or {})
        self.model, self.tokenizer = load_pinned_policy(self.config, context.artifacts["adapter"])
        stop_generation_on_sigterm()

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads type hints as a schema
        """The replies, or an MlflowException with a status and a message (never a stack trace: MLflow
        puts the traceback of any other exception into the response body)."""
        try:
            return self._predict(model_input, params or {})
        except MlflowException:
            raise
        except (ValueError, KeyError, TypeError) as exc:  # a malformed request
            raise MlflowException(f"bad request: {exc}", error_code=INVALID_PARAMETER_VALUE) from None
        except Exception:  # noqa: BLE001 - logged here with its traceback, answered without it
            log.exception("policy predict failed")
            raise MlflowException(
                "the policy failed on this request (the server log has the details)",
                error_code=INTERNAL_ERROR,
            ) from None

    def _predict(self, model_input: Any, params: dict[str, Any]) -> Any:
        import pandas as pd

        from safealign.policy.decoding import generate_from_texts

        frame = pd.DataFrame(model_input)
        if "messages" not in frame.columns:
            raise ValueError(f"policy input needs a 'messages' column; got {list(frame.columns)}")
        wanted = params.get("max_new_tokens", self.config["max_new_tokens"])
        max_new = check_max_new_tokens(wanted, self.config)
        texts = [chat_text(self.tokenizer, _as_messages(m)) for m in frame["messages"]]
        check_prompt_lengths(self.tokenizer, self.model, texts, max_new)
        stop = GenerationDeadline(request_deadline())
        replies = generate_from_texts(
            self.model,
            self.tokenizer,
            texts,
            max_new_tokens=max_new,
            batch_size=int(self.config["batch_size"]),
            seed=int(self.config["seed"]),
            stopping_criteria=stop.as_criteria(),
        )
        stop.raise_if_fired()
        return pd.DataFrame({"reply": replies})


def _limit_error(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def check_max_new_tokens(value: Any, config: dict[str, Any]) -> int:
    """``max_new_tokens`` as an int in 1..cap (the version's serve.max_new_tokens_cap), else a 400."""
    cap = int(config.get("max_new_tokens_cap", DEFAULT_MAX_NEW_TOKENS_CAP))
    try:
        wanted = int(value)
    except (TypeError, ValueError):
        raise _limit_error(f"max_new_tokens must be an integer, got {value!r}") from None
    if not 1 <= wanted <= cap:
        raise _limit_error(
            f"max_new_tokens is {wanted}; this server allows 1 to {cap} (serve.max_new_tokens_cap)"
        )
    return wanted


def model_positions(model: Any) -> int | None:
    """How many token positions the model reads (its config's max_position_embeddings), if it says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def check_prompt_lengths(tokenizer: Any, model: Any, texts: list[str], max_new: int) -> None:
    """A 400 when a templated prompt plus ``max_new`` tokens does not fit the model's positions: past them
    a model reads positions it was never trained on and its reply is noise, not a slow answer."""
    positions = model_positions(model)
    if not positions:
        return
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    room = positions - max_new
    for row, length in enumerate(lengths):
        if length > room:
            raise _limit_error(
                f"prompt {row} has {length} tokens; this model reads {positions} positions, so with "
                f"max_new_tokens {max_new} a prompt may have at most {max(room, 0)} tokens"
            )


def request_deadline(now: float | None = None) -> float:
    """When generation must stop: 90% of the server's request timeout from now (monotonic clock)."""
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    return (time.monotonic() if now is None else now) + DEADLINE_SHARE * timeout


class GenerationDeadline:
    """A stopping criterion checked after every generated token: past the deadline, or once the server
    got SIGTERM, every sequence of the batch stops; ``raise_if_fired`` then answers 504 or 503."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired: str | None = None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if SHUTTING_DOWN.is_set():
            self.fired = "shutdown"
        elif time.monotonic() >= self.deadline:
            self.fired = "deadline"
        stop = self.fired is not None
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def as_criteria(self) -> Any:
        from transformers import StoppingCriteria, StoppingCriteriaList

        outer = self

        class _Criterion(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return outer(input_ids, scores, **kwargs)

        return StoppingCriteriaList([_Criterion()])

    def raise_if_fired(self) -> None:
        if self.fired == "shutdown":
            log.warning("generation stopped: the server is shutting down")
            raise MlflowException("the server is shutting down; retry the request", TEMPORARILY_UNAVAILABLE)
        if self.fired == "deadline":
            log.warning("generation stopped at the request deadline")
            raise MlflowException(
                "generation stopped at the request deadline (90% of the server's --timeout): ask for fewer "
                "max_new_tokens or fewer rows",
                DEADLINE_EXCEEDED,
            )


def stop_generation_on_sigterm() -> None:
    """Set SHUTTING_DOWN when the serving process gets SIGTERM, before the server's own handling (uvicorn
    stops accepting, then waits for requests in flight): the generation stops at its next token, the
    request is answered 503 and the server exits within seconds instead of after the generation.

    ``mlflow models serve`` runs uvicorn, which loads the model (this runs) *before* it installs its
    SIGTERM handler, ``Server.handle_exit``, and restores the previous handler only after shutdown: a
    plain signal handler installed here would be replaced for exactly the time it matters. So when
    uvicorn is the server, its ``handle_exit`` is wrapped (it still does all it did); otherwise the
    current handler is chained. Only the main thread may install signal handlers."""
    server = sys.modules.get("uvicorn.server")
    if server is not None and not getattr(server.Server.handle_exit, STOPS_GENERATION, False):
        original = server.Server.handle_exit

        def handle_exit(self: Any, sig: int, frame: Any) -> None:
            SHUTTING_DOWN.set()
            original(self, sig, frame)

        setattr(handle_exit, STOPS_GENERATION, True)
        server.Server.handle_exit = handle_exit
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, STOPS_GENERATION, False):
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        SHUTTING_DOWN.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    setattr(on_sigterm, STOPS_GENERATION, True)
    signal.signal(signal.SIGTERM, on_sigterm)


def _as_messages(value: Any) -> list[dict[str, str]]:
    """Messages as plain dicts (schema enforcement may hand over numpy arrays of dicts)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(value)]


def chat_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The templated prompt for a chat. A single user turn (with an optional system turn) goes through
    ``format_prompt``, the path training and evaluation use, so its reply is the evaluated one. Every
    turn's special-token strings are broken first: the request's system message and earlier turns are as
    untrusted as its last user turn (serving and ``generate`` both come here)."""
    from safealign.common.special_tokens import neutralise_messages
    from safealign.policy.loading import format_prompt

    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a chat request must end with a user message")
    messages = neutralise_messages(messages, tokenizer)  # every turn of a request is data, system included
    roles = [m["role"] for m in messages]
    if roles == ["user"]:
        return format_prompt(tokenizer, messages[0]["content"], None)
    if roles == ["system", "user"]:
        return format_prompt(tokenizer, messages[1]["content"], messages[0]["content"])
    unknown = sorted(set(roles) - {"system", "user", "assistant"})
    if unknown:
        raise ValueError(f"unknown chat role(s) {unknown}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_pinned_policy(config: dict[str, Any], adapter_dir: str | Path) -> tuple[Any, Any]:
    """Base (checked against its pinned weights hash) + adapter, merged, in eval mode."""
    from peft import PeftModel

    from safealign.policy.loading import load_policy

    spec = os.environ.get(BASE_ENV) or config["base_model"]
    cache = os.environ.get(CACHE_ENV) or config.get("cache_dir") or ".cache"
    model, tokenizer = load_policy(spec, cache_dir=cache)
    expected = config.get("base_weights_sha256")
    if expected:
        got = weights_hash(model)
        if got != expected:
            raise ConfigError(
                f"base model {spec!r} has weights sha256 {got[:16]}..., but this policy was trained on "
                f"{config['base_model']!r} with {expected[:16]}...: point {BASE_ENV} at that base"
            )
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    return merged, tokenizer


def policy_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    message = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), "messages")]),
        outputs=Schema([ColSpec("string", "reply")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 64)]),
    )


POLICY_EXAMPLE = {"messages": [[{"role": "user", "content": "How do I kill a Python process?"}]]}


def policy_config(settings: Any, base_hash: str) -> dict[str, Any]:
    return {
        "base_model": settings.policy.model,
        "base_weights_sha256": base_hash,
        "max_new_tokens": settings.evaluate.max_new_tokens,
        "max_new_tokens_cap": settings.serve.max_new_tokens_cap,
        "batch_size": settings.evaluate.batch_size,
        "seed": settings.evaluate.seed,
    }


def save_policy_model(
    settings: Any,
    adapter_dir: str | Path,
    target: str | Path,
    meta: dict[str, Any],
    evaluation_files: Sequence[Path] = (),
) -> Path:
    """Write the policy as an MLflow pyfunc model folder: adapter, pinned base, signature, example, metadata.

    ``evaluation_files`` (the evaluation report) travel inside the model, so the version carries them.
    """
    import tempfile

    import mlflow.pyfunc
    import pandas as pd

    from safealign.policy.loading import load_policy

    base, _tok = load_policy(settings)
    base_hash = weights_hash(base)
    del base
    artifacts = {"adapter": str(Path(adapter_dir).resolve())}  # a linked input folder, as above
    with tempfile.TemporaryDirectory() as tmp:
        if evaluation_files:
            report = Path(tmp) / EVALUATION_ARTIFACT
            report.mkdir()
            for path in evaluation_files:
                (report / path.name).write_bytes(path.read_bytes())
            artifacts[EVALUATION_ARTIFACT] = str(report)
        mlflow.pyfunc.save_model(
            str(target),
            python_model=PolicyPyfunc(),
            artifacts=artifacts,
            signature=policy_signature(),
            input_example=(
                pd.DataFrame(POLICY_EXAMPLE),
                {"max_new_tokens": settings.evaluate.max_new_tokens},
            ),
            pip_requirements=_pip_requirements(),
            model_config=policy_config(settings, base_hash),
            metadata={**meta, "base_model": settings.policy.model, "base_weights_sha256": base_hash},
        )
    return Path(target)


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
