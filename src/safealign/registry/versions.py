"""Registry mechanics for promotion: a registry-side lock, pending/complete versions, repair, rollback.

MLflow's registry has no transactions, and promotion is several writes (two versions, up to four aliases).
What makes it safe against a dying server, a killed process and concurrent promotes:

- **Lock**: a registered model named ``<policy>.promote-lock``. Creating a registered model whose name
  exists fails atomically in every backend store (the name is the primary key), so ``create`` is a
  compare-and-set; deleting it releases. The lock's tags name its owner (host, pid, a token, the run), so an
  abandoned lock is recognised: the owner's process is gone (same host), or the lock is older than
  ``promote.lock_lease_s`` (another host, which cannot be checked). Everything from "find the version with
  this content hash, else create it" to the final alias check runs under the lock.
- **Pending, then complete**: a new version is created with tag ``safealign.state=pending`` and becomes
  ``complete`` only when both models of the candidate are registered; the policy version's tag is the
  commit point (its reward version is completed right after). Aliases move only after the commit, the
  policy's alias first, then the reward model's.
- **Repair** (under the lock, at the start of every promote and by ``safealign promote --repair``): a
  pending version nobody holds the lock for is an orphan of a promote that died. A pending policy version is
  deleted; a pending reward version is completed when a complete policy version names it, else deleted;
  the runs of such promotes are closed as FAILED; a reward alias that does not match its policy alias
  (death between the two alias writes) is moved to match.
- **Rollback**: each version that becomes champion records the champion before it
  (tag ``safealign.previous_champion``); ``promote --rollback`` moves both aliases back along that chain.

Versions registered before these tags existed carry no state tag and count as complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safealign.errors import GateFailed, ServiceError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHALLENGER, CHAMPION)
HASH_TAG = "safealign.content_hash"
STATE_TAG = "safealign.state"
OWNER_TAG = "safealign.owner"
REWARD_VERSION_TAG = "safealign.reward_model_version"
PREVIOUS_TAG = "safealign.previous_champion"
ROLLBACK_TAG = "safealign.rolled_back"
PENDING, COMPLETE = "pending", "complete"
LOCK_SUFFIX = ".promote-lock"

# Tokens of the promotes running in THIS process: a lock or pending version tagged with this process's pid
# but a token not in this set was left by an earlier promote that failed here (its server died).
_ACTIVE: set[str] = set()

# Fault-injection points: callables run with the name of each registration step as it is reached (tests
# kill the tracking server from here to check that every step is recoverable).
STEP_HOOKS: list[Callable[[str], None]] = []


def step(name: str) -> None:
    for hook in list(STEP_HOOKS):
        hook(name)


def is_not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def is_already_exists(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}


@dataclass
class Owner:
    """Who holds the lock and owns the pending versions of one promote call."""

    run_id: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    since: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    def tags(self) -> dict[str, str]:
        return {
            OWNER_TAG: self.id,
            "safealign.owner_since": f"{self.since:.3f}",
            "safealign.owner_run": self.run_id,
        }


def owner_is_alive(owner_id: str, since: float, lease_s: float) -> bool:
    """False when the owner is certainly gone: its process (this host) died, or its lease ran out."""
    try:
        host, pid_s, token = owner_id.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if time.time() - since > lease_s:
        return False
    if host != socket.gethostname():
        return True  # another machine: only the lease can tell
    if pid == os.getpid():
        return token in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _since(tags: dict[str, str]) -> float:
    try:
        return float(tags.get("safealign.owner_since", "0"))
    except ValueError:
        return 0.0


def _fail_run(client: Any, run_id: str | None) -> None:
    """Close a dead promote's run as FAILED (it stays RUNNING when the process was killed)."""
    if not run_id:
        return
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
    except Exception as exc:  # noqa: BLE001 - a deleted run is not worth failing the repair for
        log.warning("could not close run %s as FAILED: %s", run_id, exc)


class RegistryLock:
    """Mutual exclusion between promotes through an atomic ``create_registered_model``."""

    def __init__(self, client: Any, model_name: str, owner: Owner, timeout_s: float, lease_s: float) -> None:
        self.client = client
        self.name = model_name + LOCK_SUFFIX
        self.owner = owner
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.broken: list[str] = []

    def _holder(self) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(self.name).tags or {})
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise

    def acquire(self) -> None:
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.client.create_registered_model(
                    self.name,
                    tags=self.owner.tags(),
                    description="held by a running `safealign promote`; removed when it ends "
                    "(`safealign promote --repair` removes an abandoned one)",
                )
                _ACTIVE.add(self.owner.token)
                return
            except MlflowException as exc:
                if not is_already_exists(exc):
                    raise
            holder = self._holder()
            if holder is not None and not owner_is_alive(
                holder.get(OWNER_TAG, ""), _since(holder), self.lease_s
            ):
                self._break(holder)
                continue
            if time.monotonic() > deadline:
                who = (holder or {}).get(OWNER_TAG, "unknown")
                raise ServiceError(
                    f"registry lock {self.name!r} is held by another promote ({who}); "
                    f"waited {self.timeout_s:.0f} s"
                )
            time.sleep(0.3 + random.random() * 0.4)  # noqa: S311 - jitter, not security

    def _break(self, holder: dict[str, str]) -> None:
        """Remove an abandoned lock, re-reading it first so a lock taken meanwhile is left alone."""
        from mlflow.exceptions import MlflowException

        again = self._holder()
        if again is None or again.get(OWNER_TAG) != holder.get(OWNER_TAG):
            return
        log.warning("breaking abandoned registry lock %s of %s", self.name, holder.get(OWNER_TAG))
        try:
            self.client.delete_registered_model(self.name)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
        self.broken.append(holder.get(OWNER_TAG, ""))
        _fail_run(self.client, holder.get("safealign.owner_run"))

    def release(self) -> None:
        _ACTIVE.discard(self.owner.token)
        holder = self._holder()
        if holder is not None and holder.get(OWNER_TAG) == self.owner.id:
            self.client.delete_registered_model(self.name)


