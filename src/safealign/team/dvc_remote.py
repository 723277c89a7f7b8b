"""The team's DVC remote: configure it from the environment, push and pull with errors a person can act on.

The remote's URL and endpoint come from SAFEALIGN_DVC_REMOTE_URL / SAFEALIGN_DVC_ENDPOINT_URL (what
``safealign stack status --exports`` prints, or a cluster's object store) and go into ``.dvc/config.local``,
which DVC never commits; the keys stay in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by DVC's S3
client, so no secret is ever written to a file of the repository. DVC's own failure text ("unexpected
error - Forbidden") names neither the remote nor what to do; :func:`run_dvc` turns it into one that does,
and never repeats the secret key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from safealign.errors import ConfigError, DataError, ServiceError

REMOTE_NAME = "team"
URL_ENV = "SAFEALIGN_DVC_REMOTE_URL"
ENDPOINT_ENV = "SAFEALIGN_DVC_ENDPOINT_URL"
SECRET_ENV = "AWS_SECRET_ACCESS_KEY"

_CREDENTIAL_SIGNS = ("Forbidden", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied",
                     "Unable to locate credentials", "NoCredentialsError")
_UNREACHABLE_SIGNS = ("Could not connect", "Connection refused", "ConnectTimeout", "EndpointConnectionError",
                      "Connect timeout", "Name or service not known")


@dataclass(frozen=True)
class Remote:
    """An S3 DVC remote: its URL (s3://bucket[/prefix]) and, off AWS, the endpoint of the S3 server."""

    url: str
    endpoint: str = ""
    name: str = REMOTE_NAME

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"DVC remote '{self.name}' ({self.url}{where})"

    @classmethod
    def from_env(cls, required: bool = True) -> Remote | None:
        url = os.environ.get(URL_ENV, "")
        if not url:
            if required:
                raise ConfigError(
                    f"no DVC remote: set {URL_ENV} (and {ENDPOINT_ENV} off AWS), e.g. "
                    '`eval "$(safealign stack status --exports)"`'
                )
            return None
        return cls(url=url, endpoint=os.environ.get(ENDPOINT_ENV, ""))


def _dvc() -> str:
    found = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if found is None:
        raise ServiceError("the `dvc` command is not installed")
    return found


def scrub(text: str) -> str:
    """Remove the S3 secret key from ``text`` wherever it appears (a tool's error might echo its config)."""
    secret = os.environ.get(SECRET_ENV)
    return text.replace(secret, "***") if secret else text


def run_dvc(args: list[str], repo: str | Path, remote: Remote | None, action: str,
            timeout_s: float = 600.0) -> str:
    """Run ``dvc ARGS`` in ``repo``; on failure raise an error naming the remote and the likely cause.

    Bounded retries (AWS_MAX_ATTEMPTS) keep a dead endpoint from stalling a pipeline for minutes.
    """
    env = dict(os.environ)
    env.setdefault("AWS_MAX_ATTEMPTS", "2")
    env.setdefault("AWS_RETRY_MODE", "standard")
    env["DVC_NO_ANALYTICS"] = "1"
    try:
        proc = subprocess.run(  # noqa: S603 - fixed program, our arguments
            [_dvc(), *args], cwd=repo, capture_output=True, text=True, env=env, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"dvc {action} timed out after {timeout_s:.0f} s") from exc
    out = scrub((proc.stdout or "") + (proc.stderr or ""))
    failed = proc.returncode != 0 or "ERROR:" in out
    if not failed:
        return out
    errors = [line.strip() for line in out.splitlines() if line.startswith("ERROR")]
    detail = " ".join(errors)[:400] or out[-400:]
    target = remote.describe() if remote else "the DVC remote"
    if any(sign in out for sign in _UNREACHABLE_SIGNS):
        raise ServiceError(
            f"dvc {action}: {target} is not reachable ({detail}). The local DVC cache is untouched; "
            f"run the {action} again once the object store answers"
        )
    if any(sign in out for sign in _CREDENTIAL_SIGNS):
        key = os.environ.get("AWS_ACCESS_KEY_ID", "<unset>")
        raise ServiceError(
            f"dvc {action}: {target} refused the credentials (access key id {key}; check AWS_ACCESS_KEY_ID "
            f"and {SECRET_ENV}): {detail}"
        )
    raise ServiceError(f"dvc {action} with {target} failed: {detail}")


def configure(repo: str | Path, remote: Remote) -> None:
    """Make ``remote`` the default of ``repo`` in .dvc/config.local (never committed, no secrets)."""
    run_dvc(["remote", "add", "--local", "--force", "--default", remote.name, remote.url], repo, remote,
            "remote add")
    if remote.endpoint:
        run_dvc(["remote", "modify", "--local", remote.name, "endpointurl", remote.endpoint], repo, remote,
                "remote modify")


def push(repo: str | Path, remote: Remote, targets: list[str] | None = None) -> str:
    return run_dvc(["push", "-r", remote.name, *(targets or [])], repo, remote, "push")


def pull(repo: str | Path, remote: Remote, targets: list[str] | None = None) -> str:
    return run_dvc(["pull", "-r", remote.name, *(targets or [])], repo, remote, "pull")


def dvc_md5(dvc_file_text: str, source: str = "data.dvc") -> str:
    """The md5 (``<hex>.dir``) of the single output recorded in a .dvc file's text."""
    doc = yaml.safe_load(dvc_file_text) or {}
    outs = doc.get("outs") or []
    if len(outs) != 1 or not outs[0].get("md5"):
        raise DataError(f"{source}: expected exactly one output with an md5, got {outs!r}")
    return str(outs[0]["md5"])


def data_dvc_at(rev: str, repo: str | Path = ".", path: str = "data.dvc") -> str:
    """The text of ``path`` at git revision ``rev`` of ``repo`` (a local clone)."""
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"],  # noqa: S607
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"{path} at git revision {rev!r} of {repo}: {proc.stderr.strip()}")
    return proc.stdout


