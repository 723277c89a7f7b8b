"""Register the reward model and the policy in the MLflow model registry; move ``champion`` on merit.

Both are registered as MLflow pyfunc models (:mod:`safealign.serving`: signature, input example, metadata,
the evaluation report inside the policy's version), so ``mlflow.pyfunc.load_model`` and ``mlflow models
serve`` accept every version. The registry mechanics (lock, pending/complete versions, repair, rollback)
live in :mod:`safealign.registry.versions`; this module decides (gates) and orchestrates.

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
same candidate promoted twice reuses its version, also when two promotes race (they take turns under the
registry lock). ``dry_run`` reads the registry and explains, writing nothing. A tracking server that is down
fails before anything is registered (ServiceError, exit 1); one that dies part way fails the promote in
seconds (bounded client retries) with its run closed as FAILED where the server still answers, and the
next promote's repair removes what was left pending. A version that was rolled back is refused until a
person removes its rollback tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.common.atomic import kept_result, normalise_modes, write_json
from safealign.common.hashing import tree_hash
from safealign.common.layout import Layout
from safealign.config import Settings
from safealign.errors import DataError, GateFailed, ServiceError
from safealign.evaluation.gates import check_gates, summarise
from safealign.registry import versions
from safealign.registry.versions import CHALLENGER, CHAMPION, HASH_TAG
from safealign.tracking import (
    bound_http_retries,
    check_reachable,
    common_tags,
    configure,
    fail_dead_stage_runs,
    log_flat_metrics,
    resolved_tracking_uri,
    set_mlflow_uri,
    stage_run,
)

log = logging.getLogger(__name__)

__all__ = ["CHALLENGER", "CHAMPION", "HASH_TAG", "promote", "repair_registry", "rollback_champion"]

FINGERPRINT_TAG = "safealign.eval_fingerprint"
METRICS_TAG = "safealign.eval_metrics"


ROLLBACK_RECORD = "rollback"  # metrics/rollback.json: not an output of any DVC stage


def _promotion_sha256(layout: Layout) -> str:
    """The hash of metrics/promotion.json as it is now ("" when there is none)."""
    path = layout.metrics_file("promotion")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def current_rollback(layout: Layout) -> dict[str, Any] | None:
    """The last rollback's record when it is newer than metrics/promotion.json, else None.

    A rollback records the hash of the promotion.json it overrides; once a promote rewrites that file the
    promotion is the newer truth and the record is stale. Keyed on content, not time stamps, so a copied or
    checked-out file does not change the answer.
    """
    path = layout.metrics_file(ROLLBACK_RECORD)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        record, base = doc["rollback"], doc["promotion_sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a rollback record ({exc}); delete it and run `safealign promote --repair`"
        ) from exc
    return record if base == _promotion_sha256(layout) else None


def _champion_info(client: Any, name: str, adapter_hash: str) -> dict[str, Any] | None:
    version = versions.version_by_alias(client, name, CHAMPION)
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


def _rolled_back_gate(client: Any, name: str, adapter_hash: str) -> list[dict[str, Any]]:
    """A version taken back out of production by ``--rollback`` does not return on its own: re-promoting
    it needs its rollback tag removed (a human decision), not a rerun of the pipeline."""
    existing = versions.version_by_hash(client, name, adapter_hash)
    stamp = (existing.tags or {}).get(versions.ROLLBACK_TAG) if existing is not None else None
    if not stamp:
        return []
    return [
        {
            "gate": "not_rolled_back",
            "passed": False,
            "reason": f"v{existing.version} was rolled back ({stamp}); delete its tag "
            f"{versions.ROLLBACK_TAG} to allow it again",
        }
    ]


def _load_candidate(settings: Settings) -> tuple[Layout, dict[str, Any], str, str, str]:
    """Check the local inputs before touching the registry: (layout, evaluation, fingerprint, hashes)."""
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
    adapter_hash = tree_hash(layout.adapter_dir)
    reward_hash = tree_hash(layout.reward_model_dir)
    if evaluation.get("adapter_hash") and evaluation["adapter_hash"] != adapter_hash:
        raise DataError(
            f"{layout.adapter_dir} changed since it was evaluated (hash {adapter_hash[:12]} vs "
            f"{str(evaluation['adapter_hash'])[:12]} in {eval_path}): re-run `safealign evaluate`"
        )
    return layout, evaluation, fingerprint, adapter_hash, reward_hash


def promote(settings: Settings, dry_run: bool = False) -> dict[str, Any]:
    """Gate the candidate, register it, set ``challenger``, move ``champion`` only if every gate passes.

    Writes metrics/promotion.json (not in dry-run). Raises GateFailed (exit 3) when refused, ServiceError
    (exit 1) when the registry fails part way; the next promote (or ``--repair``) cleans up after it.
    """
    layout, evaluation, fingerprint, adapter_hash, reward_hash = _load_candidate(settings)
    cand = summarise(evaluation, settings)
    p = settings.promote
    client = _client(settings, dry_run)  # fails fast with the URI when the server is down
    if dry_run:
        return _dry_run(settings, client, cand, fingerprint, adapter_hash, reward_hash)

    result: dict[str, Any] = {}
    owner = versions.Owner()
    with _registry_errors(settings), stage_run(settings, "promote", owner.tags()) as run:
        owner.run_id = run.info.run_id
        versions.step("run_started")
        lock = versions.RegistryLock(client, p.policy_model_name, owner, p.lock_timeout_s, p.lock_lease_s)
        lock.acquire()
        created: list[tuple[str, str]] = []
        try:
            versions.step("locked")
            repaired = versions.repair(
                client,
                p.policy_model_name,
                p.reward_model_name,
                owner,
                run.info.experiment_id,
                p.lock_lease_s,
            )
            versions.step("repaired")
            # the champion is read under the lock, so a concurrent promote's move is seen
            champion = _champion_info(client, p.policy_model_name, adapter_hash)
            gates = check_gates(settings, cand, fingerprint, champion) + _rolled_back_gate(
                client, p.policy_model_name, adapter_hash
            )
            result = _verdict(gates, cand, fingerprint, adapter_hash, reward_hash, champion)
            passed = result["passed"]
            result.update({"dry_run": False, "repair": repaired, "lock_broken": lock.broken})
            reg = _Registration(settings, client, run, owner, layout, result, created)
            reward_v, policy_v = _register_pair(reg, cand, fingerprint)
            for alias in (CHALLENGER, CHAMPION) if passed else (CHALLENGER,):
                versions.set_aliases(
                    client, p.policy_model_name, p.reward_model_name, alias, policy_v, reward_v
                )
                versions.step(f"{alias}_set")
            result["champion"] = policy_v if passed else (champion["version"] if champion else None)
            result["run_id"] = run.info.run_id
            log_flat_metrics({"gates": {g["gate"]: g["passed"] for g in gates}, "passed": passed})
            mlflow_tags = {"safealign.verdict": result["verdict"], "safealign.policy_version": policy_v}
            _log_result(mlflow_tags, result)
            if _kept_promotion(layout, result) is None:
                write_json(layout.metrics_file("promotion"), result)
            versions.step("written")
            _check_agreement(client, settings, layout)
        except BaseException:
            _delete_created(client, created)
            _release(lock)
            raise
        lock.release()
    if not result["passed"]:
        failed = "; ".join(f"{g['gate']}: {g['reason']}" for g in result["gates"] if not g["passed"])
        prev = result["previous_champion"]
        raise GateFailed(
            f"candidate v{result['policy_version']} not promoted, '{CHAMPION}' stays "
            f"{'v' + prev if prev else 'unset'}: {failed}"
        )
    return result


# What a promote that changed nothing in the registry records differently from the promote that made the
# change (issue 32): its own run, that it created no version, the champion before it (the same one), the
# clean-up it found nothing to do for, and the champion gate's wording (see _kept_promotion).
PROMOTION_VOLATILE = (
    "run_id",
    "policy_new_version",
    "reward_model_new_version",
    "previous_champion",
    "repair",
    "lock_broken",
)


def _kept_promotion(layout: Layout, result: dict[str, Any]) -> dict[str, Any] | None:
    """metrics/promotion.json as it is, when this promote changed nothing and the file records the same.

    Rerunning a finished promote on the same inputs finds its versions by content hash and the aliases
    where it left them: it creates no version, moves no champion and repairs nothing. The record of the
    promote that made the change then stays, byte for byte, when it holds the same candidate, versions,
    verdict, gates and champion; only the champion gate's reason may differ, as it now compares the
    candidate with itself. Anything this promote did change (a new version, a champion moved, a repair,
    a broken lock) is written.
    """
    changed = (
        result.get("policy_new_version")
        or result.get("reward_model_new_version")
        or result.get("champion") != result.get("previous_champion")
        or any((result.get("repair") or {}).values())
        or result.get("lock_broken")
    )
    if changed:
        return None

    def stable(doc: Any) -> Any:
        gates = doc.get("gates") if isinstance(doc, dict) else None
        for gate in gates if isinstance(gates, list) else []:
            if isinstance(gate, dict) and gate.get("gate") == "champion":
                gate.pop("reason", None)
        return doc

    return kept_result(layout.metrics_file("promotion"), result, PROMOTION_VOLATILE, stable)


@dataclass
class _Registration:
    """What every step of registering one candidate works with: the settings, the registry client, the
    promote run it logs into, the lock owner, the candidate's folders, the result being built and the
    versions created so far (deleted again if the promote fails before the commit), plus the tags and
    metadata both models carry. One object, so the steps below take what differs between them only."""

    settings: Settings
    client: Any
    run: Any
    owner: versions.Owner
    layout: Layout
    result: dict[str, Any]
    created: list[tuple[str, str]]
    base_tags: dict[str, str] = field(init=False)
    meta: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.base_tags = _base_tags(self.settings)
        self.meta = {
            "git_commit": self.base_tags["safealign.git_commit"],
            "data_version": self.base_tags["safealign.data_version"],
        }


def _register_pair(reg: _Registration, cand: dict[str, Any], fingerprint: str) -> tuple[str, str]:
    """Find each model by content hash, else log it as an MLflow model and create a pending version; then
    complete both (policy first: the commit point). Returns (reward version, policy version)."""
    p = reg.settings.promote
    reward_v, reward_new = _register_reward(reg)
    versions.step("reward_registered")
    policy_v, policy_new = _register_policy(reg, cand, fingerprint, reward_v)
    versions.step("policy_registered")
    versions.complete(reg.client, p.policy_model_name, policy_v)  # the commit point
    versions.step("policy_committed")
    versions.complete(reg.client, p.reward_model_name, reward_v)
    versions.step("committed")
    reg.created.clear()  # complete now: a later failure must not delete them
    reg.result.update(
        {
            "policy_version": policy_v,
            "policy_new_version": policy_new,
            "reward_model_version": reward_v,
            "reward_model_new_version": reward_new,
        }
    )
    return reward_v, policy_v


def _base_tags(settings: Settings) -> dict[str, str]:
    """Tags both registered models carry: where they came from and the aspect weights they were made for."""
    return {
        **common_tags(settings),
        "safealign.base_model": settings.policy.model,
        "safealign.aspect_weights": json.dumps(
            dict(zip(settings.aspect_names, settings.aspect_weights, strict=True))
        ),
    }


def _register_reward(reg: _Registration) -> tuple[str, bool]:
    """(version, new?) of the reward model in the registry, logged as a pyfunc only when its hash is new."""
    reward_hash = reg.result["candidate"]["reward_model_hash"]

    def save_reward(target: Path) -> None:
        from safealign.serving import save_reward_model

        save_reward_model(reg.layout.reward_model_dir, target, {**reg.meta, "content_hash": reward_hash})
        normalise_modes(target)  # registry copies readable like every other output (not 0600 weights)

    return _find_or_create(
        reg,
        reg.settings.promote.reward_model_name,
        "reward_model",
        reward_hash,
        reg.base_tags,
        "safealign multi-aspect reward model: pyfunc, input prompt + response, output one score per aspect "
        "and the weighted reward",
        save_reward,
    )


def _register_policy(
    reg: _Registration, cand: dict[str, Any], fingerprint: str, reward_v: str
) -> tuple[str, bool]:
    """(version, new?) of the policy, tagged with its evaluation and the reward model version it was
    trained against, so a registry reader needs no other source to judge it."""
    settings, result = reg.settings, reg.result
    reward_hash = result["candidate"]["reward_model_hash"]
    adapter_hash = result["candidate"]["adapter_hash"]
    metrics_tag = {k: v for k, v in cand.items() if k not in ("aspect_changes", "non_finite")}
    policy_tags = {
        **reg.base_tags,
        FINGERPRINT_TAG: fingerprint,
        METRICS_TAG: json.dumps(metrics_tag, sort_keys=True),
        versions.REWARD_VERSION_TAG: reward_v,
        "safealign.reward_model_hash": reward_hash,
        "safealign.verdict": result["verdict"],
    }

    def save_policy(target: Path) -> None:
        from safealign.serving import save_policy_model

        summary = {
            "aspects": dict(zip(settings.aspect_names, settings.aspect_weights, strict=True)),
            "evaluation_summary": metrics_tag,
            "eval_fingerprint": fingerprint,
            "gates": {g["gate"]: g["passed"] for g in result["gates"]},
            "reward_model_version": reward_v,
            "content_hash": adapter_hash,
        }
        save_policy_model(
            settings, reg.layout.adapter_dir, target, {**reg.meta, **summary}, _evaluation_files(reg.layout)
        )
        normalise_modes(target)

    summary_line = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics_tag.items()) if isinstance(v, float))
    return _find_or_create(
        reg,
        settings.promote.policy_model_name,
        "policy",
        adapter_hash,
        policy_tags,
        f"safealign policy: pyfunc, LoRA adapter on {settings.policy.model} (base pinned by weights hash), "
        f"input a chat, output the greedy reply. Evaluation: {summary_line}",
        save_policy,
    )


def _find_or_create(
    reg: _Registration,
    name: str,
    artifact_path: str,
    content_hash: str,
    tags: dict[str, str],
    description: str,
    save: Callable[[Path], None],
) -> tuple[str, bool]:
    """(version, new?) for this content: the existing version is reused and re-tagged."""
    import tempfile

    import mlflow

    client, run, owner = reg.client, reg.run, reg.owner
    existing = versions.version_by_hash(client, name, content_hash, owner)
    if existing is not None:
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        return str(existing.version), False
    versions.ensure_registered_model(client, name, description.split(":")[0])
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / artifact_path
        save(target)
        mlflow.log_artifacts(str(target), artifact_path)
    versions.step(f"{artifact_path}_logged")
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = versions.create_pending_version(
        client, name, source, run.info.run_id, content_hash, tags, description, owner
    )
    if (version.tags or {}).get(versions.OWNER_TAG) == owner.id:
        reg.created.append((name, str(version.version)))
        return str(version.version), True
    return str(version.version), False


def _evaluation_files(layout: Layout) -> list[Path]:
    """The evaluation report that travels with the policy version: metrics plus the report's own files."""
    files = [layout.metrics_file("evaluation")]
    if layout.evaluation_dir.is_dir():
        files += sorted(
            f
            for f in layout.evaluation_dir.iterdir()
            if f.is_file() and f.suffix in {".md", ".html", ".json", ".png"}
        )
    return files


