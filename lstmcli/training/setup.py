"""A training run's record (Run) and the two ways one begins: start a new run, or reopen a stopped one
exactly where it stopped. fit.py takes a Run from here through its epochs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lstmcli import checkpoint
from lstmcli.config import Config, ReportTo, apply, from_dict, to_dict
from lstmcli.data.batches import Truncation
from lstmcli.data.embeddings import init_embeddings
from lstmcli.data.encode import EncodedData, encode_dataset
from lstmcli.data.text import Vocab
from lstmcli.errors import CheckpointError, LstmcliError
from lstmcli.fsutil import recover_dir, write_json
from lstmcli.runtime import distributed, memory
from lstmcli.runtime.distributed import Dist
from lstmcli.runtime.plan import Choice, RunPlan, build_model, model_spec, plan_run
from lstmcli.training import init_from, sanity, tensorboard
from lstmcli.training.class_weights import resolve as resolve_class_weights
from lstmcli.training.ngram_counts import count_into_bag
from lstmcli.training.rundir import RunLock, check_out, claim, default_out, environment
from lstmcli.training.schedule import make_optimizer, make_scheduler
from lstmcli.training.state import TrainState, load_state

log = logging.getLogger(__name__)


@dataclass
class Hooks:
    """What a caller that runs many trainings (`lstmcli tune`) adds to one; the defaults are `train`'s."""

    # after each epoch's validation: (epoch, its selection score, metrics.selection_score); whatever
    # it raises ends the run there (a pruned trial), its folder resumable as after Ctrl-C
    on_epoch: Callable[[int, float], None] | None = None
    deadline: float | None = None  # time.monotonic() at which training stops at the next batch, as on
    #                                Ctrl-C (errors.Interrupted; last/ saved)
    test: bool = True  # evaluate best/ on the test split at the end (tune: once, for the best trial)


@dataclass
class Run:
    """Everything a run carries from epoch to epoch."""

    cfg: Config
    saved_cfg: Config  # what checkpoints record: cfg with the precision resolved for this device
    choice: Choice  # the impl and precision it runs at (runtime/plan.choose, decided once per run)
    run_dir: Path
    data: EncodedData
    dist: Dist
    device: torch.device
    model: torch.nn.Module  # the TextClassifier itself: evaluated and saved
    wrapped: torch.nn.Module  # what the training steps call: DistributedDataParallel around model
    #                           under torchrun, else model itself
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    metrics: dict
    class_weight: torch.Tensor | None = None  # (C,) the loss's weight of each label
    tb: tensorboard.TensorBoard | None = None  # rank 0's event writer, when asked for
    lock: RunLock | None = None  # rank 0's hold on run_dir while it trains
    hooks: Hooks = field(default_factory=Hooks)


def load_data(cfg: Config, dist: Dist, vocab: Vocab | None = None) -> EncodedData:
    """The encoded splits, with `vocab` (a pretrained encoder's) or a vocabulary of their own. Under
    torchrun each node's local rank 0 downloads and tokenizes first; the other ranks wait, then read its
    cache."""
    start = time.perf_counter()
    if dist.local_rank == 0:
        data = encode_dataset(cfg.data, vocab)
    distributed.barrier(dist)
    if dist.local_rank != 0:
        data = encode_dataset(cfg.data, vocab)
    n = {s: len(data.splits[s]) for s in ("train", "val", "test")}
    if not n["train"] or not n["val"]:
        raise LstmcliError(f"dataset {cfg.data.dataset}: {n['train']} training and {n['val']} validation "
                           "examples; both need at least one (check val_fraction and max_*_examples)")
    log.info(f"{n['train']} train / {n['val']} val / {n['test']} test examples, vocabulary {len(data.vocab)} "
             f"(ready in {time.perf_counter() - start:.1f}s)")
    if cfg.data.max_length and dist.is_main:
        _note_truncation(data, cfg.data.max_length)
    return data


