"""The run configuration: one dataclass tree that is the single source of truth.

Values are resolved in this order: the defaults below, then `LSTMCLI_DATA_DIR` for `data_dir`, then a
TOML file (`[data]`, `[model]`, `[train]` tables), then CLI flags, whose names are the field names
(`batch_size` is `--batch-size`). Field names are unique across sections so that a flag names exactly
one field. Unknown keys and wrong types raise ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lstmcli import configs
from lstmcli.errors import ConfigError
from lstmcli.models.cells import CELLS
from lstmcli.models.spec import BAGS, IMPLS, PACKS, POOLINGS, PRECISIONS, model_problem

log = logging.getLogger(__name__)


def _choices(name: str, values: list[str]) -> type[Enum]:
    """A str Enum of a model table's keys (models/cells.py, models/spec.py): the flags and TOML keys
    offer exactly what the models can build."""
    return Enum(name, [(v, v) for v in values], type=str)


Cell = _choices("Cell", list(CELLS))
Impl = _choices("Impl", ["auto", *IMPLS])  # auto: runtime/plan.choose picks one for the device
Pooling = _choices("Pooling", list(POOLINGS))
NgramBag = _choices("NgramBag", list(BAGS))
Pack = _choices("Pack", list(PACKS))
Precision = _choices("Precision", ["auto", *PRECISIONS])


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


class Scheduler(str, Enum):
    constant = "constant"
    cosine = "cosine"
    plateau = "plateau"
    slanted_triangular = "slanted_triangular"
    one_cycle = "one_cycle"


class Adversarial(str, Enum):
    none = "none"
    at = "at"
    vat = "vat"


class Truncate(str, Enum):
    head = "head"
    head_tail = "head_tail"


class ReportTo(str, Enum):
    none = "none"
    tensorboard = "tensorboard"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    dataset: str = _f("imdb", "a built-in dataset (lstmcli datasets lists them) or a path to a CSV/TSV/JSONL "
                              "file or a folder of them")
    data_dir: str = _f("data", "dataset and token cache folder (env LSTMCLI_DATA_DIR)")
    text_column: str = _f("text", "user data: text column(s), comma-separated to join; digits = headerless "
                                  "CSV/TSV")
    label_column: str = _f("label", "user data: label column (a name, or an index for headerless files)")
    multi_label: bool = _f(False, "several labels per text: one sigmoid per label with binary "
                                  "cross-entropy, and every label over its threshold predicted; turned on "
                                  "by itself (said in one line) when a training row holds several labels")
    label_separator: str = _f("|", "user data: what separates a row's labels in its label column (a JSONL "
                                   "label may be a list instead); '' = a label is the whole cell")
    val_fraction: float = _f(0.05, "share of the training split held out for validation")
    test_fraction: float = _f(0.1, "share held out for test when the data has no test split")
    split_seed: int = _f(0, "seed of the validation/test carving and of the example caps")
    max_train_examples: int = _f(0, "cap on training examples, a class-balanced seeded sample (0 = all)")
    max_eval_examples: int = _f(0, "cap on validation and test examples, sampled the same way (0 = all)")
    vocab_max_size: int = _f(30000, "largest vocabulary, <pad> and <unk> included (0 = no limit)")
    vocab_min_freq: int = _f(1, "least count for a token to enter the vocabulary")
    max_length: int = _f(2048, "truncate texts to this many tokens (0 = no limit: one huge text then "
                               "costs memory in proportion to its length)")
    truncate: Truncate = _f(Truncate.head, "what max_length keeps: the head, or head_tail (first and last "
                                           "halves)")


@dataclass
class ModelConfig:
    cell: Cell = _f(Cell.lstm, "recurrent cell: " + "; ".join(f"{c.name}: {c.about}" for c in CELLS.values()))
    impl: Impl = _f(Impl.auto, "; ".join(f"{i.name}: {i.about}" for i in IMPLS.values()) + "; auto: scratch "
                    f"for {', '.join(c for c in CELLS if CELLS[c].auto_scratch)} in fp32 on a CPU where its "
                    f"C++ kernels build (faster there), else builtin")
    peephole: bool = _f(False, "peephole connections (Gers & Schmidhuber 2000); cell "
                        f"{', '.join(c for c in CELLS if CELLS[c].peephole)} with impl "
                        f"{', '.join(i for i in IMPLS if IMPLS[i].peephole)} (or auto) only")
    embedding_dim: int = _f(128, "embedding size")
    hidden_size: int = _f(128, "recurrent state size per direction")
    num_layers: int = _f(1, "stacked recurrent layers")
    bidirectional: bool = _f(False, "add a backward direction")
    dropout: float = _f(0.0, "dropout between layers and before the output layer")
    embedding_dropout: float = _f(0.0, "dropout on the word embeddings")
    recurrent_dropout: float = _f(0.0, "DropConnect on the hidden-to-hidden weights (AWD-LSTM's weight "
                                       "drop): one mask per batch, the same at every step")
    pooling: Pooling = _f(Pooling.last, "how encoder outputs become one vector: last state, mean or max")
    ngram_buckets: int = _f(0, "add a bag of words and hashed word bigrams beside the encoder, with this "
                               "many bigram buckets (0 = none)")
    ngram_bag: NgramBag = _f(NgramBag.fasttext, "the bag: " + "; ".join(f"{b.name}: {b.about}"
                                                                      for b in BAGS.values()))
    ngram_dim: int = _f(64, "size of the fasttext bag's vectors")
    pack: Pack = _f(Pack.auto, "PackedSequence: auto packs on CUDA only; padded runs are exact too")
    precision: Precision = _f(Precision.fp32, "bf16: matmuls and recurrent kernels run in bfloat16 under "
                              "autocast, weights, optimizer and loss stay float32 (impl "
                              f"{', '.join(i for i in IMPLS if 'bf16' in IMPLS[i].precisions)} only; needs "
                              "CUDA or a CPU with AVX-512-BF16/AMX to pay); auto: bf16 where the device runs "
                              "it natively, else fp32")


@dataclass
class TrainConfig:
    epochs: int = _f(5, "passes over the training split")
    batch_size: int = _f(64, "examples per batch")
    lr: float = _f(1e-3, "learning rate")
    optimizer: Optimizer = _f(Optimizer.adam, "optimizer")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.0, "L2 weight decay")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    scheduler: Scheduler = _f(Scheduler.constant, "learning rate schedule: constant, cosine (to 0 by the "
                                                  "last step), plateau (multiply by plateau_factor when "
                                                  "val accuracy stalls), slanted_triangular (ULMFiT: up "
                                                  "over the first 10% of steps, then down to lr/32) or "
                                                  "one_cycle (up over 30%, then cosine to lr/1e4)")
    warmup_steps: int = _f(0, "linear warm-up steps for constant and cosine")
    plateau_factor: float = _f(0.5, "plateau: factor applied to the learning rate")
    plateau_patience: int = _f(1, "plateau: epochs without improvement before lowering the rate")
    layer_lr_decay: float = _f(1.0, "discriminative learning rates (ULMFiT): the head trains at lr, each "
                                    "layer group below at lr x this^depth (encoder layers top down, then "
                                    "the embedding; ULMFiT uses 0.38 = 1/2.6)")
    gradual_unfreezing: bool = _f(False, "ULMFiT's gradual unfreezing: epoch 1 trains the head only, each "
                                         "later epoch one more layer group from the top down")
    adversarial: Adversarial = _f(Adversarial.none, "adversarial training on the embedded text (Miyato et "
                                                    "al. 2017): none, at (adversarial) or vat (virtual "
                                                    "adversarial, label-free)")
    adversarial_epsilon: float = _f(5.0, "adversarial: perturbation norm per text, in units of the RMS "
                                         "of the batch's embedded tokens")
    adversarial_weight: float = _f(1.0, "adversarial: weight of the adversarial loss term")
    patience: int = _f(0, "early stopping: stop after this many epochs without a better val accuracy "
                          "(0 = off)")
    log_every: int = _f(0, "log a progress line to stderr every N steps (0 = only per epoch)")
    embeddings: str = _f("", "pretrained vectors (GloVe / word2vec text) for the embedding rows of known "
                             "tokens")
    freeze_embeddings: bool = _f(False, "keep the embedding layer fixed during training")
    init_from: str = _f("", "start the embedding and recurrent encoder from a pretrained folder "
                            "(lstmcli pretrain); its vocabulary is used, and cell and sizes must match")
    calibrate: bool = _f(True, "after training, fit one weight per branch of best/ (the encoder's, an "
                               "n-gram bag's) on the validation split by log-loss: with a bag it sets "
                               "how much each counts; alone it is temperature scaling, which keeps every "
                               "prediction and makes the probabilities honest")
    class_weights: str = _f("none", "weights of the labels in the loss: none, balanced (n / (classes x "
                                    "count)), or label:w,label:w (others weigh 1)")
    report_to: ReportTo = _f(ReportTo.none, "also write TensorBoard event files under RUN_DIR/tensorboard "
                                            "(needs pip install 'lstmcli[tensorboard]')")
    seed: int = _f(0, "seed of weights, dropout and batch order")
    device: Device = _f(Device.auto, "auto picks cuda, then mps, then cpu")
    threads: int = _f(0, "CPU threads per process (0: torch's default; under torchrun, the cores divided "
                         "between the node's processes)")
    out: str = _f("", "run folder (default runs/<dataset>-<cell>-<timestamp>)")


@dataclass
class PretrainConfig:
    unlabelled: str = _f("", "lstmcli pretrain: text to learn from, a text file (a document per line), a "
                             "folder of .txt files (a document each), or a CSV/TSV/JSONL file's "
                             "text_column; '' = the training split of dataset (never its val or test)")
    lm_val_fraction: float = _f(0.02, "lstmcli pretrain: share of the documents held out to measure "
                                      "perplexity on")
    lm_cutoffs: str = _f("200,2000,10000", "lstmcli pretrain: the adaptive softmax's cluster edges, "
                                           "frequent words first (comma-separated; edges at or past the "
                                           "vocabulary size are dropped)")
    lm_div_value: float = _f(4.0, "lstmcli pretrain: each rarer cluster's vectors are this many times "
                                  "smaller")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                             "pretrain": PretrainConfig}
# Tables a config file may hold that are not part of a run's config: accepted (each must be a table) and
# left to the command that reads them; `[tune]` is `lstmcli tune`'s search space (lstmcli/tuning/space.py)
OTHER_TABLES = ("tune",)


class FieldInfo(typing.NamedTuple):
    section: str
    type: type
    default: Any
    help: str


@functools.cache
def field_index() -> dict[str, FieldInfo]:
    """Every leaf field by its (unique) name."""
    index: dict[str, FieldInfo] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            index[f.name] = FieldInfo(section, hints[f.name], f.default, f.metadata["help"])
    return index


def _coerce(key: str, value: Any, typ: type) -> Any:
    """`value` as `typ`, or ConfigError naming `key`. Ints are accepted for floats, never bools."""
    if isinstance(typ, type) and issubclass(typ, Enum):
        try:
            return typ(value)
        except ValueError:
            choices = ", ".join(m.value for m in typ)
            raise ConfigError(f"config key '{key}': {value!r} is not one of {choices}") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[typ]
    if not ok:
        got = f"{type(value).__name__} {value!r}"
        raise ConfigError(f"config key '{key}': expected {typ.__name__}, got {got}")
    if typ is float and not math.isfinite(value):  # NaN passes every comparison, so no range check sees it
        raise ConfigError(f"config key '{key}': expected a finite number, got {value}")
    if typ is int and not INT64_MIN <= value <= INT64_MAX:  # torch and TOML stop at 64 bits
        raise ConfigError(f"config key '{key}': {value} is outside the 64-bit integer range")
    return float(value) if typ is float else value


def check_value(key: str, name: str, value: Any) -> Any:
    """`value` as the type of the field `name`, within its BOUNDS, or ConfigError naming `key` (a value
    given somewhere else than the field's own place, e.g. 'tune.lr')."""
    value = _coerce(key, value, field_index()[name].type)
    if name in BOUNDS:
        low, high, inclusive = BOUNDS[name]
        if value < low or value > high or (value == high and not inclusive):
            upper = "" if high == math.inf else f" and {'<=' if inclusive else '<'} {high}"
            raise ConfigError(f"config key '{key}' must be >= {low}{upper}, got {value}")
    return value


def parse_class_weights(spec: str) -> str | dict[str, float]:
    """"none", "balanced", or {label: weight}; ValueError says what is wrong."""
    if spec in ("none", "balanced"):
        return spec
    weights: dict[str, float] = {}
    for item in spec.split(","):
        label, sep, value = item.strip().rpartition(":")
        if not sep or not label:
            raise ValueError(f"expected 'none', 'balanced' or 'label:weight,label:weight', got {spec!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weight {value!r} of label {label!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of label {label!r} must be a finite number >= 0, got {value}")
        weights[label] = weight
    if not any(weights.values()):
        raise ValueError("at least one weight must be above 0")
    return weights


def lm_cutoffs(spec: str) -> list[int]:
    """The adaptive softmax's cluster edges from "500,4000,20000"; ValueError says what is wrong."""
    try:
        edges = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"expected increasing whole numbers separated by commas, got {spec!r}") from None
    if not edges or edges[0] < 1 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"expected increasing whole numbers above 0, got {spec!r}")
    return edges


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_THREADS = 1024  # far above any CPU's cores; a typo such as 100000 would start that many threads

