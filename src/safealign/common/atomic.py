"""Write outputs atomically: a killed stage never leaves a half-written artifact.

Everything is written to a sibling temporary path and renamed into place at the end; the rename is atomic
on one filesystem, so readers see either the old complete output or the new complete output. When the
final rename itself fails (disk full, read-only folder) the temporary path is removed and an output that
was moved aside is put back, so a failure leaves neither ``.NAME.tmp-*`` nor ``.NAME.old-*`` behind.

Modes: ``tempfile`` creates 0600 files and 0700 folders (private by design), which would make every output
unreadable to the rest of a team sharing a volume. Outputs get what a plain ``open``/``mkdir`` gives instead:
0666/0777 less the process umask, i.e. 0644/0755 under the usual umask 022. A stricter umask (``umask 077``)
is how a user who wants private outputs configures it.

Temporary names carry the writer's process id (``.NAME.tmp-PID-XXXX``, ``.NAME.old-PID``), so what a killed
writer left behind can be told from what a live one is still writing: ``remove_stale_temps``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it (Linux reports it in /proc; elsewhere set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_dir(target: str | Path, keep_identical: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block finishes without error.

    ``keep_identical``: when the new folder has the same files and bytes as ``target`` (a finished stage
    run again on the same inputs), ``target`` is left as it is, not even renamed, and the copy is dropped.
    """
    from safealign.common.hashing import tree_hash

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        normalise_modes(tmp)
        if keep_identical and target.is_dir() and tree_hash(tmp) == tree_hash(target):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def normalise_modes(folder: Path) -> None:
    """Give everything under ``folder`` the modes a plain ``open``/``mkdir`` would (see the module doc).

    Libraries that write through their own temporary files create them 0600: safetensors' ``save_file``
    (every ``*.safetensors``: reward model, adapter, checkpoints) did, so model weights were private while
    everything beside them was 0644. Execute bits a writer set are kept (less the umask).
    """
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode())
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            execute = os.stat(path).st_mode & 0o111 & ~mask
            os.chmod(path, file_mode() | execute)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target`` (a folder); on failure the previous ``target`` is put back."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    moved_aside = False
    try:
        if target.exists():
            os.replace(target, old)
            moved_aside = True
        os.replace(tmp, target)
    except BaseException:
        if moved_aside and not target.exists():
            os.replace(old, target)
        raise
    if moved_aside:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, file_mode())
        os.close(fd)
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(target: str | Path, payload: Any) -> None:
    """Write JSON atomically with sorted keys, so identical content gives identical bytes."""
    with atomic_file(target) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def write_text(target: str | Path, text: str) -> None:
    with atomic_file(target) as handle:
        handle.write(text)


# .NAME.tmp-PID-XXXX (and .NAME.tmp-XXXX, written before names carried the pid) or .NAME.old-PID
_TEMP_NAME = re.compile(r"^\..+\.(?:tmp-(?:(?P<tmp_pid>\d+)-)?[^-]*|old-(?P<old_pid>\d+))$")


def _running(pid: int) -> bool:
    """Whether another process with this id is running here (our own id: no, nothing is written yet)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders that killed writers left directly in ``folder``.

    A temporary path whose writer is still running is kept; one without a process id (an older name) is
    stale by definition. Process ids are this machine's: on a folder that writers on other machines share,
    call it only where no other machine writes. Call it when a stage starts, before it writes anything.
    Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = _TEMP_NAME.match(path.name)
        if match is None:
            continue
        pid = match.group("tmp_pid") or match.group("old_pid")
        if pid is not None and _running(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def rename_no_replace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` to ``target``, refusing (FileExistsError) when ``target`` exists.

    For outputs that must never replace a file the command did not write (``generate --output``): a hard
    link is created atomically only where no file is (so a file that appeared meanwhile is not clobbered),
    then the source name is dropped. Filesystems without hard links fall back to check-then-rename.
    """
    source, target = Path(source), Path(target)
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if target.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from exc
        os.replace(source, target)
        return
    source.unlink()