def _note_truncation(data: EncodedData, max_length: int) -> None:
    """One line on how many texts max_length cuts, so that a cut is never silent."""
    lengths = torch.cat([s.lengths for s in data.splits.values()])
    longer = int((lengths > max_length).sum())
    train = data.splits["train"]
    if longer and int((train.lengths > max_length).sum()) <= sanity.CUT_SHARE * len(train):  # else: warned
        log.info(f"max_length {max_length}: {longer:,} of {len(lengths):,} texts are longer and are cut "
                 f"(the longest has {int(lengths.max()):,} tokens)")


def _plan(cfg: Config) -> RunPlan:
    """The run's plan (runtime/plan.py), and the TensorBoard extra checked before any work starts."""
    plan = plan_run(cfg)
    if cfg.train.report_to is ReportTo.tensorboard:
        tensorboard.require()
    return plan


def _class_weights(cfg: Config, data: EncodedData) -> dict[str, float] | None:
    """{label: its weight in the loss}, from the config and the training split's label counts
    (multi-label: each label's positive weight)."""
    labels = data.splits["train"].labels
    if data.multi_label:
        counts = labels.sum(0, dtype=torch.int64).tolist()
    else:
        counts = torch.bincount(labels, minlength=len(data.label_names)).tolist()
    weights = resolve_class_weights(cfg.train.class_weights, data.label_names, counts,
                                    len(labels) if data.multi_label else None)
    return None if weights is None else dict(zip(data.label_names, weights, strict=True))


def _as_tensor(weights: dict[str, float] | None) -> torch.Tensor | None:
    return None if weights is None else torch.tensor(list(weights.values()), dtype=torch.float32)


def loss_weight(cfg: Config, data: EncodedData) -> torch.Tensor | None:
    """(C,) the loss's weight of each label, as training weighs them (None: all 1)."""
    return _as_tensor(_class_weights(cfg, data))


def _open_tensorboard(r: Run) -> Run:
    """The run `r` with its event writer, continuing after the steps already taken."""
    if r.cfg.train.report_to is ReportTo.tensorboard and r.dist.is_main:
        done = (r.state.epoch - 1) * steps_per_epoch(r.cfg, r.data) + r.state.progress.batches_done
        r.tb = tensorboard.TensorBoard(r.run_dir, done)
    return r


def steps_per_epoch(cfg: Config, data: EncodedData) -> int:
    return math.ceil(len(data.splits["train"]) / cfg.train.batch_size)


def start(cfg: Config, force: bool = False, memory_check: bool = True) -> Run:
    """A new run: data, model and vectors first (bad input leaves no run folder behind), then the folder.

    The run folder must be new or empty (rundir.check_out) unless `force`; a model that would not fit in
    the memory available is refused before it is built (memory.check) unless not `memory_check`."""
    plan = _plan(cfg)
    dist, device = plan.dist, plan.device
    run_dir = distributed.broadcast(dist, Path(cfg.train.out) if cfg.train.out else default_out(cfg))
    if dist.is_main:
        check_out(run_dir, force)  # before minutes of tokenizing, and again once locked (claim)
    data = load_data(cfg, dist, init_from.pretrained_vocab(cfg))
    if data.multi_label and not cfg.data.multi_label:  # found in the data: the run records it
        several, n = int((data.splits["train"].labels.sum(1) > 1).sum()), len(data.splits["train"])
        log.info(f"multi-label: {several:,} of {n:,} training texts have several labels; one sigmoid per "
                 f"label (multi_label = true; label_separator = '' would read "
                 f"{cfg.data.label_separator!r} as part of a label)")
        cfg, plan = _multi_label(cfg), dataclasses.replace(plan, saved_cfg=_multi_label(plan.saved_cfg))
    spec = model_spec(plan.saved_cfg.model, len(data.vocab), len(data.label_names), plan.choice,
                      data.multi_label)
    if memory_check:
        memory.check(plan.saved_cfg, spec, data, device, dist)
    class_weights = _class_weights(cfg, data)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(spec).to(device)
    count_into_bag(model, data.splits["train"], Truncation.of(cfg.data))  # an NBSVM bag's counts
    metrics = {"data": {**{s: len(data.splits[s]) for s in data.splits}, "vocab": len(data.vocab),
                        "labels": data.label_names},
               "environment": environment(plan), "history": [], "best_epoch": None}
    if cfg.train.init_from:
        metrics["init_from"] = init_from.load_encoder(model, cfg, data)
    if class_weights is not None:
        metrics["class_weights"] = class_weights
    if cfg.train.embeddings:
        metrics["embeddings"] = init_embeddings(model.embedding, cfg.train.embeddings, data.vocab)
        e = metrics["embeddings"]
        log.info(f"embeddings: {e['found']:,} of {e['vocab']:,} vocabulary tokens ({e['coverage']:.1%}) "
                 f"found among {e['vectors_read']:,} vectors in {e['path']}")
    model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(model, cfg)
    # said once everything else is settled (a run refused for another reason never warns first), on
    # rank 0, and kept in metrics.json for whoever reads the run later
    warnings = sanity.warnings_for(cfg, data) if dist.is_main else []
    if warnings:
        metrics["warnings"] = warnings
    lock = claim(run_dir, force) if dist.is_main else None
    if dist.is_main:
        write_json(run_dir / "config.json", {**to_dict(cfg), "launch": plan.launch_record()})
        write_json(run_dir / "metrics.json", metrics)  # from the start: a run stopped in epoch 1 resumes
    log.info(f"run folder {run_dir}; {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
             f"{plan.line}")
    for warning in warnings:
        log.warning(warning)
    if dist.rank:  # each rank its own dropout masks; rank 0 draws those of a single process
        torch.manual_seed(cfg.train.seed + dist.rank)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(cfg, data))
    return _open_tensorboard(Run(
        cfg, plan.saved_cfg, plan.choice, run_dir, data, dist, device, model,
        distributed.wrap(model, dist, device), optimizer, scheduler, TrainState(), metrics,
        _as_tensor(class_weights), lock=lock))