# (low, high, inclusive high) for numeric fields that have bounds
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "val_fraction": (0, 1, False), "test_fraction": (0, 1, False), "dropout": (0, 1, False),
    "embedding_dropout": (0, 1, False), "recurrent_dropout": (0, 1, False),
    "max_train_examples": (0, math.inf, True), "max_eval_examples": (0, math.inf, True),
    "vocab_max_size": (0, math.inf, True), "vocab_min_freq": (1, math.inf, True),
    "max_length": (0, math.inf, True), "embedding_dim": (1, math.inf, True),
    "hidden_size": (1, math.inf, True), "ngram_buckets": (0, math.inf, True),
    "ngram_dim": (1, math.inf, True),
    "num_layers": (1, 1024, True), "epochs": (1, math.inf, True), "batch_size": (1, 2**31 - 1, True),
    "lr": (0, math.inf, True), "momentum": (0, 1, True), "weight_decay": (0, math.inf, True),
    "grad_clip": (0, math.inf, True), "warmup_steps": (0, math.inf, True), "plateau_factor": (0, 1, False),
    "layer_lr_decay": (0, 1, True), "adversarial_epsilon": (0, math.inf, True),
    "adversarial_weight": (0, math.inf, True),
    "plateau_patience": (0, math.inf, True), "patience": (0, math.inf, True),
    "log_every": (0, math.inf, True), "threads": (0, MAX_THREADS, True),
    "seed": (0, INT64_MAX, True), "split_seed": (0, INT64_MAX, True),  # torch.manual_seed's range
    "lm_val_fraction": (0, 1, False), "lm_div_value": (1, math.inf, True),
}


