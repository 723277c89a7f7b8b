"""Write outputs atomically: a killed stage never leaves a half-written artifact.

Everything is written to a sibling temporary path and renamed into place at the end; the rename is atomic
on one filesystem, so readers see either the old complete output or the new complete output. When the
final rename itself fails (disk full, read-only folder) the temporary path is removed and an output that
was moved aside is put back, so a failure leaves neither ``.NAME.tmp-*`` nor ``.NAME.old-*`` behind.

Modes: ``tempfile`` creates 0600 files and 0700 folders (private by design), which would make every output
unreadable to the rest of a team sharing a volume. Outputs get what a plain ``open``/``mkdir`` gives instead:
0666/0777 less the process umask, i.e. 0644/0755 under the usual umask 022. A stricter umask (``umask 077``)
is how a user who wants private outputs configures it.

Rerunning a finished stage on the same inputs changes no output byte: ``atomic_dir(keep_identical=True)``
leaves a folder alone when the new one has the same files and bytes (``renderings`` names files compared by
name only: pages a library renders with the time they were made, from content the folder holds as data),
and ``write_json_result`` leaves a result document alone when it differs only in ``volatile`` fields (this
process's run id, how long it took).

Temporary names carry the writer's process id (``.NAME.tmp-PID-XXXX``, ``.NAME.old-PID``), so what a killed
writer left behind can be told from what a live one is still writing: ``remove_stale_temps``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
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
def atomic_dir(
    target: str | Path, keep_identical: bool = False, renderings: Sequence[str] = ()
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block finishes without error.

    ``keep_identical``: when the new folder has the same files and bytes as ``target`` (a finished stage
    run again on the same inputs), ``target`` is left as it is, not even renamed, and the copy is dropped.
    ``renderings``: glob patterns of relative paths (``gx/*.html``) whose bytes do not count in that
    comparison, only their names: pages rendered with the time they were made (and random element ids)
    from content the folder also holds as data, which is compared.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, dir_mode())
        yield tmp
        normalise_modes(tmp)
        if keep_identical and target.is_dir() and same_tree(tmp, target, renderings):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def same_tree(first: str | Path, second: str | Path, renderings: Sequence[str] = ()) -> bool:
    """Whether two folders hold the same files with the same bytes (files matching a ``renderings`` glob:
    the same names only). Empty folders do not count, as in :func:`safealign.common.hashing.tree_hash`."""
    from safealign.common.hashing import file_hash

    def listing(root: Path) -> dict[str, str | None]:
        files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
        return {
            rel: None if any(fnmatch.fnmatchcase(rel, pattern) for pattern in renderings) else file_hash(path)
            for rel, path in files.items()
        }

    return listing(Path(first)) == listing(Path(second))


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


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` for a library that writes a file by name itself (the KFP
    compiler); it is renamed over ``target`` when the block finishes and removed when it fails. The name
    ends in ``target``'s suffix, for writers that choose a format by extension."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=target.suffix, dir=target.parent
    )
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as handle:  # durable before the rename, as atomic_file's
            os.fsync(handle.fileno())
        os.chmod(tmp, file_mode())  # the writer may have replaced the file: mode as a plain open gives
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(target: str | Path, payload: Any) -> None:
    """Write JSON atomically with sorted keys, so identical content gives identical bytes."""
    with atomic_file(target) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def without(doc: Any, paths: Iterable[str]) -> Any:
    """A copy of ``doc`` without the dotted ``paths`` (``history.*.elapsed_s``: ``*`` is every item of a
    list or every value of a mapping). A path that is not there is ignored."""
    doc = json.loads(json.dumps(doc))  # a deep copy, as the document reads back (tuples as lists, ...)

    def drop(node: Any, keys: list[str]) -> None:
        head, rest = keys[0], keys[1:]
        if head == "*":
            children = list(node.values()) if isinstance(node, dict) else node
            for child in children if isinstance(children, list) else []:
                drop(child, rest)
        elif isinstance(node, dict) and head in node:
            if rest:
                drop(node[head], rest)
            else:
                del node[head]

    for path in paths:
        keys = path.split(".")
        if keys[-1] == "*":
            raise ValueError(f"{path!r}: a path names a field, it cannot end in '*'")
        drop(doc, keys)
    return doc


def kept_result(
    target: str | Path,
    payload: Any,
    volatile: Iterable[str] = (),
    stable: Callable[[Any], Any] | None = None,
) -> Any | None:
    """The JSON document at ``target`` when it holds the same result as ``payload``: equal once the
    ``volatile`` paths (see :func:`without`) are dropped from both, and ``stable`` (a function of such a
    copy, for what a path cannot name) applied. None when it differs, is missing or does not parse."""
    target = Path(target)
    if not target.is_file():
        return None
    try:
        old = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    volatile = list(volatile)

    def canonical(doc: Any) -> str:  # compared as text, so NaN equals NaN
        doc = without(doc, volatile)
        return json.dumps(stable(doc) if stable is not None else doc, sort_keys=True)

    return old if canonical(old) == canonical(payload) else None


def write_json_result(target: str | Path, payload: Any, volatile: Iterable[str] = ()) -> Any:
    """Write a stage's result document like :func:`write_json`, unless ``target`` already holds the same
    result (:func:`kept_result`): then it is left as it is, not even rewritten, so rerunning a finished
    stage on the same inputs changes no byte. ``volatile`` names what only describes this process (its
    MLflow run id, how long it took): such a file keeps the run that first produced the result.

    Returns the document as it now stands in ``target``.
    """
    kept = kept_result(target, payload, volatile)
    if kept is not None:
        return kept
    write_json(target, payload)
    return json.loads(json.dumps(payload))


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
