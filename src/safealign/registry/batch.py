"""Batch inference: ``safealign generate --model URI|PATH --input F.jsonl --output F.jsonl``.

Resumable by construction: each finished row is appended to ``.F.jsonl.partial`` (next to the output) as
ONE complete line in one ``write`` on a file opened for appending, and fsynced per chunk, so a killed run
leaves whole rows plus at most one torn last line. A rerun checks that the rows written so far belong to
this input (same ``id`` or ``prompt`` at the same position), only then drops that torn line, and generates
only the rest. When every row is written the partial file is renamed to the output.

``--output`` is never written in place: it is either absent or complete, and an existing file that is not
this input's finished output (another input's replies, an unrelated file, the input itself) is refused with
exit 2 and left byte for byte as it was. A rerun over a finished output changes nothing.

Input rows need ``prompt`` (a string) or ``messages`` (a chat: role/content objects); every other field
is copied to the output row, which gains ``reply``. The model is a registry URI (``models:/name@alias``),
an MLflow model folder (has ``MLmodel``), or a PEFT adapter folder applied to ``policy.model``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safealign.common.atomic import rename_no_replace
from safealign.common.jsonl import iter_jsonl
from safealign.config import Settings
from safealign.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _read_input(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    rows = []
    for lineno, row in iter_jsonl(path):
        if "messages" in row:
            msgs = row["messages"]
            if (
                not isinstance(msgs, list)
                or not msgs
                or not all(
                    isinstance(m, dict)
                    and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in msgs
                )
            ):
                raise DataError(
                    f"{path}: row {lineno}: field 'messages' must be a list of {{role, content}} strings"
                )
            if msgs[-1]["role"] != "user":
                raise DataError(f"{path}: row {lineno}: field 'messages' must end with a user message")
        elif not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f"{path}: row {lineno}: field 'prompt' must be a non-empty string")
        if "reply" in row:
            raise DataError(f"{path}: row {lineno}: field 'reply' is the output's; rename it in the input")
        rows.append(row)
    return rows


def _key(row: dict[str, Any]) -> Any:
    return row["id"] if "id" in row else (row.get("prompt"), row.get("messages"))


def partial_path(output: Path) -> Path:
    """Where a run keeps its rows until the last one is written: ``.NAME.partial`` next to ``--output``.

    Only ``generate`` creates this name, so it is the one file a rerun may append to or cut a torn line
    from; ``--output`` itself appears only complete, by one rename, and is never rewritten.
    """
    return output.with_name(f".{output.name}.partial")


def _matching_rows(path: Path, rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(whole rows ``path`` holds, bytes they end at), after checking each is this input's row in order.

    Reads only: a file that is not this input's output is refused (DataError) before anything changes.
    """
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # anything after the last newline is a torn write
    try:
        text = data[:keep].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a JSONL file (not UTF-8 text: {exc.reason})") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > len(rows):
        raise DataError(f"{path}: holds {len(lines)} rows but {len(rows)} inputs: not this input's output")
    for i, line in enumerate(lines):
        try:
            done = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: row {i + 1}: not valid JSON; not this input's output") from exc
        if not isinstance(done, dict) or _key(done) != _key(rows[i]):
            raise DataError(
                f"{path}: row {i + 1} does not match input row {i + 1} (id/prompt differ): not this input's "
                "output"
            )
    return len(lines), keep


