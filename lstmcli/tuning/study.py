"""A tune: its folder, its Optuna study in a database, the search under a budget, and resume.

The study lives in a real database (Optuna's RDB storage): by default a SQLite file in the tune folder,
or any URL Optuna takes (PostgreSQL, MySQL), so that several processes, on one machine or many, can run
one study; each process has its own tune folder, and a trial's run folder is named by its trial number,
which the database hands out once. The folder is locked while a process runs it, so a trial that the
storage still calls RUNNING and that belongs to a folder we hold has lost its process: `--resume` fails
it and runs it again with the same parameters, continuing its run folder from last/.

Optuna is imported inside the functions that use it: the command line loads it for `tune` only.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lstmcli.config import Config, from_dict
from lstmcli.errors import Interrupted, LstmcliError
from lstmcli.fsutil import lock_holder
from lstmcli.training.rundir import LOCK_FILE, RunLock, check_out
from lstmcli.tuning.settings import RECORD, Settings, mask_url, read_record, write_record
from lstmcli.tuning.space import Param, parse_space
from lstmcli.tuning.trial import FAILS_IN_A_ROW, TrialFailed, objective, trial_done

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'lstmcli[tune]'"
STUDY_DB = "study.db"
TPE_STARTUP = 5  # random trials before TPE models the space: Optuna's 10 is most of a 20-minute budget
PRUNER_STARTUP = 3  # complete trials before the pruner judges any: a median of fewer is mostly noise
PRUNER_WARMUP = 0  # epochs before a trial may be pruned: after its first, where pruning saves the most
SQLITE_WAIT_S = 60  # how long a writer waits for another process's lock on a SQLite file
OPEN_TRIES = 5  # two processes creating one new database race on its tables; the loser tries again


def require() -> None:
    """Fail with one line (exit 2) when the `tune` extra is not installed, before any work starts."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise LstmcliError(f"lstmcli tune needs Optuna: {EXTRA_HINT}") from None


class Clock:
    """The seconds a tune folder's search has taken over all its runs, kept in tune.json as it goes,
    so that a resumed tune gets what is left of its budget."""

    def __init__(self, folder: Path, settings: Settings, spent: float, started: str):
        self.folder, self.settings, self.before, self.started = folder, settings, spent, started
        self.since = time.monotonic()

    def spent(self) -> float:
        """Seconds so far, over all of the folder's runs."""
        return self.before + time.monotonic() - self.since

    def left(self) -> float | None:
        """Seconds of budget left (None: no budget)."""
        return None if self.settings.budget is None else self.settings.budget - self.spent()

    def save(self) -> None:
        """Rewrite tune.json with the seconds so far."""
        write_record(self.folder, self.settings, self.spent(), self.started)


@dataclass
class Tune:
    """A tune folder held by this process, and its study."""

    folder: Path  # absolute
    settings: Settings
    base: Config
    space: dict[str, Param]
    study: object  # optuna.Study
    clock: Clock
    lock: RunLock
    deadline: float | None  # time.monotonic() at which the budget ends
    failing: list[str] = field(default_factory=list)  # the messages of this process's latest failed
    #                                                   trials in a row


def open_storage(url: str):
    """Optuna's RDB storage at `url`. SQLite writers wait for each other instead of failing with
    "database is locked"; a missing driver or an unreachable server is one line."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    kwargs = {"connect_args": {"timeout": SQLITE_WAIT_S}} if url.startswith("sqlite") else {}
    for attempt in range(OPEN_TRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except ImportError as exc:
            raise LstmcliError(f"--storage {mask_url(url)} needs a database driver that is not installed "
                               f"({exc}); e.g. pip install psycopg2-binary for PostgreSQL") from None
        except SQLAlchemyError as exc:
            if attempt == OPEN_TRIES - 1:
                first = str(exc).strip().splitlines()[0][:200]
                raise LstmcliError(f"cannot open the study database {mask_url(url)}: {first}") from None
            time.sleep(0.2 * (attempt + 1))


def open_study(settings: Settings, create: bool):
    """The settings' study (created when `create` and missing), maximised, with the median pruner on each
    epoch's validation score and TPE seeded by the sampler seed plus the trials the study holds already:
    a resumed or joining process does not draw its predecessor's first trials again."""
    import optuna

    storage = open_storage(settings.storage)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=PRUNER_WARMUP)
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=settings.study, pruner=pruner,
                                        direction="maximize", load_if_exists=True)
        else:
            study = optuna.load_study(study_name=settings.study, storage=storage, pruner=pruner)
    except KeyError:
        raise LstmcliError(f"the database {mask_url(settings.storage)} has no study "
                           f"'{settings.study}'") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise LstmcliError(f"study '{settings.study}' minimises; lstmcli tune maximises the validation "
                           "score: give another --study")
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=TPE_STARTUP,
                                               seed=settings.sampler_seed + len(study.trials))
    return study


def _lock(folder: Path) -> RunLock:
    """Hold the tune folder: a second tune or resume of it is refused in one line."""
    try:
        return RunLock(folder)
    except LstmcliError:
        raise LstmcliError(f"tune folder {folder} is in use by another lstmcli process"
                           f"{lock_holder(folder / LOCK_FILE)}; wait for it to end") from None


