"""A tune's settings, and tune.json, the tune folder's record of them that `--resume` reads back; the
parsers of the command's own values (--budget's durations, --storage's URLs) and the default folder."""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lstmcli import __version__
from lstmcli.config import RENAMED_TO, Config, load_toml, resolve, to_dict
from lstmcli.data.registry import REGISTRY
from lstmcli.errors import LstmcliError
from lstmcli.fsutil import write_json
from lstmcli.tuning.space import default_space, parse_space, without_fixed

log = logging.getLogger(__name__)

RECORD = "tune.json"
DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smh]?)")
SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """`90s`, `20m`, `1.5h` or a plain number of seconds, as seconds above 0; LstmcliError otherwise."""
    match = DURATION.fullmatch(text.strip().lower())
    if match is None:
        sign = " (it must be above 0)" if text.strip().startswith("-") else ""
        raise LstmcliError(f"--budget {text!r} is not a duration{sign}; give e.g. 90s, 20m, 1.5h or a "
                           "number of seconds")
    seconds = float(match[1]) * SECONDS_PER[match[2]]
    if not (math.isfinite(seconds) and seconds > 0):
        raise LstmcliError(f"--budget {text!r}: a budget must be above 0")
    return seconds


def mask_url(url: str) -> str:
    """A database URL with its password (if any) shown as ***, as tune.json and messages show it;
    LstmcliError for something that is not a database URL."""
    from sqlalchemy.engine import make_url  # (Optuna's database layer)
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise LstmcliError(f"--storage {url!r} is not a database URL; give e.g. sqlite:///tune.db or "
                           "postgresql://user@host/dbname") from None


def default_folder(cfg: Config) -> Path:
    """runs/tune-<dataset>-<timestamp>, the dataset named by its registry name or its file's stem."""
    name = cfg.data.dataset if cfg.data.dataset in REGISTRY else Path(cfg.data.dataset).stem
    return Path("runs") / f"tune-{name}-{datetime.now():%Y%m%d-%H%M%S}"


@dataclass
class Settings:
    """What a tune runs with; tune.json keeps it (the storage URL masked) for --resume."""

    config: dict  # the base config every trial starts from (config.to_dict, out left empty)
    space: dict  # the search space as a [tune] table would give it (space.Param.as_toml)
    budget: float | None  # seconds of wall-clock time for the search, over all of the folder's runs
    trials: int | None  # finished (complete or pruned) trials of the study at which to stop
    storage: str  # the study's database URL
    study: str  # the study's name in it
    sampler_seed: int
    config_file: str | None = None
    fixed: list[str] = field(default_factory=list)  # fields a flag took out of the space


def write_record(folder: Path, settings: Settings, seconds_spent: float, started: str) -> None:
    """tune.json: the settings (password masked), the seconds the search has taken so far, its start."""
    record = {"lstmcli": __version__, "tune_dir": str(folder), **asdict(settings),
              "storage": mask_url(settings.storage), "seconds_spent": round(seconds_spent, 3),
              "started": started}
    write_json(folder / RECORD, record)


def read_record(folder: Path, storage: str | None) -> tuple[Settings, float, str]:
    """(settings, seconds spent, start time) of a tune folder. `storage` gives the URL again where
    tune.json has it masked (a password is never written down); it must be the same URL."""
    path = folder / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        names = set(Settings.__dataclass_fields__)
        settings = Settings(**{k: v for k, v in record.items() if k in names})
        spent, started = float(record["seconds_spent"]), str(record["started"])
    except FileNotFoundError:
        raise LstmcliError(f"{folder} is not a tune folder (it has no {RECORD})") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise LstmcliError(f"{path} is not a record lstmcli tune wrote ({exc})") from None
    if storage is not None:
        if mask_url(storage) != settings.storage:
            raise LstmcliError(f"--storage {mask_url(storage)} is not this tune's database "
                               f"({settings.storage})")
        settings.storage = storage
    elif "***" in settings.storage:
        raise LstmcliError(f"this tune's database URL has a password, which {RECORD} does not keep; give "
                           f"it again: --resume {folder} --storage URL")
    return settings, spent, started


def new_settings(config_file: str | None, flags: dict[str, Any], budget: str | None, trials: int | None,
                 storage: str | None, study: str | None, sampler_seed: int | None) -> tuple[Settings, Config]:
    """The settings of a new tune, and its base config: defaults -> the config file (its [tune] table
    is the space, else DEFAULT_SPACE) -> flags; a field a flag gives is fixed for every trial and left
    out of the space (said in one line). `flags["out"]` is the tune folder, not part of the base."""
    flags = {k: v for k, v in flags.items() if v is not None and k != "out"}
    fixed = {RENAMED_TO.get(k, k) for k in flags}
    base = resolve(config_file, flags)
    table = load_toml(config_file).get("tune") if config_file is not None else None
    space = parse_space(table, str(config_file)) if table is not None else default_space(base)
    space, dropped = without_fixed(space, fixed)
    for name in dropped:
        log.info(f"--{name.replace('_', '-')} fixes {name} for every trial: left out of the search space")
    if not space:
        raise LstmcliError("nothing left to search: flags fix every field of the search space")
    if budget is None and trials is None:
        raise LstmcliError("a tune needs to know when to stop: give --budget (e.g. 20m), --trials N, or "
                           "both")
    if storage is not None:
        mask_url(storage)  # (a URL that is no URL fails here, before any folder is made)
    record = to_dict(base)
    record["train"]["out"] = ""
    return Settings(config=record, space={n: p.as_toml() for n, p in space.items()},
                    budget=None if budget is None else parse_duration(budget), trials=trials,
                    storage=storage or "", study=study or "",
                    sampler_seed=base.train.seed if sampler_seed is None else sampler_seed,
                    config_file=None if config_file is None else str(config_file),
                    fixed=sorted(fixed)), base