# --------------------------------------------------------------------------------------------- versions


def versions(client: Any, name: str, extra: str = "") -> list[Any]:
    query = f"name = '{name}'" + (f" and {extra}" if extra else "")
    return list(client.search_model_versions(query))


def state(version: Any) -> str:
    return (version.tags or {}).get(STATE_TAG, COMPLETE)


def version_by_hash(client: Any, name: str, content_hash: str, owner: Owner | None = None) -> Any | None:
    """The oldest usable version holding this content: complete, or pending and ours."""
    found = [
        v
        for v in versions(client, name, f"tags.`{HASH_TAG}` = '{content_hash}'")
        if state(v) == COMPLETE or (owner is not None and (v.tags or {}).get(OWNER_TAG) == owner.id)
    ]
    return min(found, key=lambda v: int(v.version)) if found else None


def version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc) or getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE":
            return None
        raise


def ensure_registered_model(client: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as exc2:
            if not is_already_exists(exc2):
                raise


def create_pending_version(
    client: Any,
    name: str,
    source: str,
    run_id: str,
    content_hash: str,
    tags: dict[str, str],
    description: str,
    owner: Owner,
) -> Any:
    """Create a version tagged pending and owned by ``owner``; if an older usable version with the same
    content exists after the create (a lock broken by mistake), delete ours and use that one."""
    version = client.create_model_version(
        name,
        source,
        run_id=run_id,
        tags={**tags, HASH_TAG: content_hash, STATE_TAG: PENDING, **owner.tags()},
        description=description,
    )
    winner = version_by_hash(client, name, content_hash, owner)
    if winner is not None and str(winner.version) != str(version.version):
        log.warning(
            "%s v%s duplicates v%s (same content): deleting it", name, version.version, winner.version
        )
        client.delete_model_version(name, version.version)
        return winner
    return version


def complete(client: Any, name: str, version: str) -> None:
    client.set_model_version_tag(name, version, STATE_TAG, COMPLETE)


# ----------------------------------------------------------------------------------------------- repair


def repair(
    client: Any,
    policy_name: str,
    reward_name: str,
    owner: Owner,
    experiment_id: str | None = None,
    lease_s: float = 1800.0,
) -> dict[str, Any]:
    """Clean up after promotes that died (call with the lock held). Returns what was done."""
    report: dict[str, Any] = {"deleted": [], "completed": [], "aliases_fixed": [], "runs_failed": []}
    if experiment_id is not None:
        running = client.search_runs(
            [experiment_id],
            filter_string="tags.`safealign.stage` = 'promote' and attributes.status = 'RUNNING'",
        )
        for run in running:
            tags = run.data.tags
            if (
                tags.get(OWNER_TAG)
                and tags[OWNER_TAG] != owner.id
                and not owner_is_alive(tags[OWNER_TAG], _since(tags), lease_s)
            ):
                client.set_terminated(run.info.run_id, status="FAILED")
                report["runs_failed"].append(run.info.run_id)
    pending = f"tags.`{STATE_TAG}` = '{PENDING}'"
    dead_runs: set[str] = set()
    for v in versions(client, policy_name, pending) if _exists(client, policy_name) else []:
        if (v.tags or {}).get(OWNER_TAG) == owner.id:
            continue
        client.delete_model_version(policy_name, v.version)
        report["deleted"].append(f"{policy_name} v{v.version}")
        dead_runs.add(v.run_id or "")
    for v in versions(client, reward_name, pending) if _exists(client, reward_name) else []:
        if (v.tags or {}).get(OWNER_TAG) == owner.id:
            continue
        users = (
            [
                p
                for p in versions(client, policy_name, f"tags.`{REWARD_VERSION_TAG}` = '{v.version}'")
                if state(p) == COMPLETE
            ]
            if _exists(client, policy_name)
            else []
        )
        if users:
            complete(client, reward_name, v.version)
            report["completed"].append(f"{reward_name} v{v.version}")
        else:
            client.delete_model_version(reward_name, v.version)
            report["deleted"].append(f"{reward_name} v{v.version}")
        dead_runs.add(v.run_id or "")
    for run_id in sorted(r for r in dead_runs if r and r not in report["runs_failed"]):
        _fail_run(client, run_id)
        report["runs_failed"].append(run_id)
    for alias in ALIASES:
        fixed = _match_reward_alias(client, policy_name, reward_name, alias)
        if fixed:
            report["aliases_fixed"].append(fixed)
    return report


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException as exc:
        if is_not_found(exc):
            return False
        raise


def _match_reward_alias(client: Any, policy_name: str, reward_name: str, alias: str) -> str | None:
    """Point the reward model's alias at the version the policy's alias names (policy moves first)."""
    if not _exists(client, policy_name) or not _exists(client, reward_name):
        return None
    policy_v = version_by_alias(client, policy_name, alias)
    if policy_v is None:
        return None
    wanted = (policy_v.tags or {}).get(REWARD_VERSION_TAG)
    if not wanted:
        return None
    current = version_by_alias(client, reward_name, alias)
    if current is not None and str(current.version) == wanted:
        return None
    client.set_registered_model_alias(reward_name, alias, wanted)
    return f"{reward_name}@{alias} -> v{wanted}"


def set_aliases(
    client: Any, policy_name: str, reward_name: str, alias: str, policy_v: str, reward_v: str
) -> None:
    """Policy first, reward second: repair can finish a half-done move from the policy's tag."""
    if alias == CHAMPION:
        current = version_by_alias(client, policy_name, CHAMPION)
        if current is not None and str(current.version) != str(policy_v):
            client.set_model_version_tag(policy_name, policy_v, PREVIOUS_TAG, str(current.version))
    client.set_registered_model_alias(policy_name, alias, policy_v)
    step(f"{alias}_policy_set")
    client.set_registered_model_alias(reward_name, alias, reward_v)


def alias_state(client: Any, policy_name: str, reward_name: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, key in ((policy_name, "policy"), (reward_name, "reward")):
        exists = _exists(client, name)
        for alias in ALIASES:
            v = version_by_alias(client, name, alias) if exists else None
            out[f"{key}@{alias}"] = str(v.version) if v is not None else None
    return out


def rollback_target(client: Any, policy_name: str, current: Any) -> tuple[Any | None, list[str]]:
    """The version ``--rollback`` moves ``champion`` to, and the earlier champions it passed over.

    Walks the chain of ``safealign.previous_champion`` tags back from ``current``, passing over every
    version tagged ``safealign.rolled_back`` (it was taken out of production; a rollback must never crown
    it again) and stopping at a version already seen: re-promoting an older version makes the chain loop
    (A -> B -> A), and following that loop swung the champion between two versions. None when no
    earlier champion is left, so repeated rollbacks walk back monotonically and then refuse.
    """
    seen = {str(current.version)}
    passed_over: list[str] = []
    version = current
    while True:
        previous = (version.tags or {}).get(PREVIOUS_TAG)
        if not previous or previous in seen:
            return None, passed_over
        seen.add(previous)
        try:
            version = client.get_model_version(policy_name, previous)
        except Exception as exc:  # noqa: BLE001 - a deleted version ends the chain, anything else is raised
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")):
                return None, passed_over
            raise
        if (version.tags or {}).get(ROLLBACK_TAG):
            passed_over.append(previous)
            continue
        return version, passed_over


def rollback(client: Any, policy_name: str, reward_name: str, reason: str) -> dict[str, Any]:
    """Move ``champion`` (both models) back to the latest earlier champion not rolled back (lock held)."""
    current = version_by_alias(client, policy_name, CHAMPION)
    if current is None:
        raise GateFailed(f"no '{CHAMPION}' on {policy_name}: nothing to roll back")
    target, passed_over = rollback_target(client, policy_name, current)
    if target is None:
        over = ", v".join(passed_over)
        skipped = f" that was not rolled back itself (passed over v{over})" if passed_over else ""
        raise GateFailed(
            f"{policy_name} v{current.version} is '{CHAMPION}' and no champion came before it{skipped}: "
            f"nothing to roll back to ('{CHAMPION}' stays v{current.version})"
        )
    previous = str(target.version)
    reward_v = (target.tags or {}).get(REWARD_VERSION_TAG)
    if not reward_v:
        raise GateFailed(f"{policy_name} v{previous} names no reward model version: cannot roll back to it")
    stamp = json.dumps(
        {"reason": reason, "to": str(previous), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )
    client.set_model_version_tag(policy_name, current.version, ROLLBACK_TAG, stamp)
    client.set_registered_model_alias(policy_name, CHAMPION, previous)
    client.set_registered_model_alias(reward_name, CHAMPION, reward_v)
    client.set_registered_model_tag(policy_name, "safealign.last_rollback", stamp)
    return {
        "rolled_back_from": str(current.version),
        "passed_over": passed_over,
        "champion": str(previous),
        "reward_model_champion": str(reward_v),
        "reason": reason,
    }