def _claim(folder: Path, force: bool) -> RunLock:
    """The folder of a new tune, locked: new or empty, or (with `force`) cleared of an earlier tune's
    trials and default database, which would otherwise mix with this tune's."""
    import shutil

    if (folder / RECORD).is_file() and not force:
        raise LstmcliError(f"--out {folder} holds a tune; continue it with lstmcli tune --resume {folder}, "
                           "or add --force to start over (its trials and study.db are removed)")
    check_out(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    try:
        check_out(folder, force)  # again, now that it is ours: another process may have filled it since
    except LstmcliError:
        lock.release()
        raise
    if force:
        for stale in ("trials", STUDY_DB, RECORD):
            path = folder / stale
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    return lock


def start(settings: Settings, folder: Path, force: bool) -> Tune:
    """A new tune in `folder`: claimed and locked, tune.json written, its study opened (created)."""
    folder = folder.absolute()
    lock = _claim(folder, force)
    try:
        if not settings.storage:
            settings.storage = f"sqlite:///{folder / STUDY_DB}"
        settings.study = settings.study or folder.name
        clock = Clock(folder, settings, 0.0, datetime.now().isoformat(timespec="seconds"))
        study = open_study(settings, create=True)
        clock.save()
        return _tune(folder, settings, study, clock, lock)
    except BaseException:
        lock.release()
        raise


def reopen(folder: Path, storage: str | None = None) -> Tune:
    """A stopped tune folder, locked, with what is left of its budget; its trials that lost their
    process (still RUNNING in the database) or were interrupted are failed and queued to run again with
    the same parameters, each continuing its run folder."""
    folder = folder.absolute()
    if not (folder / RECORD).is_file():
        raise LstmcliError(f"{folder} is not a tune folder (it has no {RECORD})")
    lock = _lock(folder)
    try:
        settings, spent, started = read_record(folder, storage)
        study = open_study(settings, create=False)
        for trial in _stopped(study, folder):
            _requeue(study, trial)
        return _tune(folder, settings, study, Clock(folder, settings, spent, started), lock)
    except BaseException:
        lock.release()
        raise


def _tune(folder: Path, settings: Settings, study, clock: Clock, lock: RunLock) -> Tune:
    """The Tune of a held folder: its base config and space read back as tune.json has them."""
    left = clock.left()
    return Tune(folder, settings, from_dict(settings.config, str(folder / RECORD)),
                parse_space(settings.space, str(folder / RECORD)), study, clock, lock,
                None if left is None else time.monotonic() + left)


def _stopped(study, folder: Path) -> list:
    """This folder's trials to run again: RUNNING ones (their process is gone: we hold the folder) and
    interrupted ones, unless a trial already re-runs them."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get("resumed_from") for t in trials}
    stopped = [t for t in trials if t.state == TrialState.RUNNING
               or (t.state == TrialState.FAIL and t.user_attrs.get("stopped"))]
    return [t for t in stopped if t.user_attrs.get("tune_dir") == str(folder) and t.number not in rerun]


def _requeue(study, trial) -> None:
    """Fail `trial` if it is still RUNNING, and queue a trial with its parameters that continues its
    run folder."""
    import optuna
    from optuna.trial import TrialState

    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
    attrs = {"resumed_from": trial.number, "resume_run": trial.user_attrs.get("run_dir"),
             "tune_dir": trial.user_attrs.get("tune_dir")}
    with warnings.catch_warnings():  # (user_attrs of enqueue_trial: experimental in some versions)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    log.info(f"trial {trial.number} stopped with its tune: queued to run again with the same parameters, "
             f"from where its run folder stopped")


def search(t: Tune) -> None:
    """Run trials until the budget or the trial count is reached (or the study is stopped); Ctrl-C
    stops at the next batch and ends in Interrupted with the command that resumes."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    callbacks = [trial_done(t)]
    if t.settings.trials is not None:
        callbacks.append(MaxTrialsCallback(t.settings.trials, states=done))
        finished = len(t.study.get_trials(deepcopy=False, states=done))
        if finished >= t.settings.trials:
            log.info(f"the study has {finished} finished trials already (--trials {t.settings.trials})")
            return
    left = t.clock.left()
    if left is not None and left <= 0:
        log.info("the budget is spent")
        return
    try:
        t.study.optimize(lambda trial: objective(t, trial), timeout=left, callbacks=callbacks,
                         catch=(TrialFailed,))
    except (Interrupted, KeyboardInterrupt):
        t.clock.save()
        raise Interrupted(f"tune interrupted; continue with: lstmcli tune --resume {t.folder}") from None
    except optuna.exceptions.StorageInternalError as exc:
        raise LstmcliError(f"the study database {mask_url(t.settings.storage)} failed: {exc}") from None
    t.clock.save()


def tune(settings: Settings, folder: Path, force: bool) -> dict:
    """Run a new tune in `folder` (see Settings); returns its summary (summary.json)."""
    return _run(start(settings, folder, force))


def resume(folder: Path, storage: str | None = None) -> dict:
    """Continue a stopped tune folder with what is left of its budget; returns its summary."""
    return _run(reopen(folder, storage))


def _run(t: Tune) -> dict:
    """Search, then write the results; the folder is let go whatever happens."""
    from lstmcli.tuning.results import finish

    try:
        search(t)
        summary = finish(t)
    finally:
        t.lock.release()
    if len(t.failing) >= FAILS_IN_A_ROW:
        raise LstmcliError(f"the last {len(t.failing)} trials failed, so the tune stopped (the last: "
                           f"{t.failing[-1]}); fix the search space or the base config")
    return summary