def validate(cfg: Config, source: str) -> Config:
    """Range and cross-field checks; the message names the key."""
    index = field_index()
    for name, (low, high, inclusive) in BOUNDS.items():
        value = getattr(getattr(cfg, index[name].section), name)
        if value < low or value > high or (value == high and not inclusive):
            upper = "" if high == math.inf else f" and {'<=' if inclusive else '<'} {high}"
            key = f"{index[name].section}.{name}"
            raise ConfigError(f"{source}: config key '{key}' must be >= {low}{upper}, got {value}")
    if any(c in cfg.data.label_separator for c in "\t\n\r"):
        raise ConfigError(f"{source}: config key 'data.label_separator' cannot hold a tab or line break")
    if cfg.train.warmup_steps and cfg.train.scheduler not in (Scheduler.constant, Scheduler.cosine):
        raise ConfigError(f"{source}: config key 'train.warmup_steps' applies to the constant and cosine "
                          "schedules")
    if cfg.train.layer_lr_decay <= 0:
        raise ConfigError(f"{source}: config key 'train.layer_lr_decay' must be > 0 and <= 1, got "
                          f"{cfg.train.layer_lr_decay}")
    if cfg.train.init_from and cfg.train.embeddings:
        raise ConfigError(f"{source}: config keys 'train.init_from' and 'train.embeddings' both set the "
                          "embedding; give one")
    if cfg.train.gradual_unfreezing and cfg.train.scheduler is Scheduler.plateau:
        raise ConfigError(f"{source}: config key 'train.gradual_unfreezing' needs a per-batch schedule "
                          "(constant, cosine, slanted_triangular or one_cycle), not plateau")
    try:
        parse_class_weights(cfg.train.class_weights)
    except ValueError as exc:
        raise ConfigError(f"{source}: config key 'train.class_weights': {exc}") from None
    try:
        lm_cutoffs(cfg.pretrain.lm_cutoffs)
    except ValueError as exc:
        raise ConfigError(f"{source}: config key 'pretrain.lm_cutoffs': {exc}") from None
    m = cfg.model
    problem = model_problem(m.cell.value, m.impl.value, m.peephole, m.precision.value)
    if problem:
        raise ConfigError(f"{source}: config key 'model.{problem[0]}': {problem[1]}")
    return cfg


