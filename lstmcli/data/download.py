"""Fetch a dataset file into the cache: from a mirror or upstream, checksummed, locked, atomic, and never
for ever.

A file lands in the cache only after its checksum matched, by a rename from a temporary file in the
same folder, so the cache never holds a partial or unverified file. A portalocker lock around fetch
and extraction makes concurrent processes download once: the second waits, then finds the file.

No fetch can hang: transfer.py reads the source under the stall, total and lock time limits that
$LSTMCLI_STALL_TIMEOUT, $LSTMCLI_FETCH_TIMEOUT and $LSTMCLI_LOCK_TIMEOUT set (its docstring has the
rules). A lock is an flock on Linux and macOS: it vanishes with the process that held it, so a holder
killed with SIGKILL blocks nobody.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import urllib.error
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lstmcli.data.transfer import (
    DEFAULT_LOCK,
    LOCK_ENV,
    FetchTimeout,
    Limits,
    open_source,
    seconds,
    size_of,
    watching,
)
from lstmcli.errors import DatasetError
from lstmcli.fsutil import lock_holder, stamp_pid, temp_dir, temp_file
from lstmcli.progress import Progress, track

log = logging.getLogger(__name__)
MIRROR_ENV = "LSTMCLI_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: `name` is its path relative to a mirror root and to the cache."""

    dataset: str
    name: str
    url: str
    md5: str


