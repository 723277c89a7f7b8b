"""Content hashes of folders and files: the identity of a model folder, the run-time data version, a split.

sha256 over each file's relative POSIX path and bytes, in sorted path order. It is not DVC's md5 (that needs
DVC's .dir object format); it changes exactly when a file's name or content changes, which is all the
registry (is this the same candidate?), the pipeline cache (is this the same data?) and the GRPO checkpoint
fingerprint (is this the same reward model and train split?) need.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def _update_with_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)


def tree_hash(folder: str | Path) -> str:
    """Hex sha256 over relative paths and bytes of every file under ``folder``."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        _update_with_file(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """Hex sha256 of one file's bytes; ``"missing"`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    _update_with_file(digest, path)
    return digest.hexdigest()