def pull_version(md5: str, dest: str | Path, remote: Remote) -> Path:
    """Fetch the directory whose DVC md5 is ``md5`` from ``remote`` into ``dest`` (replaced atomically).

    Needs no git and no clone: a throw-away DVC repository holds a one-line .dvc file with that md5 and
    pulls it, so DVC itself checks every file's hash on the way in. This is how a pipeline step in a
    cluster gets exactly the data a commit's data.dvc names.
    """
    if not md5.endswith(".dir") or len(md5) != 36:
        raise DataError(f"data version {md5!r} is not a DVC directory md5 (<32 hex>.dir, as in data.dvc)")
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="safealign-dvc-") as tmp:
        repo = Path(tmp)
        run_dvc(["init", "--no-scm", "-q"], repo, remote, "init")
        configure(repo, remote)
        (repo / "data.dvc").write_text(
            yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "data"}]}), encoding="utf-8"
        )
        pull(repo, remote, ["data.dvc"])
        # DVC hashes what it checked out and compares with the md5: the pulled data IS that version
        status = run_dvc(["status", "--json", "data.dvc"], repo, remote, "status").strip()
        if status not in ("{}", ""):
            raise DataError(f"data pulled for version {md5} does not match it: dvc status {status}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = dest.parent / f".{dest.name}.pulling"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(repo / "data", staged)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staged, dest)
    return dest


def _main(argv: list[str] | None = None) -> int:
    """``python -m safealign.team.dvc_remote configure|push|pull [TARGET ...]`` in the current repository.

    The remote comes from the environment (SAFEALIGN_DVC_REMOTE_URL, SAFEALIGN_DVC_ENDPOINT_URL). Exit 1
    when the object store is down or refuses the keys, 2 when no remote is configured.
    """
    import argparse

    from safealign.errors import SafealignError

    parser = argparse.ArgumentParser(prog="python -m safealign.team.dvc_remote")
    parser.add_argument("action", choices=["configure", "push", "pull"])
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--allow-missing", action="store_true",
                        help="pull: skip what the remote does not have (the pipeline rebuilds it)")
    args = parser.parse_args(argv)
    try:
        remote = Remote.from_env()
        assert remote is not None
        configure(".", remote)
        if args.action == "push":
            push(".", remote, args.targets)
        elif args.action == "pull":
            pull(".", remote, [*(["--allow-missing"] if args.allow_missing else []), *args.targets])
        print(f"dvc {args.action}: {remote.describe()}: ok")
        return 0
    except SafealignError as exc:
        print(f"safealign: error: {scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(_main())