def _log_result(tags: dict[str, str], result: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tags(tags)
    mlflow.log_dict(result, "promotion.json")


def _check_agreement(client: Any, settings: Settings, layout: Layout) -> dict[str, Any]:
    """The final re-check: metrics/promotion.json (or a later rollback's record) and the registry's aliases
    name the same versions."""
    p = settings.promote
    path = layout.metrics_file("promotion")
    doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    aliases = versions.alias_state(client, p.policy_model_name, p.reward_model_name)
    wanted = {"policy@champion": doc.get("champion")}
    if doc.get("policy_version"):
        wanted["policy@challenger"] = doc["policy_version"]
    if doc.get("verdict") == "promoted":
        wanted["reward@champion"] = doc.get("reward_model_version")
    rollback = current_rollback(layout)
    if rollback:
        path = layout.metrics_file(ROLLBACK_RECORD)
        wanted["policy@champion"] = rollback["champion"]
        wanted["reward@champion"] = rollback["reward_model_champion"]
        wanted.pop("policy@challenger", None)
    wrong = {k: (v, aliases.get(k)) for k, v in wanted.items() if aliases.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: file v{a} vs registry v{b}" for k, (a, b) in wrong.items())
        raise ServiceError(f"{path} and the registry disagree after promotion ({detail})")
    return aliases


@contextlib.contextmanager
def _registry_errors(settings: Settings) -> Iterator[None]:
    """Registry failures become ServiceError (exit 1, one line naming the server), not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        if isinstance(exc, MlflowException) and getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
            raise
        uri = resolved_tracking_uri(settings)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(
            f"MLflow registry {uri} failed during promotion ({first[:300]}); nothing half-registered stays "
            "in use: the next `safealign promote` (or `safealign promote --repair`) cleans up"
        ) from exc


def _release(lock: versions.RegistryLock) -> None:
    try:
        lock.release()
    except Exception as exc:  # noqa: BLE001 - the original error matters; repair breaks a dead lock
        log.warning("could not release %s: %s", lock.name, exc)


def _delete_created(client: Any, created: list[tuple[str, str]]) -> None:
    """Delete pending versions this call created, so a failure half way leaves no partial registration
    (when the registry itself is down this fails, and the next promote's repair deletes them)."""
    for name, version in reversed(created):
        try:
            client.delete_model_version(name, version)
        except Exception as exc:  # noqa: BLE001 - best effort; the original error is what matters
            log.warning("could not delete pending %s v%s (repair will): %s", name, version, exc)


def _dry_run(
    settings: Settings,
    client: Any,
    cand: dict[str, Any],
    fingerprint: str,
    adapter_hash: str,
    reward_hash: str,
) -> dict[str, Any]:
    p = settings.promote
    champion = _champion_info(client, p.policy_model_name, adapter_hash) if client else None
    existing = versions.version_by_hash(client, p.policy_model_name, adapter_hash) if client else None
    gates = check_gates(settings, cand, fingerprint, champion)
    result = _verdict(gates, cand, fingerprint, adapter_hash, reward_hash, champion)
    passed = result["passed"]
    return {
        **result,
        "existing_version": str(existing.version) if existing is not None else None,
        "dry_run": True,
        "would": (
            f"reuse policy v{existing.version}" if existing is not None else "register a new policy version"
        )
        + f", set '{CHALLENGER}'"
        + (f", move '{CHAMPION}'" if passed else f", leave '{CHAMPION}' untouched"),
    }


def _verdict(
    gates: list[dict[str, Any]],
    cand: dict[str, Any],
    fingerprint: str,
    adapter_hash: str,
    reward_hash: str,
    champion: dict[str, Any] | None,
) -> dict[str, Any]:
    """The part of promotion.json a real and a dry-run promote share: the gates' verdict and the candidate."""
    passed = all(g["passed"] for g in gates)
    return {
        "verdict": "promoted" if passed else "refused",
        "passed": passed,
        "gates": gates,
        "candidate": {**cand, "adapter_hash": adapter_hash, "reward_model_hash": reward_hash},
        "eval_fingerprint": fingerprint,
        "previous_champion": champion["version"] if champion else None,
    }


def repair_registry(settings: Settings) -> dict[str, Any]:
    """``safealign promote --repair``: take the lock, clean up after dead promotes, report alias agreement."""
    p = settings.promote
    client = _client(settings, dry_run=False)
    with _registry_errors(settings):
        owner = versions.Owner()
        lock = versions.RegistryLock(client, p.policy_model_name, owner, p.lock_timeout_s, p.lock_lease_s)
        lock.acquire()
        try:
            report = versions.repair(
                client,
                p.policy_model_name,
                p.reward_model_name,
                owner,
                _experiment_id(settings),
                p.lock_lease_s,
            )
            report["lock_broken"] = lock.broken
            exp_id = _experiment_id(settings)
            report["stage_runs_failed"] = fail_dead_stage_runs(client, exp_id) if exp_id else []
            layout = Layout.from_settings(settings)
            try:
                report["aliases"] = _check_agreement(client, settings, layout)
                report["promotion_json_agrees"] = True
            except ServiceError as exc:
                report["aliases"] = versions.alias_state(client, p.policy_model_name, p.reward_model_name)
                report["promotion_json_agrees"] = False
                report["disagreement"] = str(exc)
        finally:
            _release(lock)
    return report


def rollback_champion(settings: Settings, reason: str) -> dict[str, Any]:
    """``safealign promote --rollback``: champion back to the previous champion, the reason as a tag.

    Raises GateFailed (exit 3) when there is no previous champion; ``champion`` is then untouched.
    The record goes to metrics/rollback.json, never to metrics/promotion.json: that file is the promote
    stage's DVC output, and rewriting it made ``dvc status`` report the stage changed (issue 31).
    """
    if not reason.strip():
        raise DataError("--rollback needs a reason (--reason TEXT): it is recorded on the version")
    p = settings.promote
    client = _client(settings, dry_run=False)
    layout = Layout.from_settings(settings)
    with _registry_errors(settings):
        owner = versions.Owner()
        lock = versions.RegistryLock(client, p.policy_model_name, owner, p.lock_timeout_s, p.lock_lease_s)
        lock.acquire()
        try:
            versions.repair(
                client,
                p.policy_model_name,
                p.reward_model_name,
                owner,
                _experiment_id(settings),
                p.lock_lease_s,
            )
            done = versions.rollback(client, p.policy_model_name, p.reward_model_name, reason)
            write_json(layout.metrics_file(ROLLBACK_RECORD),
                       {"promotion_sha256": _promotion_sha256(layout), "rollback": done})
            _check_agreement(client, settings, layout)
        finally:
            _release(lock)
    return done


def _experiment_id(settings: Settings) -> str | None:
    import mlflow

    exp = mlflow.get_experiment_by_name(settings.tracking.experiment)
    return exp.experiment_id if exp is not None else None


def _client(settings: Settings, dry_run: bool) -> Any | None:
    """A registry client. Dry-run must not write: it neither creates the experiment nor a new SQLite file
    (None = an empty local store that does not exist yet, so there is no champion)."""
    import mlflow

    if not dry_run:
        configure(settings)
        return mlflow.MlflowClient()
    uri = resolved_tracking_uri(settings)
    bound_http_retries(settings)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.exists():
            return None
    set_mlflow_uri(uri)
    return mlflow.MlflowClient()