# Keys renamed since an earlier version, old -> new: the old name still works, with a one-line
# deprecation warning in a config file, a flag or an API call, silently in a checkpoint's config.json.
RENAMED = {"model.encoder": "model.cell"}
RENAMED_TO = {old.split(".")[1]: new.split(".")[1] for old, new in RENAMED.items()}  # by field name


def _renamed(section: str, table: dict[str, Any], source: str, warn: bool) -> dict[str, Any]:
    """`table` with its keys' old names (RENAMED) replaced by the new ones."""
    out = dict(table)
    for old, new in RENAMED.items():
        old_section, old_key = old.split(".")
        if old_section != section or old_key not in out:
            continue
        new_key = new.split(".")[1]
        if new_key in out:
            raise ConfigError(f"{source}: config keys '{old}' and '{new}' are one key; give '{new}' only")
        if warn:
            log.warning(f"{source}: config key '{old}' is now '{new}'; the old name will be removed")
        out = {new_key if k == old_key else k: v for k, v in out.items()}
    return out


def apply(cfg: Config, values: dict[str, Any], source: str, warn_renamed: bool = True) -> Config:
    """A copy of `cfg` with `values` set; `values` is nested ({section: {key: v}}) as in TOML."""
    index = field_index()
    updates: dict[str, dict[str, Any]] = {}
    for section, table in values.items():
        if section in OTHER_TABLES:
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: '{section}' must be a table")
            continue
        if section not in SECTIONS:
            expected = ", ".join([*SECTIONS, *OTHER_TABLES])
            raise ConfigError(f"{source}: unknown section '{section}' (expected one of {expected})")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: '{section}' must be a table")
        for key, value in _renamed(section, table, source, warn_renamed).items():
            name = f"{section}.{key}"
            if key not in index or index[key].section != section:
                raise ConfigError(f"{source}: unknown config key '{name}'")
            updates.setdefault(section, {})[key] = _coerce(name, value, index[key].type)
    return validate(dataclasses.replace(cfg, **{
        section: dataclasses.replace(getattr(cfg, section), **upd) for section, upd in updates.items()
    }), source)


