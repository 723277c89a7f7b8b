"""One content hash of a folder tree: the identity of a model folder and the run-time data version.

sha256 over each file's relative POSIX path and bytes, in sorted path order. It is not DVC's md5 (that needs
DVC's .dir object format); it changes exactly when a file's name or content changes, which is all the
registry (is this the same candidate?) and the pipeline cache (is this the same data?) need.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_hash(folder: str | Path) -> str:
    """Hex sha256 over relative paths and bytes of every file under ``folder``."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
