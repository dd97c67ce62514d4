"""A training run's record (Run) and the two ways one begins: start a new run, or reopen a stopped one
exactly where it stopped. training.py takes a Run from here through its epochs."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint, distributed, footprint, launch, tensorboard
from .batching import Cut
from .build import build_model, resolve_impl
from .class_weights import resolve as resolve_class_weights
from .config import Config, Precision, ReportTo, from_dict, to_dict
from .distributed import Dist
from .embeddings import init_embeddings
from .errors import CheckpointError, LstmcliError
from .fsutil import recover_dir, write_json
from .ngram_stats import init_nb_bag
from .prepare import Prepared
from .rundir import RunLock, check_out, claim, default_out, environment
from .schedule import make_optimizer, make_scheduler
from .train_state import TrainState, load_state

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a run carries from epoch to epoch."""

    cfg: Config
    ck_cfg: Config  # what checkpoints record: cfg with the precision resolved for this device
    run_dir: Path
    data: Prepared
    dist: Dist
    device: torch.device
    model: torch.nn.Module  # the TextClassifier itself: evaluated and saved
    trained: torch.nn.Module  # what the training steps run: model, or DDP around it
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    metrics: dict
    class_weight: torch.Tensor | None = None  # (C,) the loss's weight of each label
    tb: tensorboard.TensorBoard | None = None  # rank 0's event writer, when asked for
    lock: RunLock | None = None  # rank 0's hold on run_dir while it trains


@dataclass
class _Place:
    """Where a run trains and how: its launch, device, precision and impl, each with why."""

    dist: Dist
    device: torch.device
    precision: Precision
    ck_cfg: Config
    environment: dict  # metrics.json's record of it (rundir.environment)
    line: str  # "precision ..., impl ...[, launch]": the log line's tail


def _place(cfg: Config) -> _Place:
    """The run's place, settled before its data: a bf16 request the CPU cannot run fails at once."""
    dist, device = launch.place(cfg)
    precision, why, ck_cfg = launch.precision_of(cfg, device)
    impl, impl_why = resolve_impl(ck_cfg.model, device)
    if cfg.train.report_to is ReportTo.tensorboard:
        tensorboard.require()
    return _Place(dist, device, precision, ck_cfg, environment(device, precision, impl, dist),
                  f"precision {why}, impl {impl_why}{launch.launch_line(dist)}")


def _class_weights(cfg: Config, data: Prepared) -> dict[str, float] | None:
    """{label: its weight in the loss}, from the config and the training split's label counts."""
    counts = torch.bincount(data.splits["train"].labels, minlength=len(data.label_names)).tolist()
    weights = resolve_class_weights(cfg.train.class_weights, data.label_names, counts)
    return None if weights is None else dict(zip(data.label_names, weights, strict=True))


def _as_tensor(weights: dict[str, float] | None) -> torch.Tensor | None:
    return None if weights is None else torch.tensor(list(weights.values()), dtype=torch.float32)


def loss_weight(cfg: Config, data: Prepared) -> torch.Tensor | None:
    """(C,) the loss's weight of each label, as training weighs them (None: all 1)."""
    return _as_tensor(_class_weights(cfg, data))


def _open_tensorboard(r: Run) -> Run:
    """The run `r` with its event writer, continuing after the steps already taken."""
    if r.cfg.train.report_to is ReportTo.tensorboard and r.dist.is_main:
        done = (r.state.epoch - 1) * steps_per_epoch(r.cfg, r.data) + r.state.progress.batches_done
        r.tb = tensorboard.TensorBoard(r.run_dir, done)
    return r


def steps_per_epoch(cfg: Config, data: Prepared) -> int:
    return math.ceil(len(data.splits["train"]) / cfg.train.batch_size)


def start(cfg: Config, force: bool = False, memory_check: bool = True) -> Run:
    """A new run: data, model and vectors first (bad input leaves no run folder behind), then the folder.

    The run folder must be new or empty (rundir.check_out) unless `force`; a model that would not fit in
    the memory available is refused before it is built (footprint.check) unless not `memory_check`."""
    at = _place(cfg)
    dist, device = at.dist, at.device
    run_dir = distributed.broadcast(dist, Path(cfg.train.out) if cfg.train.out else default_out(cfg))
    if dist.is_main:
        check_out(run_dir, force)  # before minutes of tokenizing, and again once locked (claim)
    data = launch.prepared(cfg, dist)
    if memory_check:
        footprint.check(at.ck_cfg, data, device, dist)
    class_weights = _class_weights(cfg, data)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(at.ck_cfg.model, len(data.vocab), len(data.label_names), device).to(device)
    init_nb_bag(model, data.splits["train"], Cut.of(cfg.data))  # an nbsvm bag's ratios (counted)
    metrics = {"data": {**{s: len(data.splits[s]) for s in data.splits}, "vocab": len(data.vocab),
                        "labels": data.label_names},
               "environment": at.environment, "history": [], "best_epoch": None}
    if class_weights is not None:
        metrics["class_weights"] = class_weights
    if cfg.train.embeddings:
        metrics["embeddings"] = init_embeddings(model.embedding, cfg.train.embeddings, data.vocab)
        e = metrics["embeddings"]
        log.info(f"embeddings: {e['found']:,} of {e['vocab']:,} vocabulary tokens ({e['coverage']:.1%}) "
                 f"found among {e['vectors_read']:,} vectors in {e['path']}")
    model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(model, cfg)
    lock = claim(run_dir, force) if dist.is_main else None
    if dist.is_main:
        write_json(run_dir / "config.json", {**to_dict(cfg), "launch": launch.launch_record(dist)})
        write_json(run_dir / "metrics.json", metrics)  # from the start: a run stopped in epoch 1 resumes
    log.info(f"run folder {run_dir}; {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
             f"{at.line}")
    if dist.rank:  # each rank its own dropout masks; rank 0 draws those of a single process
        torch.manual_seed(cfg.train.seed + dist.rank)
    return _open_tensorboard(Run(
        cfg, at.ck_cfg, run_dir, data, dist, device, model, distributed.wrap(model, dist, device), optimizer,
        make_scheduler(optimizer, cfg, steps_per_epoch(cfg, data)), TrainState(), metrics,
        _as_tensor(class_weights), lock=lock))