def _multi_label(cfg: Config) -> Config:
    return apply(cfg, {"data": {"multi_label": True}}, "the data")


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
    plan = _plan(cfg)
    lock = RunLock(run_dir) if plan.dist.is_main else None  # no second process trains into it meanwhile
    try:
        return _restore(run_dir, cfg, metrics, plan, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _restore(run_dir: Path, cfg: Config, metrics: dict, plan: RunPlan, lock: RunLock | None) -> Run:
    """reopen()'s work once the run folder is locked."""
    dist, device = plan.dist, plan.device
    recover_dir(run_dir / "last")  # a save of last/ cut short between its renames
    _check_same_config(run_dir, cfg)
    metrics["environment"] = environment(plan)  # where it runs from now on
    # a run started from a pretrained encoder has its vocabulary, which last/ holds as well
    vocab = checkpoint.read_vocab(run_dir / "last") if cfg.train.init_from else None
    data = load_data(cfg, dist, vocab)
    last = checkpoint.load(run_dir / "last", str(device), choice=plan.choice)
    if last.vocab != data.vocab or last.label_names != data.label_names:
        raise CheckpointError(f"cannot resume {run_dir}: its data has changed since the run started")
    last.model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(last.model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(cfg, data))
    state, saved_by = load_state(run_dir / "last", optimizer, scheduler, dist.rank)
    # epochs metrics.json records but last/ has not finished (a kill between the two writes) run again
    def finished(entry) -> bool:
        epoch = entry.get("epoch") if isinstance(entry, dict) else None
        return isinstance(epoch, int) and epoch < state.epoch
    metrics["history"] = [h for h in metrics["history"] if finished(h)]
    metrics["best_epoch"] = state.best_epoch
    if "stopped_early" in metrics and not finished(metrics["stopped_early"]):
        del metrics["stopped_early"]
    if saved_by != dist.world_size:
        log.warning(f"resuming a run saved by {saved_by} process(es) with {dist.world_size}: the same "
                    f"batches and gradient means, but float sums in another order and other dropout masks, "
                    f"so the result is not bit-identical to an uninterrupted run")
    log.info(f"resuming {run_dir} in epoch {state.epoch} after {state.progress.batches_done} batches, "
             f"{plan.line}")
    wrapped = distributed.wrap(last.model, dist, device)
    return _open_tensorboard(Run(cfg, plan.saved_cfg, plan.choice, run_dir, data, dist, device, last.model,
                                 wrapped, optimizer, scheduler, state, metrics, loss_weight(cfg, data),
                                 lock=lock))
