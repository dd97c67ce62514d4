"""Fetch a dataset file into the cache: from a mirror or upstream, checksummed, locked, atomic.

A file lands in the cache only after its checksum matched, by a rename from a temporary file in the
same folder, so the cache never holds a partial or unverified file. A portalocker lock around fetch
and extraction makes concurrent processes download once: the second waits, then finds the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tarfile
import urllib.error
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DatasetError
from .fsutil import temp_dir, temp_file

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
def cache_lock(cache: Path, key: str, timeout: float = 3600) -> Iterator[None]:
    """Exclusive lock on `cache/.locks/<key>.lock` for fetching or extracting `key`."""
    lock_dir = cache / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    import portalocker  # here, not at the top: every command imports this module, few fetch

    # non-blocking attempts every 0.1 s until `timeout`: a stuck holder ends in an error, not a hang
    try:
        lock = portalocker.Lock(str(lock_dir / f"{key}.lock"), mode="a", timeout=timeout, check_interval=0.1)
        lock.acquire()
    except portalocker.LockException:
        raise DatasetError(f"timed out after {timeout:.0f}s waiting for another lstmcli to finish "
                           f"fetching {key} into {cache}") from None
    try:
        yield
    finally:
        lock.release()


def _mirror_checksum(mirror: str, name: str) -> tuple[str, str] | None:
    """('sha256', hex) for `name` from the mirror's SHA256SUMS, or None when it has none for it."""
    try:
        with _open_source(_join(mirror, "SHA256SUMS")) as fh:
            text = fh.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return "sha256", parts[0].lower()
    return None


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if "://" in base else str(Path(base) / name)


def _open_source(location: str) -> BinaryIO:
    if "://" in location and not location.startswith("file://"):
        import urllib.request  # 40 ms to import: only when a file really comes over the network

        return urllib.request.urlopen(location, timeout=60)  # noqa: S310 (http(s) by design)
    return open(location.removeprefix("file://"), "rb")


def _size_of(handle: BinaryIO, location: str) -> int | None:
    headers = getattr(handle, "headers", None)  # an HTTP response
    if headers is not None and headers.get("Content-Length"):
        return int(headers["Content-Length"])
    try:
        return os.path.getsize(location.removeprefix("file://"))
    except OSError:
        return None


def _copy_hashing(location: str, dest: BinaryIO, algo: str, label: str) -> str:
    """Stream `location` into `dest`, showing a bar on a terminal (unless quiet); returns the hex digest."""
    digest = hashlib.new(algo)
    from tqdm import tqdm

    with _open_source(location) as src, tqdm(
        total=_size_of(src, location), unit="B", unit_scale=True, desc=label, leave=False,
        disable=not (log.isEnabledFor(logging.INFO) and sys.stderr.isatty()),
    ) as bar:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dest.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def fetch(remote: RemoteFile, cache: Path) -> Path:
    """Path of `remote` in `cache`, downloading and verifying it first if needed."""
    target = cache / remote.name
    if target.is_file():
        return target
    mirror = os.environ.get(MIRROR_ENV)
    with cache_lock(cache, remote.name.replace("/", "_")):
        if target.is_file():  # another process fetched it while we waited
            return target
        if mirror:
            source = _join(mirror, remote.name)
            algo, expected = _mirror_checksum(mirror, remote.name) or ("md5", remote.md5)
        else:
            source, algo, expected = remote.url, "md5", remote.md5
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(target)
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _copy_hashing(source, out, algo, remote.name)
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
    return target


def _offline_message(remote: RemoteFile, mirror: str | None, source: str, exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    where = f"mirror {MIRROR_ENV}={mirror}" if mirror else f"upstream {remote.url}"
    return (f"dataset '{remote.dataset}': cannot fetch {remote.name} from {where} ({reason}); "
            f"nothing is cached; upstream is {remote.url}; set {MIRROR_ENV} to a folder or URL "
            f"holding {remote.name}")


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
                tar.extractall(tmp, filter="data")
            if not (tmp / marker).is_dir():
                raise DatasetError(f"archive {archive} does not contain {marker}/")
            os.replace(tmp / marker, final)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"cannot extract {archive}: {exc} (delete it to fetch it again)") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