def renamed_value(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """The value of a setting given by its old name, its new one, or neither (None): both at once is a
    ConfigError; the old name alone works, with a one-line deprecation warning."""
    if old_value is not None and new_value is not None:
        raise ConfigError(f"'{old}' and '{new}' are one setting; give '{new}' only")
    if old_value is not None:
        log.warning(f"'{old}' is now '{new}' (--{new.replace('_', '-')}); the old name will be removed")
        return old_value
    return new_value


def apply_flags(cfg: Config, flags: dict[str, Any]) -> Config:
    """Apply flat CLI values ({field_name: value}); None means the flag was not given."""
    index = field_index()
    flags = dict(flags)
    for old, new in RENAMED_TO.items():  # an old name given becomes the new one
        if old in flags:
            flags[new] = renamed_value(old, new, flags.pop(old), flags.get(new))
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flags.items():
        if value is None:
            continue
        if key not in index:
            raise ConfigError(f"unknown option '{key}'")
        nested.setdefault(index[key].section, {})[key] = value.value if isinstance(value, Enum) else value
    return apply(cfg, nested, "command line")


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables: `path` is a file, or the name of a shipped config (lstmcli/configs)."""
    path = configs.find(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (shipped configs, by name: "
                          f"{', '.join(configs.names())})") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder; give a TOML file or a shipped config's name") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def env_data_dir() -> str | None:
    """$LSTMCLI_DATA_DIR, the dataset cache folder for every command, when set."""
    return os.environ.get("LSTMCLI_DATA_DIR") or None


def resolve(config_file: str | Path | None = None, flags: dict[str, Any] | None = None) -> Config:
    """Defaults -> LSTMCLI_DATA_DIR -> TOML file -> flags."""
    cfg = Config()
    if env_data_dir():
        cfg.data.data_dir = env_data_dir()
    if config_file is not None:
        cfg = apply(cfg, load_toml(config_file), str(config_file))
    return apply_flags(cfg, flags or {})


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain JSON-ready dict (enums as their string values)."""
    def plain(v: Any) -> Any:
        return v.value if isinstance(v, Enum) else v
    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()} for s in SECTIONS}


def from_dict(data: Any, source: str) -> Config:
    """Config from a saved dict (a checkpoint's config.json), checked like a TOML file."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    return apply(Config(), data, source, warn_renamed=False)


__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "PretrainConfig", "resolve", "apply",
           "apply_flags",
           "to_dict", "from_dict", "field_index", "Cell", "Impl", "Pooling", "Pack", "Optimizer",
           "Scheduler", "Truncate", "Device", "ReportTo"]