def _read_run(run_dir: Path) -> tuple[Config, dict]:
    """A run folder's config (its launch record dropped) and metrics so far."""
    try:
        config_file = run_dir / "config.json"
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(saved, dict):
            saved.pop("launch", None)
        cfg = from_dict(saved, str(config_file))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"cannot resume {run_dir}: not a run folder ({exc})") from None
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"cannot resume {run_dir}: its metrics.json is not a run's record")
    if not (run_dir / "last").is_dir() and not (run_dir / ".last.old").is_dir():
        raise CheckpointError(f"cannot resume {run_dir}: it stopped before its first checkpoint (no last/); "
                              f"start it again: the same train command with --force")
    if "test" in metrics:  # (a run stopped after its last epoch but before testing resumes into the test)
        raise LstmcliError(f"run {run_dir} has already finished; nothing to resume")
    return cfg, metrics


# Fields a resumed run may differ in from its last/ (where the data lies, where and how verbosely it
# runs); any other difference means last/'s weights no longer fit the run's config.
RESUME_MAY_CHANGE = {"data.data_dir", "model.precision", "train.device", "train.threads", "train.log_every"}


def _check_same_config(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume when the run's config.json and its last/config.json disagree (someone edited
    one): training on would write a last/ whose config does not describe its weights."""
    last_file = run_dir / "last" / "config.json"
    try:
        saved = to_dict(from_dict(json.loads(last_file.read_text(encoding="utf-8")), str(last_file)))
    except (OSError, ValueError, LstmcliError):
        return  # checkpoint.load names what is wrong with last/
    for section, table in to_dict(cfg).items():
        for key, value in table.items():
            theirs = saved[section][key]
            if f"{section}.{key}" not in RESUME_MAY_CHANGE and theirs != value:
                raise CheckpointError(
                    f"cannot resume {run_dir}: its config.json says {section}.{key} = {value!r} but "
                    f"{last_file} says {theirs!r}; put config.json back as it was, or start a new run")


def reopen(run_dir: Path) -> Run:
    """A stopped run, exactly as it was when it stopped: weights, optimizer, schedule, RNG, position."""
    run_dir = Path(run_dir)
    cfg, metrics = _read_run(run_dir)
    at = _place(cfg)
    lock = RunLock(run_dir) if at.dist.is_main else None  # no second process trains into it meanwhile
    try:
        return _restore(run_dir, cfg, metrics, at, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _restore(run_dir: Path, cfg: Config, metrics: dict, at: _Place, lock: RunLock | None) -> Run:
    """reopen()'s work once the run folder is locked."""
    dist, device = at.dist, at.device
    recover_dir(run_dir / "last")  # a save of last/ cut short between its renames
    _check_same_config(run_dir, cfg)
    metrics["environment"] = at.environment  # where it runs from now on
    data = launch.prepared(cfg, dist)
    last = checkpoint.load(run_dir / "last", str(device), precision=at.precision.value)
    if last.vocab != data.vocab or last.label_names != data.label_names:
        raise CheckpointError(f"cannot resume {run_dir}: its data has changed since the run started")
    last.model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(last.model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(cfg, data))
    state, saved_by = load_state(run_dir / "last", optimizer, scheduler, dist.rank)
    if saved_by != dist.world_size:
        log.warning(f"resuming a run saved by {saved_by} process(es) with {dist.world_size}: the same "
                    f"batches and gradient means, but float sums in another order and other dropout masks, "
                    f"so the result is not bit-identical to an uninterrupted run")
    log.info(f"resuming {run_dir} in epoch {state.epoch} after {state.progress.batches_done} batches, "
             f"{at.line}")
    trained = distributed.wrap(last.model, dist, device)
    return _open_tensorboard(Run(cfg, at.ck_cfg, run_dir, data, dist, device, last.model, trained, optimizer,
                                 scheduler, state, metrics, loss_weight(cfg, data), lock=lock))
