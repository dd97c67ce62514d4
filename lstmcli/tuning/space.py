"""`lstmcli tune`'s search space: which config fields the trials vary, over which values.

A config file's `[tune]` table gives it, one key per config field (by its field name, as flags name
them): a list is a set of choices; a table `{low = .., high = .., log = true, step = ..}` a range of a
number field. Every value is checked against the field's type and its BOUNDS in config.py, and errors
name the key (`config key 'tune.lr': ...`). Without `[tune]` the space is DEFAULT_SPACE, worked out from
the base config; docs/tuning.md shows that table (tests/test_tune_space.py keeps the two in step).

Nothing here imports Optuna: `Param.suggest` takes any object with Optuna's `suggest_*` methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lstmcli.config import Config, apply, check_value, field_index
from lstmcli.errors import ConfigError

RANGE_KEYS = ("low", "high", "log", "step")

# Fields a trial may not vary, and why: the trials are compared on one validation split, so nothing that
# changes the data they are scored on may differ between them; the others do not change the model.
NOT_TUNABLE = {
    **dict.fromkeys(("dataset", "data_dir", "text_column", "label_column", "label_separator",
                     "multi_label", "val_fraction", "test_fraction", "split_seed", "max_eval_examples"),
                    "the trials are compared on one validation split; give it in [data] or as a flag"),
    **dict.fromkeys(("device", "threads", "log_every", "report_to"),
                    "it does not change the model; give it in [train] or as a flag"),
    "out": "each trial's run folder is tune's (TUNE_DIR/trials/NNNN)",
}


@dataclass(frozen=True)
class Param:
    """One searched field: `choices`, or a range `low`..`high` (log scale, or in steps of `step`)."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> Any:
        """This field's value for an Optuna trial (a value already fixed in it, e.g. enqueued, is kept)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if field_index()[self.name].type is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def as_toml(self) -> list | dict:
        """The value a `[tune]` table gives for this field (tune.json keeps the space this way)."""
        if self.choices is not None:
            return list(self.choices)
        table: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        return table if self.step is None else {**table, "step": self.step}

    def describe(self) -> str:
        """E.g. `0.0003 to 0.01, log scale` or `32, 64, 128`."""
        if self.choices is not None:
            return ", ".join(_text(c) for c in self.choices)
        how = ", log scale" if self.log else f", steps of {_text(self.step)}" if self.step else ""
        return f"{_text(self.low)} to {_text(self.high)}{how}"


def _text(value: Any) -> str:
    """A value as the docs and messages show it: `0.0003`, `true`."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_space(table: Any, source: str) -> dict[str, Param]:
    """A `[tune]` table as {field: Param}; ConfigError names the first bad key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: 'tune' must be a table")
    if not table:
        raise ConfigError(f"{source}: [tune] names no field; give at least one (e.g. lr = {{low = 1e-4, "
                          "high = 1e-2, log = true}}), or leave it out for the default space")
    return {name: _param(name, value, source) for name, value in table.items()}


def _param(name: str, value: Any, source: str) -> Param:
    """The Param of one `[tune]` key: a known, tunable field, and a list or a range table."""
    key = f"tune.{name}"
    if name not in field_index():
        raise ConfigError(f"{source}: unknown config key '{key}' (a [tune] key is a config field's name, "
                          "e.g. lr, hidden_size, ngram_buckets)")
    if name in NOT_TUNABLE:
        raise ConfigError(f"{source}: config key '{key}' cannot be tuned: {NOT_TUNABLE[name]}")
    if isinstance(value, list):
        return Param(name, choices=_choices(key, name, value, source))
    if isinstance(value, dict):
        return _range(key, name, value, source)
    raise ConfigError(f"{source}: config key '{key}': expected a list of choices or a table "
                      f"{{low, high, log, step}}, got {type(value).__name__} {value!r}")


def _checked(key: str, name: str, value: Any, source: str) -> Any:
    """`value` as field `name` takes it (an enum as its value), or ConfigError naming `key`."""
    try:
        value = check_value(key, name, value)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return value.value if isinstance(value, Enum) else value


def _choices(key: str, name: str, values: list, source: str) -> tuple:
    """The checked choices of a list value: at least one, each of the field's type, none twice."""
    if not values:
        raise ConfigError(f"{source}: config key '{key}': the list of choices is empty")
    choices = tuple(_checked(key, name, v, source) for v in values)
    repeated = [c for i, c in enumerate(choices) if c in choices[:i]]
    if repeated:
        raise ConfigError(f"{source}: config key '{key}': {repeated[0]!r} is listed twice")
    return choices


def _range(key: str, name: str, table: dict, source: str) -> Param:
    """A `{low, high, log, step}` value of a number field, checked the way Optuna will sample it."""
    typ = field_index()[name].type
    if typ not in (int, float):
        raise ConfigError(f"{source}: config key '{key}': a range needs a number field; give a list of "
                          "choices")
    unknown = [k for k in table if k not in RANGE_KEYS]
    if unknown:
        raise ConfigError(f"{source}: config key '{key}.{unknown[0]}' is not one of {', '.join(RANGE_KEYS)}")
    for needed in ("low", "high"):
        if needed not in table:
            raise ConfigError(f"{source}: config key '{key}': a range needs '{needed}'")
    low, high = (_checked(f"{key}.{k}", name, table[k], source) for k in ("low", "high"))
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: config key '{key}.log': expected true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{source}: config key '{key}': low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{source}: config key '{key}': a log scale needs low > 0, got {low}")
    step = None if "step" not in table else _step(key, typ, table["step"], low, high, log, source)
    return Param(name, low=low, high=high, log=log, step=step)


