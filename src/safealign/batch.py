"""Batch inference: ``safealign generate --model URI|PATH --input F.jsonl --output F.jsonl``.

Resumable by construction: each finished row is appended to the output as ONE complete line in one
``write`` on a file opened for appending, and fsynced per chunk, so a killed run leaves whole rows plus at
most one torn last line. A rerun drops that torn line, checks that the rows written so far belong to this
input (same ``id`` or ``prompt`` at the same position), and generates only the rest.

Input rows need ``prompt`` (a string) or ``messages`` (a chat: role/content objects); every other field
is copied to the output row, which gains ``reply``. The model is a registry URI (``models:/name@alias``),
an MLflow model folder (has ``MLmodel``), or a PEFT adapter folder applied to ``policy.model``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safealign.config import Settings
from safealign.errors import ConfigError, DataError
from safealign.jsonl import iter_jsonl

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


def _resume_point(output: Path, rows: list[dict[str, Any]]) -> int:
    """How many input rows the output already holds; drops a torn last line; refuses a foreign output."""
    if not output.exists():
        return 0
    data = output.read_bytes()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if keep < len(data):
        log.warning("%s: dropping a torn last line (%d bytes) left by a killed run", output, len(data) - keep)
        with open(output, "r+b") as handle:
            handle.truncate(keep)
    lines = [line for line in data[:keep].decode("utf-8").splitlines() if line.strip()]
    if len(lines) > len(rows):
        raise DataError(f"{output}: holds {len(lines)} rows but {len(rows)} inputs: not this input's output")
    for i, line in enumerate(lines):
        try:
            done = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{output}: row {i + 1}: not valid JSON ({exc.msg}); move the file away") from exc
        if _key(done) != _key(rows[i]):
            raise DataError(
                f"{output}: row {i + 1} does not match input row {i + 1} (id/prompt differ): "
                "not this input's "
                "output; move it away or choose another --output"
            )
    return len(lines)


def _chat(row: dict[str, Any], system_prompt: str | None) -> list[dict[str, str]]:
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    head = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*head, {"role": "user", "content": row["prompt"]}]


def load_generator(settings: Settings, model: str) -> Callable[[list[list[dict[str, str]]]], list[str]]:
    """A function chats -> replies for a registry URI, an MLflow model folder or an adapter folder."""
    import pandas as pd

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
    settings: Settings, model: str, input_path: str | Path, output_path: str | Path, chunk: int = 8
) -> dict[str, Any]:
    """Reply to every input row, appending to ``output_path``; resumes where a previous run stopped."""
    from tqdm import tqdm

    input_path, output = Path(input_path), Path(output_path)
    rows = _read_input(input_path)
    start = _resume_point(output, rows)
    summary = {
        "input": str(input_path),
        "output": str(output),
        "rows": len(rows),
        "skipped": start,
        "model": model,
    }
    if start == len(rows):
        summary["generated"] = 0
        return summary
    generate_fn = load_generator(settings, model)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with tqdm(total=len(rows), initial=start, desc="generate", unit="row") as bar:
            for begin in range(start, len(rows), chunk):
                batch = rows[begin : begin + chunk]
                replies = generate_fn([_chat(r, settings.policy.system_prompt) for r in batch])
                for row, reply in zip(batch, replies, strict=True):
                    line = json.dumps({**row, "reply": reply}, ensure_ascii=False) + "\n"
                    os.write(fd, line.encode("utf-8"))  # one write per row: whole rows or a torn last one
                os.fsync(fd)
                bar.update(len(batch))
    finally:
        os.close(fd)
    summary["generated"] = len(rows) - start
    return summary