def _check_output(output: Path, input_path: Path, rows: list[dict[str, Any]]) -> bool:
    """True when ``output`` is already this input's finished output; refuses any other existing file.

    The output is only ever read here. A file that is not this input's complete output (another input's
    replies, a half-written file of an older version, an unrelated file) is left byte for byte as it was.
    """
    if output.resolve() == input_path.resolve() or (output.exists() and os.path.samefile(output, input_path)):
        raise DataError(f"--output {output} is the input file; choose another --output")
    if not output.exists():
        return False
    if not output.is_file():
        raise DataError(f"--output {output}: exists and is not a file; choose another --output")
    if output.stat().st_size == 0:  # holds nothing to lose (a pipeline runner may create it up front)
        return False
    try:
        done, keep = _matching_rows(output, rows)
    except DataError as exc:
        raise DataError(
            f"--output {output} exists and is not this input's finished output ({exc}); generate never "
            "replaces a file it did not write: move it away or choose another --output"
        ) from exc
    if done == len(rows) and keep == output.stat().st_size:
        return True
    raise DataError(
        f"--output {output} exists and holds {done} of {len(rows)} rows: generate never replaces a file it "
        f"did not write; to resume it, rename it to {partial_path(output)}, or choose another --output"
    )


def _resume_point(partial: Path, rows: list[dict[str, Any]]) -> int:
    """How many input rows the partial file holds; cuts a torn last line only after every row checked."""
    if not partial.exists():
        return 0
    try:
        done, keep = _matching_rows(partial, rows)
    except DataError as exc:
        raise DataError(f"{exc}; delete {partial} or choose another --output") from exc
    size = partial.stat().st_size
    if keep < size:
        log.warning("%s: dropping a torn last line (%d bytes) left by a killed run", partial, size - keep)
        with open(partial, "r+b") as handle:
            handle.truncate(keep)
    return done


def _chat(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    head = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*head, {"role": "user", "content": row["prompt"]}]


# models:/NAME@ALIAS or models:/NAME/VERSION; runs:/RUN_ID/PATH. Registered-model names are MLflow's (letters,
# digits, '_', '-', '.', spaces); no path segment may be '..' or empty.
_MODELS_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\- ]*)(?:@[A-Za-z0-9_\-]+|/[0-9]+)$")
_RUNS_URI = re.compile(r"^runs:/[0-9a-f]{32}(?:/[A-Za-z0-9_.\-]+)+$")


def check_registry_uri(uri: str) -> str:
    """Refuse (ConfigError, exit 2) a registry URI that is not plainly ``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``, or that climbs with ``..``.

    MLflow resolves such URIs into artifact paths and store queries; a ``..`` segment ended in a raw
    traceback at b7ba37c, and nothing legitimate needs one.
    """
    segments = uri.split(":/", 1)[-1].split("/")
    if any(seg in ("..", ".") for seg in segments) or not (_MODELS_URI.match(uri) or _RUNS_URI.match(uri)):
        raise ConfigError(
            f"--model {uri[:200]!r}: not a registry URI of the form models:/NAME@ALIAS, models:/NAME/VERSION "
            "or runs:/RUN_ID/PATH (no '..' or empty segments)"
        )
    return uri


def local_model_folder(model: str, allow_pickle: bool) -> str:
    """What to load for a local ``--model`` folder without running code it carries.

    An MLflow pyfunc folder loads by unpickling ``python_model.pkl``, and unpickling runs whatever code the
    pickle names: a folder from anywhere is a program. A policy folder this project wrote (it holds
    ``artifacts/adapter/adapter_config.json``) is loaded from that adapter, never from its pickle; any
    other MLflow folder is refused unless ``allow_pickle`` (``--allow-pickle``) says its author is trusted.
    Registry URIs (``models:/``, ``runs:/``) load through MLflow: the team's registry is trusted.
    """
    folder = Path(model)
    if not (folder / "MLmodel").is_file():
        return model
    adapter = folder / "artifacts" / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return str(adapter)
    if not allow_pickle:
        raise ConfigError(
            f"--model {model}: an MLflow model folder that safealign did not write; loading it unpickles "
            "python_model.pkl, which runs code: pass --allow-pickle only if you trust its author"
        )
    return model