def _step(key: str, typ: type, step: Any, low: float, high: float, log: bool, source: str) -> float | int:
    """A range's step: a positive number of the field's type that divides high - low; Optuna takes no
    step on a log scale (but 1 for an int field)."""
    ok = isinstance(step, typ if typ is int else (int, float)) and not isinstance(step, bool)
    if not ok or not math.isfinite(step) or step <= 0:
        kind = "an int" if typ is int else "a number"
        raise ConfigError(f"{source}: config key '{key}.step': expected {kind} above 0, got {step!r}")
    if log and (typ is float or step != 1):
        raise ConfigError(f"{source}: config key '{key}': a log scale takes no step")
    ratio = (high - low) / step
    if abs(ratio - round(ratio)) > 1e-9 * max(1.0, ratio):
        raise ConfigError(f"{source}: config key '{key}': high - low ({high - low:g}) is not a multiple "
                          f"of step ({step:g})")
    return typ(step)


@dataclass(frozen=True)
class Rule:
    """A row of DEFAULT_SPACE: the field, its values in words, and the Param for a base config."""

    name: str
    values: str
    param: Callable[[Config], Param]


def _around(name: str, value: int) -> Param:
    """Half, the same and twice `value`: its cost stays within a few times the base's."""
    return Param(name, choices=tuple(sorted({max(1, value // 2), value, 2 * value})))


def _max_lengths(base: Config) -> Param:
    """Shorter cuts than the base's only: a longer one costs more per trial and may not fit."""
    limit = base.data.max_length
    kept = [n for n in (128, 256, 512) if not limit or n < limit]
    return Param("max_length", choices=tuple(kept + ([limit] if 0 < limit <= 512 else [])))


def _bag(base: Config) -> Param:
    """The n-gram bag off, or on at the base's size."""
    # 2^18 buckets of the default 64-dim bag is as many weights as the shipped imdb_ngram's 2^20 x 16:
    # its dense Adam step stays a small share of an epoch on a CPU
    return Param("ngram_buckets", choices=(0, base.model.ngram_buckets or 2**18))


# The space a tune searches when its config has no [tune] table (fields fixed by a flag left out).
DEFAULT_SPACE = (
    Rule("lr", "0.0003 to 0.01, log scale", lambda b: Param("lr", low=3e-4, high=1e-2, log=True)),
    Rule("hidden_size", "half, the same, twice the base's", lambda b: _around("hidden_size",
                                                                              b.model.hidden_size)),
    Rule("embedding_dim", "half, the same, twice the base's", lambda b: _around("embedding_dim",
                                                                                b.model.embedding_dim)),
    Rule("dropout", "0 to 0.5", lambda b: Param("dropout", low=0.0, high=0.5)),
    Rule("embedding_dropout", "0 to 0.5", lambda b: Param("embedding_dropout", low=0.0, high=0.5)),
    Rule("max_length", "those of 128, 256, 512 below the base's, and the base's own up to 512", _max_lengths),
    Rule("ngram_buckets", "0 (no bag) or the base's buckets (2^18 when it has no bag)", _bag),
    Rule("epochs", "2 to the base's epochs, at least 4",
         lambda b: Param("epochs", low=2, high=max(b.train.epochs, 4))),
)


def default_space(base: Config) -> dict[str, Param]:
    """DEFAULT_SPACE worked out for the base config `base`."""
    return {rule.name: rule.param(base) for rule in DEFAULT_SPACE}


def default_space_table(example: Config, example_name: str) -> str:
    """DEFAULT_SPACE as the Markdown table docs/tuning.md shows, with its values for `example`."""
    space = default_space(example)
    rows = [f"| field | values | for `{example_name}` |", "|---|---|---|"]
    rows += [f"| `{r.name}` | {r.values} | {space[r.name].describe()} |" for r in DEFAULT_SPACE]
    return "\n".join(rows)


def without_fixed(space: dict[str, Param], fixed: set[str]) -> tuple[dict[str, Param], list[str]]:
    """`space` without the fields a flag fixes, and the names it left out."""
    return {n: p for n, p in space.items() if n not in fixed}, sorted(n for n in space if n in fixed)


def trial_config(base: Config, params: dict[str, Any], out: Path, source: str) -> Config:
    """`base` with a trial's sampled values and its run folder; ConfigError says what the combination
    breaks (e.g. a cell with an impl it has not)."""
    index = field_index()
    nested: dict[str, dict[str, Any]] = {"train": {"out": str(out)}}
    for name, value in params.items():
        nested.setdefault(index[name].section, {})[name] = value
    return apply(base, nested, source)
