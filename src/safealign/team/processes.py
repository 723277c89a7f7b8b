"""Process supervision for the team stack's servers: start one in its own session, find every process it
left (its leader gone or not), stop them, wait until a service answers.

A server is started as the leader of its own session and process group, its pid (and group) recorded in
``<state_dir>/pids/NAME.pid`` and its output in ``<state_dir>/logs/NAME.log``. Stopping signals the
group's members found by pgid and command line, not the leader alone: a leader killed with ``kill -9``
leaves workers that still answer on its port (MLflow's uvicorn), and only this finds and stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from safealign.errors import ServiceError

# What every process of a service's group has on its command line (the group check's second half).
PROCESS_MARKERS = {"mlflow": "mlflow", "s3": "weed"}


def write_private(path: Path, text: str) -> None:
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


def pid_alive(pid: int) -> bool:
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


def group_members(pgid: int, marker: str) -> list[int]:
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


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (``weed``, ``mlflow``, ``dvc``)."""
    return Path(sys.executable).parent




class ProcessSupervisor:
    """The pid files, logs and process groups of the services whose state lives in ``state_dir``."""

    state_dir: Path

    def _log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

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
        return pid if pid is not None and pid_alive(pid) else None

    def _group(self, name: str) -> list[int]:
        """Every live process the service's start left, its leader gone or not (pgid + command line)."""
        pid = self._recorded_pid(name)
        return group_members(pid, PROCESS_MARKERS[name]) if pid is not None else []

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
        signal_all(members, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._group(name):
            time.sleep(0.2)
        left = self._group(name)
        if left:
            signal_all(left, signal.SIGKILL)
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

    def _wait(
        self, what: str, check: Callable[[], object], timeout_s: float, log: Path | None = None
    ) -> None:
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
