"""Atomic writes: build in a temporary sibling, then rename over the target.

Temporary files and folders get the permissions a plain open()/mkdir() would (umask applied), not
mkstemp's private 0600/0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from lstmcli.errors import LstmcliError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file(dest: Path) -> tuple[int, str]:
    """(fd, path) of a new temporary file beside `dest`, readable as a normal file would be; when it
    replaces a file (`--force`), with that file's permissions, which replacing it must not change."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        mode = stat.S_IMODE(os.stat(dest).st_mode) if os.path.isfile(dest) else 0o666 & ~_umask()
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    return fd, tmp


def temp_dir(dest: Path) -> Path:
    """A new temporary folder beside `dest`, with a normal folder's permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: the old file stays whole until the new one is complete."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = temp_file(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a missing folder: name the file, not its temporary sibling
        raise write_failed(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_text(path: Path):
    """A text file to write that appears at `path` only once the block ends without an error: until
    then the old file (if any) stays whole, and an error leaves nothing behind."""
    path = Path(path)
    try:
        fd, tmp = temp_file(path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def old_dir(dest: Path) -> Path:
    """Where replace_dir keeps the previous `dest` while it swaps the new one in."""
    dest = Path(dest)
    if not dest.name:  # ".", "" or "/": named by where it leads
        dest = dest.resolve()
        if not dest.name:
            return dest / ".lstmcli.old"  # the root folder: nothing is ever swapped there
    return dest.with_name(f".{dest.name}.old")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the complete folder `tmp` at `dest`, keeping the old one as `.<name>.old` until the new one is
    in place.

    Two renames cannot be one atomic step, so a kill between them leaves no `dest` but a whole
    `.<name>.old`: recover_dir() (called by everything that reads or rewrites `dest`) renames it back.
    A stale `.old` is removed only while `dest` exists, so the only whole copy is never deleted.
    """
    old = old_dir(dest)
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: Path) -> bool:
    """Undo a swap that was cut between its two renames: `dest` missing and its `.old` whole -> rename it
    back. True when it did. (A swap in progress in another process is never mistaken for one that died:
    it holds `dest` missing for a rename's time only, and a second look a moment later sees it back.)"""
    old = old_dir(dest)
    if dest.exists() or not old.is_dir():
        return False
    time.sleep(0.05)
    if dest.exists() or not old.is_dir():
        return False
    try:
        os.rename(old, dest)
    except OSError:  # another process recovered it first, or a writer finished its swap
        return dest.exists()
    return True


def remove_stale_parts(dest: Path) -> None:
    """Delete temporary siblings (`.<name>.*.part`) that a killed save of `dest` left behind. Only the one
    process that writes `dest` (the run folder's lock holder) may call this."""
    for stale in dest.parent.glob(f".{dest.name}.*.part"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def honour_umask(path: Path) -> None:
    """Give a file written by a library that creates it private (safetensors: 0600) the permissions a
    plain open() would have: 0666 minus the umask."""
    os.chmod(path, 0o666 & ~_umask())


def refuse_non_regular(path: Path, advice: str) -> None:
    """LstmcliError when `path` exists as anything but a regular file: a rename over a symbolic link,
    a FIFO, a device (/dev/null, as root) or a folder would replace what the user has with a file."""
    if not os.path.lexists(path):
        return
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket")
        raise LstmcliError(f"{path} is {kind}; {advice}")


def stamp_pid(fh) -> None:
    """Write this process's pid into the lock file `fh` it holds, for the message of one that waits."""
    with contextlib.suppress(OSError):  # the pid only feeds a message: never fail over it
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()


def lock_holder(path: Path) -> str:
    """' (pid N)' naming the process that stamped the lock file `path`, or '' when it is not known."""
    try:
        pid = Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def write_failed(path: Path, exc: BaseException,
                 after: str = "what was there before is unchanged") -> LstmcliError:
    """One line for a failed write of `path`, whatever raised it: an OSError, or torch's and safetensors'
    own errors, which wrap the OS's (a full disk is RuntimeError "file write failed" in torch.save and
    SafetensorError "IoError(... StorageFull ...)" in safetensors)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif "StorageFull" in text or "No space left" in text or _full(Path(path)):
        reason = "No space left on device"
    else:
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
    return LstmcliError(f"cannot write {path}: {reason}; {after}")


def _full(path: Path) -> bool:
    """Whether the file system that holds `path` (or its nearest existing folder) is full: torch.save
    reports a full disk only as "unexpected pos ..." or "file write failed"."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free < 1 << 20
            except OSError:
                return False
    return False
