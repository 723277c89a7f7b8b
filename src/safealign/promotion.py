"""Register the reward model and the policy adapter in the MLflow model registry; move ``champion`` on merit.

Why folders as run artifacts and ``create_model_version`` on their URI (not ``mlflow.transformers``): a PEFT
model logged through mlflow.transformers does not reload its base weights, and the adapter folder plus the
base model's reference (a version tag) is all a consumer needs: ``mlflow.artifacts.download_artifacts(
"models:/safealign-policy@champion")`` gives the folder, ``load_policy_with_adapter`` does the rest.

Gates (all must pass before ``champion`` moves; ``challenger`` is set on every new candidate):

1. safety: the LOWER end of the 95% bootstrap interval of the relative safety gain, aligned vs base, on
   held-out adversarial prompts >= ``promote.min_safety_gain``;
2. aspects: for every aspect on the adversarial and on the benign set, the LOWER end of the 95% interval of
   the change >= ``-promote.max_aspect_drop`` (non-inferiority: a fall larger than the margin is ruled out,
   not merely absent from the point estimate);
3. over-refusal: the UPPER end of the 95% interval of the aligned benign refusal rate
   <= ``promote.max_benign_refusal``;
4. champion: the candidate is at least as good as the current champion (weighted reward over both sets
   and adversarial safety) when both were evaluated on the same evaluation set (same fingerprint: prompts,
   decoding and reward model). A champion evaluated on a different set cannot be compared here; the gate
   then passes and its reason says so (re-evaluate the champion to compare).

Idempotent: versions are keyed on the content hash of the folder (tag ``safealign.content_hash``), so the
same candidate promoted twice reuses its version. ``dry_run`` reads the registry and explains, writing
nothing. A tracking server that is down fails before anything is registered (ServiceError, exit 1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from safealign.atomic import write_json
from safealign.config import Settings
from safealign.errors import DataError, GateFailed
from safealign.evaluation.gates import check_gates, summarise
from safealign.hashing import tree_hash
from safealign.layout import Layout
from safealign.tracking import (
    check_reachable,
    common_tags,
    configure,
    log_flat_metrics,
    resolved_tracking_uri,
    set_mlflow_uri,
    stage_run,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HASH_TAG = "safealign.content_hash"
FINGERPRINT_TAG = "safealign.eval_fingerprint"
METRICS_TAG = "safealign.eval_metrics"
def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _is_not_found(exc):
            return None
        raise


def _version_by_hash(client: Any, name: str, content_hash: str) -> Any | None:
    found = client.search_model_versions(f"name = '{name}' and tags.`{HASH_TAG}` = '{content_hash}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _champion_info(client: Any, name: str, adapter_hash: str) -> dict[str, Any] | None:
    version = _version_by_alias(client, name, CHAMPION)
    if version is None:
        return None
    tags = version.tags or {}
    metrics = None
    if tags.get(METRICS_TAG):
        try:
            metrics = json.loads(tags[METRICS_TAG])
        except json.JSONDecodeError:
            metrics = None
    return {
        "version": str(version.version),
        "fingerprint": tags.get(FINGERPRINT_TAG),
        "metrics": metrics,
        "is_candidate": tags.get(HASH_TAG) == adapter_hash,
    }


def _ensure_registered_model(client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_not_found(exc):
            raise
        client.create_registered_model(name, description=description)


def _register_folder(
    client: Any,
    run: Any,
    name: str,
    folder: Path,
    artifact_path: str,
    content_hash: str,
    tags: dict[str, str],
    description: str,
    created: list[tuple[str, str]],
) -> tuple[Any, bool]:
    """Reuse the version holding this content hash, or log the folder and create a version. (version, new?)"""
    import mlflow

    existing = _version_by_hash(client, name, content_hash)
    if existing is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        return existing, False
    _ensure_registered_model(client, name, description)
    mlflow.log_artifacts(str(folder), artifact_path)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(
        name, source, run_id=run.info.run_id, tags={**tags, HASH_TAG: content_hash}, description=description
    )
    created.append((name, str(version.version)))
    return version, True


def promote(settings: Settings, dry_run: bool = False) -> dict[str, Any]:
    """Gate the candidate, register it, set ``challenger``, move ``champion`` only if every gate passes.

    Writes metrics/promotion.json (not in dry-run). Raises GateFailed (exit 3) when refused.
    """
    import mlflow

    layout = Layout.from_settings(settings)
    eval_path = layout.metrics_file("evaluation")
    if not eval_path.exists():
        raise DataError(f"{eval_path} not found: run `safealign evaluate` first")
    try:
        evaluation = json.loads(eval_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{eval_path}: not valid JSON: {exc}") from exc
    for folder in (layout.adapter_dir, layout.reward_model_dir):
        if not folder.is_dir() or not any(folder.iterdir()):
            raise DataError(f"{folder} is missing or empty: nothing to register")
    fingerprint = str(evaluation.get("fingerprint") or "")
    if not fingerprint:
        raise DataError(f"{eval_path} has no 'fingerprint' (re-run `safealign evaluate`)")
    cand = summarise(evaluation, settings)
    adapter_hash = tree_hash(layout.adapter_dir)
    reward_hash = tree_hash(layout.reward_model_dir)
    if evaluation.get("adapter_hash") and evaluation["adapter_hash"] != adapter_hash:
        raise DataError(
            f"{layout.adapter_dir} changed since it was evaluated (hash {adapter_hash[:12]} vs "
            f"{str(evaluation['adapter_hash'])[:12]} in {eval_path}): re-run `safealign evaluate`"
        )

    p = settings.promote
    client = _client(settings, dry_run)  # fails fast with the URI when the server is down
    champion = _champion_info(client, p.policy_model_name, adapter_hash) if client else None
    existing = _version_by_hash(client, p.policy_model_name, adapter_hash) if client else None
    gates = check_gates(settings, cand, fingerprint, champion)
    passed = all(g["passed"] for g in gates)
    result: dict[str, Any] = {
        "verdict": "promoted" if passed else "refused",
        "passed": passed,
        "gates": gates,
        "candidate": {**cand, "adapter_hash": adapter_hash, "reward_model_hash": reward_hash},
        "eval_fingerprint": fingerprint,
        "previous_champion": champion["version"] if champion else None,
        "existing_version": str(existing.version) if existing is not None else None,
        "dry_run": dry_run,
    }
    if dry_run:
        result["would"] = (
            (f"reuse policy v{existing.version}" if existing is not None else "register a new policy version")
            + f", set '{CHALLENGER}'"
            + (f", move '{CHAMPION}'" if passed else f", leave '{CHAMPION}' untouched")
        )
        return result

    base_tags = {
        **common_tags(settings),
        "safealign.base_model": settings.policy.model,
        "safealign.aspect_weights": json.dumps(
            dict(zip(settings.aspect_names, settings.aspect_weights, strict=True))
        ),
    }
    created: list[tuple[str, str]] = []
    with stage_run(settings, "promote") as run:
        try:
            reward_v, reward_new = _register_folder(
                client,
                run,
                p.reward_model_name,
                layout.reward_model_dir,
                "reward_model",
                reward_hash,
                base_tags,
                "safealign multi-aspect reward model (RewardModel.from_pretrained folder)",
                created,
            )
            metrics_tag = {k: v for k, v in cand.items() if k != "aspect_changes"}
            policy_tags = {
                **base_tags,
                FINGERPRINT_TAG: fingerprint,
                METRICS_TAG: json.dumps(metrics_tag, sort_keys=True),
                "safealign.reward_model_version": str(reward_v.version),
                "safealign.reward_model_hash": reward_hash,
                "safealign.verdict": result["verdict"],
            }
            policy_v, policy_new = _register_folder(
                client,
                run,
                p.policy_model_name,
                layout.adapter_dir,
                "policy_adapter",
                adapter_hash,
                policy_tags,
                "safealign LoRA adapter; base model in tag safealign.base_model",
                created,
            )
            client.set_registered_model_alias(p.policy_model_name, CHALLENGER, policy_v.version)
            client.set_registered_model_alias(p.reward_model_name, CHALLENGER, reward_v.version)
            if passed:
                client.set_registered_model_alias(p.policy_model_name, CHAMPION, policy_v.version)
                client.set_registered_model_alias(p.reward_model_name, CHAMPION, reward_v.version)
        except Exception:
            _rollback(client, created)
            raise
        result.update(
            {
                "policy_version": str(policy_v.version),
                "policy_new_version": policy_new,
                "reward_model_version": str(reward_v.version),
                "reward_model_new_version": reward_new,
                "champion": str(policy_v.version) if passed else (champion["version"] if champion else None),
                "run_id": run.info.run_id,
            }
        )
        log_flat_metrics({"gates": {g["gate"]: g["passed"] for g in gates}, "passed": passed})
        mlflow.set_tags(
            {"safealign.verdict": result["verdict"], "safealign.policy_version": str(policy_v.version)}
        )
        mlflow.log_dict(result, "promotion.json")
    write_json(layout.metrics_file("promotion"), result)
    if not passed:
        failed = "; ".join(f"{g['gate']}: {g['reason']}" for g in gates if not g["passed"])
        raise GateFailed(
            f"candidate v{policy_v.version} not promoted, '{CHAMPION}' stays "
            f"{'v' + champion['version'] if champion else 'unset'}: {failed}"
        )
    return result


def _client(settings: Settings, dry_run: bool) -> Any | None:
    """A registry client. Dry-run must not write: it neither creates the experiment nor a new SQLite file
    (None = an empty local store that does not exist yet, so there is no champion)."""
    import mlflow

    if not dry_run:
        configure(settings)
        return mlflow.MlflowClient()
    uri = resolved_tracking_uri(settings)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.exists():
            return None
    set_mlflow_uri(uri)
    return mlflow.MlflowClient()


def _rollback(client: Any, created: list[tuple[str, str]]) -> None:
    """Delete versions this call created, so a failure half way leaves no partial registration."""
    for name, version in reversed(created):
        try:
            client.delete_model_version(name, version)
        except Exception as exc:  # noqa: BLE001 - best effort; the original error is what matters
            log.warning("could not roll back %s v%s: %s", name, version, exc)
