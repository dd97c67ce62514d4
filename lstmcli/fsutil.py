"""Atomic writes: build in a temporary sibling, then rename over the target.

Temporary files and folders get the permissions a plain open()/mkdir() would (umask applied), not
mkstemp's private 0600/0700.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file(dest: Path) -> tuple[int, str]:
    """(fd, path) of a new temporary file beside `dest`, readable as a normal file would be."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, tmp


def temp_dir(dest: Path) -> Path:
    """A new temporary folder beside `dest`, with a normal folder's permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: the old file stays whole until the new one is complete."""
    path = Path(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the complete folder `tmp` at `dest`, moving any old one aside first and removing it after."""
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