def load_generator(
    settings: Settings, model: str, allow_pickle: bool = False
) -> Callable[[list[list[dict[str, str]]]], list[str]]:
    """A function chats -> replies for a registry URI, an MLflow model folder or an adapter folder."""
    import pandas as pd

    if model.startswith(("models:/", "runs:/")):
        check_registry_uri(model)
    else:
        model = local_model_folder(model, allow_pickle)
    if model.startswith(("models:/", "runs:/")) or (Path(model) / "MLmodel").is_file():
        import mlflow.pyfunc

        if not Path(model).exists():
            from safealign.tracking import (
                bound_http_retries,
                check_reachable,
                resolved_tracking_uri,
                set_mlflow_uri,
            )

            uri = resolved_tracking_uri(settings)
            bound_http_retries(settings)
            check_reachable(uri)
            set_mlflow_uri(uri)
        try:
            pyfunc = mlflow.pyfunc.load_model(model)
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model or alias
            from mlflow.exceptions import MlflowException

            if isinstance(exc, MlflowException) and "RESOURCE_DOES_NOT_EXIST" in str(
                getattr(exc, "error_code", "")
            ):
                raise ConfigError(f"--model {model}: not in the registry ({exc})") from exc
            raise
        return lambda chats: [str(r) for r in pyfunc.predict(pd.DataFrame({"messages": chats}))["reply"]]
    folder = Path(model)
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(
            f"--model {model}: not a registry URI, an MLflow model folder or a PEFT adapter folder"
        )
    from safealign.policy.decoding import generate_from_texts
    from safealign.policy.loading import load_policy_with_adapter
    from safealign.serving import chat_text

    policy, tokenizer = load_policy_with_adapter(settings, folder)
    e = settings.evaluate

    def run(chats: list[list[dict[str, str]]]) -> list[str]:
        texts = [chat_text(tokenizer, c) for c in chats]
        return generate_from_texts(
            policy, tokenizer, texts, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=e.seed
        )

    return run


def generate(
    settings: Settings,
    model: str,
    input_path: str | Path,
    output_path: str | Path,
    chunk: int = 8,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Reply to every input row; resumes where a previous run stopped.

    Rows are appended to :func:`partial_path` and the finished file is renamed onto ``output_path`` (never
    over an existing file), so ``--output`` is either absent or complete, and a file this command did not
    write is never changed: see :func:`_check_output`.
    """
    input_path, output = Path(input_path), Path(output_path)
    rows = _read_input(input_path)
    summary = {"input": str(input_path), "output": str(output), "rows": len(rows), "model": model}
    if _check_output(output, input_path, rows):
        return {**summary, "skipped": len(rows), "generated": 0}
    partial = partial_path(output)
    start = _resume_point(partial, rows)
    summary["skipped"] = start
    generate_fn = load_generator(settings, model, allow_pickle) if start < len(rows) else None
    output.parent.mkdir(parents=True, exist_ok=True)
    # 0666 less the umask (what `open` gives), like every other output: see safealign.common.atomic
    fd = os.open(partial, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        if generate_fn is not None:
            _append_replies(fd, generate_fn, rows, start, chunk, settings.policy.system_prompt)
        os.fsync(fd)
    finally:
        os.close(fd)
    if output.exists() and output.stat().st_size == 0:
        os.replace(partial, output)
    else:
        rename_no_replace(partial, output)
    summary["generated"] = len(rows) - start
    return summary


def _append_replies(
    fd: int,
    generate_fn: Callable[[list[list[dict[str, str]]]], list[str]],
    rows: list[dict[str, Any]],
    start: int,
    chunk: int,
    system_prompt: str | None,
) -> None:
    """Generate rows ``start:`` chunk by chunk; each row is one ``write`` so a kill tears at most one line."""
    from tqdm import tqdm

    with tqdm(total=len(rows), initial=start, desc="generate", unit="row") as bar:
        for begin in range(start, len(rows), chunk):
            batch = rows[begin : begin + chunk]
            replies = generate_fn([_chat(r, system_prompt) for r in batch])
            for row, reply in zip(batch, replies, strict=True):
                line = json.dumps({**row, "reply": reply}, ensure_ascii=False) + "\n"
                os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
            bar.update(len(batch))
