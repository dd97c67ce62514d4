"""A run folder: its name, the checks and the lock that keep two runs (or a run and a user's files) out
of one folder, its `latest` link, and the record of where it ran."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import uuid
from datetime import datetime
from pathlib import Path

import torch

from lstmcli import __version__
from lstmcli.config import Config
from lstmcli.data.registry import REGISTRY
from lstmcli.errors import LstmcliError
from lstmcli.fsutil import lock_holder, stamp_pid
from lstmcli.runtime.plan import RunPlan
from lstmcli.runtime.precision import bf16_support

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"  # RunLock's; holds the pid of the process that trains into the folder


def default_out(cfg: Config) -> Path:
    """runs/<dataset>-<cell>-<timestamp>, the dataset named by its registry name or its file's stem."""
    name = cfg.data.dataset if cfg.data.dataset in REGISTRY else Path(cfg.data.dataset).stem
    return Path("runs") / f"{name}-{cfg.model.cell.value}-{datetime.now():%Y%m%d-%H%M%S}"


def point_latest(run_dir: Path) -> None:
    """`<parent>/latest` -> run_dir, replaced atomically, when `latest` is absent or a link lstmcli made
    (one to a sibling's name). Anything else by that name is the user's: it is left alone, with a
    warning (once per process)."""
    run_dir = run_dir.resolve()  # `--out .` has no name of its own
    link = run_dir.parent / "latest"
    if link.is_symlink():
        target = os.readlink(link)
        ours = os.sep not in target and "/" not in target and (
            is_run_folder(link.parent / target) or not os.path.lexists(link.parent / target))
    else:
        ours = not link.exists()
    if not ours:
        if os.path.abspath(link) not in _WARNED:
            _WARNED.add(os.path.abspath(link))
            kind = "a link to another place" if link.is_symlink() else \
                "a folder" if link.is_dir() else "a file"
            log.warning(f"{link} is {kind} that lstmcli did not make: left as it is, not pointed at "
                        f"{run_dir.name}")
        return
    tmp = run_dir.parent / f".latest.{uuid.uuid4().hex[:12]}"  # a fresh name: nothing of anyone's
    tmp.symlink_to(run_dir.name)
    try:
        tmp.replace(link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


_WARNED: set[str] = set()


def _listing(run_dir: Path) -> list[str]:
    """What a folder holds besides its lock file."""
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)


def is_run_folder(run_dir: Path) -> bool:
    return (run_dir / "config.json").is_file() and (run_dir / "metrics.json").is_file()


def _is_finished(run_dir: Path) -> bool:
    try:
        return "test" in json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_out(run_dir: Path, force: bool) -> None:
    """Refuse a run folder that holds anything (unless `force`): a finished run, an unfinished one (which
    `--resume` continues), or files of the user's."""
    for folder in (run_dir.resolve(), *run_dir.resolve().parents):
        if (folder / "model.safetensors").is_file() and (folder / "vocab.json").is_file():
            raise LstmcliError(f"--out {run_dir} is inside the checkpoint {folder}; choose an --out "
                               "outside it")
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    if not run_dir.is_dir():
        raise LstmcliError(f"--out {run_dir} exists and is not a folder; choose another --out")
    held = _listing(run_dir)
    if not held or force:
        return
    if is_run_folder(run_dir) and not _is_finished(run_dir) and not (run_dir / "last").is_dir():
        raise LstmcliError(f"--out {run_dir} holds a run that stopped before its first checkpoint; add "
                           f"--force to start it again")
    if is_run_folder(run_dir) and not _is_finished(run_dir):
        raise LstmcliError(f"--out {run_dir} holds an unfinished run; continue it with lstmcli train "
                           f"--resume {run_dir}, or add --force to start over (its best/ and last/ are lost)")
    what = "a finished run" if is_run_folder(run_dir) else f"{len(held)} item(s), e.g. {held[0]!r}"
    raise LstmcliError(f"--out {run_dir} is not empty (it holds {what}); choose another --out, or add "
                       f"--force to train into it (files of the same names are replaced)")


class RunLock:
    """An exclusive lock on a run folder (`.lock` in it) for as long as one process trains into it, so
    that two trainings or resumes of one folder cannot interleave their files. The OS drops it when its
    process ends, however it ends."""

    def __init__(self, run_dir: Path):
        import portalocker  # here: only training takes it

        self.path = run_dir / LOCK_FILE
        self._lock = portalocker.Lock(str(self.path), mode="a+", timeout=0, fail_when_locked=True)
        try:
            fh = self._lock.acquire()
        except (portalocker.LockException, portalocker.AlreadyLocked):
            raise LstmcliError(f"run folder {run_dir} is in use by another lstmcli process"
                               f"{lock_holder(self.path)}; wait for it to end, or train into another "
                               "--out") from None
        stamp_pid(fh)

    def release(self) -> None:
        self._lock.release()


def claim(run_dir: Path, force: bool) -> RunLock:
    """Create and lock the folder of a new run, then look again (another process may have filled it since
    check_out looked); with `force`, clear the best/ and last/ of whatever ran there before, so that no
    checkpoint of another run is left beside this one's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    try:
        check_out(run_dir, force)
    except LstmcliError:
        lock.release()
        raise
    if force:
        for name in ("best", "last"):
            for stale in (run_dir / name, run_dir / f".{name}.old"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
    return lock


def environment(plan: RunPlan) -> dict:
    """What the numbers of a run depend on besides its config (threads: per process)."""
    return {"lstmcli": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(plan.device), "threads": torch.get_num_threads(),
            "precision": plan.choice.precision.value, "impl": plan.choice.impl.value,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16": bf16_support(plan.device.type).level, "world_size": plan.dist.world_size,
            "backend": plan.dist.backend}