@contextmanager
def cache_lock(cache: Path, key: str, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on `cache/.locks/<key>.lock` for fetching or extracting `key`.

    Taken at once when free; else a warning on stderr and a wait of up to `timeout` seconds
    ($LSTMCLI_LOCK_TIMEOUT when None), then DatasetError. The file holds the holder's pid, for the
    warning of a process that waits."""
    timeout = seconds(LOCK_ENV, DEFAULT_LOCK) if timeout is None else timeout
    lock_dir = cache / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = _acquire(lock_dir / f"{key}.lock", key, timeout)
    try:
        yield
    finally:
        lock.release()


def _acquire(path: Path, key: str, timeout: float) -> Any:
    """A held portalocker.Lock on `path`: at once if free, else after a warning and a wait of up to
    `timeout` seconds."""
    import portalocker  # here, not at the top: every command imports this module, few fetch

    try:  # non-blocking attempts every 0.1 s until `timeout`: a stuck holder ends in an error, not a hang
        lock = portalocker.Lock(str(path), mode="a", timeout=timeout, check_interval=0.1)
        try:
            fh = lock.acquire(fail_when_locked=True)
        except portalocker.AlreadyLocked:
            log.warning(f"another lstmcli process{lock_holder(path)} is fetching or extracting {key}; "
                        f"waiting up to {timeout:g} s for its lock {path} (set {LOCK_ENV} to change)")
            lock = portalocker.Lock(str(path), mode="a", timeout=timeout, check_interval=0.1)
            fh = lock.acquire()
    except portalocker.LockException:  # (portalocker 2 raises this, not AlreadyLocked, at the timeout)
        raise DatasetError(f"gave up after {timeout:g} s waiting for the lock {path}: another lstmcli "
                           f"process{lock_holder(path)} is still fetching or extracting {key}; raise "
                           f"{LOCK_ENV} (seconds) to wait longer, or stop that process if it is "
                           "stuck") from None
    stamp_pid(fh)
    return lock


def _mirror_checksum(mirror: str, name: str, limits: Limits) -> tuple[str, str] | None:
    """('sha256', hex) for `name` from the mirror's SHA256SUMS, or None when it has none for it.

    A SHA256SUMS that stalls or overruns is FetchTimeout, not None: such a mirror would only stall again."""
    buf = io.BytesIO()
    try:
        _copy_hashing(_join(mirror, "SHA256SUMS"), buf, "sha256", "", limits)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    for line in buf.getvalue().decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return "sha256", parts[0].lower()
    return None


def _join(base: str, name: str) -> str:
    """`name` under `base`, a URL or a folder."""
    return base.rstrip("/") + "/" + name if "://" in base else str(Path(base) / name)


def _copy_hashing(location: str, dest: BinaryIO, algo: str, label: str, limits: Limits) -> str:
    """Stream `location` into `dest` within `limits`, with progress labelled `label` (none when `label` is
    empty); returns the hex digest."""
    digest = hashlib.new(algo)
    with watching(location, limits) as watch, open_source(location, watch) as src, Progress(
            f"fetching {label}" if label else "", size_of(src, location) if label else None, unit="B",
            hidden=not label) as bar:
        # read1, not read: read(CHUNK) waits for a whole MiB, so a slow stream would look stalled
        while piece := src.read1(CHUNK):
            watch.progress(len(piece))
            digest.update(piece)
            dest.write(piece)
            bar.update(len(piece))
        length = getattr(src, "headers", {}).get("Content-Length", "")
        if length.isdigit() and int(length) != watch.got:  # read1 reports a cut body as a plain EOF
            raise ConnectionError(f"the connection closed after {watch.got} of {length} bytes")
    return digest.hexdigest()


def fetch(remote: RemoteFile, cache: Path) -> Path:
    """Path of `remote` in `cache`, downloading and verifying it first if needed, within the time limits
    that the environment sets (see the module docstring)."""
    limits = Limits.from_env()  # first: a bad value is an error whether the file is cached or not
    target = cache / remote.name
    if target.is_file():
        return target
    with cache_lock(cache, remote.name.replace("/", "_"), limits.lock):
        if target.is_file():  # another process fetched it while we waited
            return target
        try:
            _download(remote, cache, limits)
        except FetchTimeout as exc:
            raise DatasetError(f"dataset '{remote.dataset}': cannot fetch {remote.name}: {exc}; "
                               f"nothing is cached") from None
    return target


def _download(remote: RemoteFile, cache: Path, limits: Limits) -> None:
    """Download `remote` into `cache`: to a temporary file, renamed into place once its checksum matched."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        source = _join(mirror, remote.name)
        algo, expected = _mirror_checksum(mirror, remote.name, limits) or ("md5", remote.md5)
    else:
        source, algo, expected = remote.url, "md5", remote.md5
    target = cache / remote.name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(target)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _copy_hashing(source, out, algo, remote.name, limits)
        if actual != expected:
            raise DatasetError(
                f"dataset '{remote.dataset}': checksum mismatch for {source} "
                f"({algo} {actual}, expected {expected}); nothing was written to {cache}")
        os.replace(tmp, target)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise DatasetError(_offline_message(remote, mirror, source, exc)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _offline_message(remote: RemoteFile, mirror: str | None, source: str, exc: Exception) -> str:
    """The one line for a fetch that failed: what, from where, why, and how to point lstmcli elsewhere."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    where = f"mirror {MIRROR_ENV}={mirror}" if mirror else f"upstream {remote.url}"
    return (f"dataset '{remote.dataset}': cannot fetch {remote.name} from {where} ({reason}); "
            f"nothing is cached; upstream is {remote.url}; set {MIRROR_ENV} to a folder or URL "
            f"holding {remote.name}")


def _safe_member(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's `data` filter, and no mode of the archive's: files and folders get what the umask
    gives, as everything else lstmcli writes (the archive's 0644 would undo a private umask)."""
    return tarfile.data_filter(member, path).replace(mode=None, deep=False)


def extract_once(archive: Path, dest: Path, marker: str) -> Path:
    """Extract `archive` under `dest` once: to a temporary folder, then renamed to `dest/marker`.

    tarfile's `data` filter refuses members that would land outside the folder (absolute paths,
    `..`, links pointing out), so a hostile archive cannot write elsewhere.
    """
    final = dest / marker
    if final.is_dir():
        return final
    with cache_lock(dest, f"extract_{marker}"):
        if final.is_dir():
            return final
        tmp = temp_dir(final)
        try:
            with tarfile.open(archive) as tar:
                # members one by one as the stream is read: a count, not a total (that would
                # need a first pass over the compressed archive)
                tar.extractall(tmp, members=track(tar, f"extracting {archive.name}", unit="files"),
                               filter=_safe_member)
            if not (tmp / marker).is_dir():
                raise DatasetError(f"archive {archive} does not contain {marker}/")
            os.replace(tmp / marker, final)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"cannot extract {archive}: {exc} (delete it to fetch it again)") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
