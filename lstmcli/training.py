"""Training: train_one_epoch, and a run's life: start, epochs, checkpoints, stop, resume, test."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, distributed, launch, plots, tensorboard
from .batching import Cut, bucket_batches, collate, padding_share, truncated_lengths
from .build import build_model, resolve_impl
from .class_weights import resolve as resolve_class_weights
from .config import Config, ReportTo, from_dict, to_dict
from .distributed import SINGLE, Dist, sum_
from .embeddings import init_embeddings
from .errors import CheckFailed, CheckpointError, Interrupted, LstmcliError, PeerFailed
from .evaluation import evaluate
from .fsutil import write_json
from .ngram_stats import init_nb_bag
from .prepare import EncodedSplit, Prepared
from .progress import EpochReporter, StepCallback, chain, epoch_line
from .rundir import default_out, environment, point_latest
from .schedule import make_optimizer, make_scheduler, step_per_batch, step_per_epoch
from .train_state import EpochProgress, GracefulStop, TrainState, load_state, rng_state, state_dict

log = logging.getLogger(__name__)


def train_one_epoch(model, split: EncodedSplit, batches: list[torch.Tensor], optimizer, scheduler,
                    device: torch.device, cut: Cut, grad_clip: float, progress: EpochProgress,
                    should_stop: Callable[[], bool], on_step: StepCallback | None = None,
                    epoch: int = 1, dist: Dist = SINGLE,
                    class_weight: torch.Tensor | None = None) -> EpochProgress:
    """Train on `batches`, continuing from `progress.batches_done` and updating `progress` in place;
    `on_step(step, progress)` after each step. `class_weight` (C,) weighs each label's loss.

    Returns early, between two batches, once `should_stop()` says so. A non-finite loss or gradient
    raises CheckFailed before the optimizer step, so the weights stay the last good ones. Under torchrun
    `model` is wrapped in DistributedDataParallel and `batches` are the global batches; each rank runs
    its share of each (see _step_loss), and the stop request and running totals are summed over the
    ranks every step, so that all of them stop at the same step with the same totals.
    """
    model.train()
    start = time.perf_counter() - progress.seconds
    for step in range(progress.batches_done + 1, len(batches) + 1):
        loss, totals = _step_loss(model, split, batches[step - 1], cut, device, dist, class_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf))
        totals[4] = float(should_stop())
        loss_sum, correct, seen, tokens, stop = sum_(dist, totals).tolist()
        if not (math.isfinite(loss_sum) and math.isfinite(norm)):
            what = f"loss {loss_sum / seen}" if not math.isfinite(loss_sum) else f"gradient norm {norm}"
            raise CheckFailed(f"non-finite {what} in epoch {epoch} at step {step}; training stopped, and "
                              f"last/ keeps the last good checkpoint (try a lower --lr or a --grad-clip)")
        optimizer.step()
        step_per_batch(scheduler)
        p = progress
        p.batches_done, p.loss_sum, p.correct = step, p.loss_sum + loss_sum, p.correct + int(correct)
        p.seen, p.tokens, p.seconds = p.seen + int(seen), p.tokens + int(tokens), time.perf_counter() - start
        if on_step is not None:
            on_step(step, p)
        if stop:
            break
    return progress


def _step_loss(model, split: EncodedSplit, rows: torch.Tensor, cut: Cut, device: torch.device,
               dist: Dist, class_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate for the global batch `rows`, and this rank's float64 totals
    [loss sum, correct, examples, tokens, 0 (the stop request's place)].

    One process: the mean loss (with class weights, the weighted mean: sum w_y * loss / sum w_y, as
    F.cross_entropy's). Under torchrun each rank runs its share of the rows, and its loss is its sum over
    them times world_size / (the rows' total weight): DDP averages gradients over the ranks, so the
    result is the gradient of the mean over the whole global batch, however unevenly the rows divide."""
    mine, live = dist.shard(rows)
    batch = collate(split, mine, cut).to(device)
    # (P, B, C): each branch learns on its own; labels: an NBSVM bag leaves each text out of its counts
    parts = model(batch.ids, batch.lengths, parts=True, labels=batch.labels)
    logits = parts.sum(0)  # (B, C): what evaluation and prediction see
    w = None if class_weight is None else class_weight.to(device)
    if dist.enabled:
        total = len(rows) if w is None else float(class_weight[split.labels[rows]].sum())
        losses = [F.cross_entropy(part, batch.labels, weight=w, reduction="sum") for part in parts]
        loss_sum = sum(losses) * live
        loss = loss_sum * (dist.world_size / total)
    else:
        loss = sum(F.cross_entropy(part, batch.labels, weight=w) for part in parts)
    # reported: the loss of the summed logits, as validation reports it (with one branch, the loss
    # trained); a non-finite trained loss is reported as it is, so that the step stops on it
    value = F.cross_entropy(logits.detach(), batch.labels, reduction="sum").item() * live
    if not math.isfinite(trained := loss.item()):
        value = trained
    n = len(batch.labels) * live
    correct = int((logits.argmax(1) == batch.labels).sum()) * live
    return loss, torch.tensor([value, correct, n, batch.num_tokens * live, 0.0], dtype=torch.float64)


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


def _class_weights(cfg: Config, data: Prepared) -> dict[str, float] | None:
    """{label: its weight in the loss}, from the config and the training split's label counts."""
    counts = torch.bincount(data.splits["train"].labels, minlength=len(data.label_names)).tolist()
    weights = resolve_class_weights(cfg.train.class_weights, data.label_names, counts)
    return None if weights is None else dict(zip(data.label_names, weights, strict=True))


def _as_tensor(weights: dict[str, float] | None) -> torch.Tensor | None:
    return None if weights is None else torch.tensor(list(weights.values()), dtype=torch.float32)


def _open_tensorboard(r: Run) -> Run:
    """The run `r` with its event writer, continuing after the steps already taken."""
    if r.cfg.train.report_to is ReportTo.tensorboard and r.dist.is_main:
        done = (r.state.epoch - 1) * _steps_per_epoch(r.cfg, r.data) + r.state.progress.batches_done
        r.tb = tensorboard.TensorBoard(r.run_dir, done)
    return r


def _steps_per_epoch(cfg: Config, data: Prepared) -> int:
    return math.ceil(len(data.splits["train"]) / cfg.train.batch_size)


def start(cfg: Config) -> Run:
    """A new run: data, model and vectors first (bad input leaves no run folder behind), then the folder."""
    dist, device = launch.place(cfg)
    precision, why, ck_cfg = launch.precision_of(cfg, device)  # before the data: a bad bf16 fails at once
    impl, impl_why = resolve_impl(ck_cfg.model, device)
    if cfg.train.report_to is ReportTo.tensorboard:
        tensorboard.require()
    data = launch.prepared(cfg, dist)
    class_weights = _class_weights(cfg, data)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(ck_cfg.model, len(data.vocab), len(data.label_names), device).to(device)
    init_nb_bag(model, data.splits["train"], Cut.of(cfg.data))  # an nbsvm bag's ratios (counted)
    metrics = {"data": {**{s: len(data.splits[s]) for s in data.splits}, "vocab": len(data.vocab),
                        "labels": data.label_names},
               "environment": environment(device, precision, impl, dist), "history": [], "best_epoch": None}
    if class_weights is not None:
        metrics["class_weights"] = class_weights
    if cfg.train.embeddings:
        metrics["embeddings"] = init_embeddings(model.embedding, cfg.train.embeddings, data.vocab)
        e = metrics["embeddings"]
        log.info(f"embeddings: {e['found']:,} of {e['vocab']:,} vocabulary tokens ({e['coverage']:.1%}) "
                 f"found among {e['vectors_read']:,} vectors in {e['path']}")
    model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(model, cfg)
    run_dir = distributed.broadcast(dist, Path(cfg.train.out) if cfg.train.out else default_out(cfg))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {**to_dict(cfg), "launch": launch.launch_record(dist)})
        write_json(run_dir / "metrics.json", metrics)  # from the start: a run stopped in epoch 1 resumes
    log.info(f"run folder {run_dir}; {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
             f"precision {why}, impl {impl_why}{launch.launch_line(dist)}")
    if dist.rank:  # each rank its own dropout masks; rank 0 draws those of a single process
        torch.manual_seed(cfg.train.seed + dist.rank)
    return _open_tensorboard(Run(
        cfg, ck_cfg, run_dir, data, dist, device, model, distributed.wrap(model, dist, device), optimizer,
        make_scheduler(optimizer, cfg, _steps_per_epoch(cfg, data)), TrainState(), metrics,
        _as_tensor(class_weights)))


def _resume_command(r: Run) -> str:
    launcher = f"torchrun --nproc-per-node {r.dist.local_world_size} -m " if r.dist.enabled else ""
    return f"{launcher}lstmcli train --resume {r.run_dir}"


def reopen(run_dir: Path) -> Run:
    """A stopped run, exactly as it was when it stopped: weights, optimizer, schedule, RNG, position."""
    run_dir = Path(run_dir)
    try:
        config_file = run_dir / "config.json"
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(saved, dict):
            saved.pop("launch", None)
        cfg = from_dict(saved, str(config_file))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume {run_dir}: not a run folder ({exc})") from None
    if "test" in metrics:  # (a run stopped after its last epoch but before testing resumes into the test)
        raise LstmcliError(f"run {run_dir} has already finished; nothing to resume")
    dist, device = launch.place(cfg)
    precision, why, ck_cfg = launch.precision_of(cfg, device)
    impl, impl_why = resolve_impl(ck_cfg.model, device)
    if cfg.train.report_to is ReportTo.tensorboard:
        tensorboard.require()
    metrics["environment"] = environment(device, precision, impl, dist)  # where it runs from now on
    data = launch.prepared(cfg, dist)
    last = checkpoint.load(run_dir / "last", str(device), precision=precision.value)
    if last.vocab != data.vocab or last.label_names != data.label_names:
        raise CheckpointError(f"cannot resume {run_dir}: its data has changed since the run started")
    last.model.embedding.weight.requires_grad_(not cfg.train.freeze_embeddings)
    optimizer = make_optimizer(last.model, cfg)
    scheduler = make_scheduler(optimizer, cfg, _steps_per_epoch(cfg, data))
    state, saved_by = load_state(run_dir / "last", optimizer, scheduler, dist.rank)
    if saved_by != dist.world_size:
        log.warning(f"resuming a run saved by {saved_by} process(es) with {dist.world_size}: the same "
                    f"batches and gradient means, but float sums in another order and other dropout masks, "
                    f"so the result is not bit-identical to an uninterrupted run")
    log.info(f"resuming {run_dir} in epoch {state.epoch} after {state.progress.batches_done} batches, "
             f"precision {why}, impl {impl_why}{launch.launch_line(dist)}")
    trained = distributed.wrap(last.model, dist, device)
    return _open_tensorboard(Run(cfg, ck_cfg, run_dir, data, dist, device, last.model, trained, optimizer,
                                 scheduler, state, metrics, _as_tensor(_class_weights(cfg, data))))


def _save_last(r: Run, val_report: dict | None) -> None:
    """last/ with the trainer state; every rank's RNG is gathered, rank 0 writes."""
    rngs = distributed.gather(r.dist, rng_state())
    if r.dist.is_main:
        checkpoint.save(r.run_dir / "last", r.ck_cfg, r.data.vocab, r.data.label_names, r.model,
                        {"epoch": r.state.epoch - (r.state.progress.batches_done == 0), "val": val_report},
                        state_dict(r.state, r.optimizer, r.scheduler, rngs))
    distributed.barrier(r.dist)  # no rank leaves (and no launcher kills rank 0) before last/ is whole


def _finish_epoch(r: Run, batches: list[torch.Tensor], lengths: torch.Tensor) -> None:
    """Validate, record the epoch, save best/ and last/, step the plateau schedule, early stopping."""
    epoch, p, t = r.state.epoch, r.state.progress, r.cfg.train
    val = evaluate(r.model, r.data.splits["val"], r.device, t.batch_size, Cut.of(r.cfg.data),
                   r.data.label_names, r.dist)
    stats = {"epoch": epoch, "train_loss": p.loss_sum / p.seen, "train_accuracy": p.correct / p.seen,
             "seconds": p.seconds, "tokens": p.tokens, "tokens_per_s": p.tokens / max(p.seconds, 1e-9),
             "padding": padding_share(batches, lengths), "lr": r.optimizer.param_groups[0]["lr"],
             **{f"val_{k}": val[k] for k in ("loss", "accuracy", "macro_f1")}}
    r.metrics["history"].append(stats)
    improved = val["accuracy"] > r.state.best_val
    step_per_epoch(r.scheduler, val["accuracy"])
    bad = 0 if improved else r.state.bad_epochs + 1
    best_val, best_epoch = (val["accuracy"], epoch) if improved else (r.state.best_val, r.state.best_epoch)
    stop = bool(t.patience and bad >= t.patience)
    r.state = TrainState(epoch + 1, EpochProgress(), best_val, best_epoch, bad, stop)
    if improved and r.dist.is_main:
        checkpoint.save(r.run_dir / "best", r.ck_cfg, r.data.vocab, r.data.label_names, r.model,
                        {"epoch": epoch, "val": val})
    _save_last(r, val)
    r.metrics["best_epoch"] = r.state.best_epoch
    if r.state.stopped_early:
        r.metrics["stopped_early"] = {"epoch": epoch, "patience": t.patience}
    if r.dist.is_main:
        write_json(r.run_dir / "metrics.json", r.metrics)
        point_latest(r.run_dir)
        plots.learning_curves(r.metrics, r.run_dir / plots.LEARNING_CURVES,
                              f"{r.run_dir.name}: learning curves")
    if r.tb is not None:
        r.tb.on_epoch(stats)
    log.info(epoch_line(stats, t.epochs, improved))


def fit(r: Run) -> dict:
    """Train `r` to its last epoch (or early stop), then report test metrics of best/."""
    t, cut = r.cfg.train, Cut.of(r.cfg.data)
    train = r.data.splits["train"]
    lengths = truncated_lengths(train, cut.length)
    with GracefulStop() as stop, (contextlib.closing(r.tb) if r.tb else contextlib.nullcontext()):
        while r.state.epoch <= t.epochs and not r.state.stopped_early:
            epoch, p = r.state.epoch, r.state.progress
            batches = bucket_batches(lengths, t.batch_size, t.seed, epoch)  # the same on every rank
            with EpochReporter(epoch, t.epochs, len(batches), p.batches_done, t.log_every) as report:
                on_step = report if r.tb is None else chain(report, r.tb.on_step(epoch, len(batches),
                                                                                 r.optimizer, p))
                train_one_epoch(r.trained, train, batches, r.optimizer, r.scheduler, r.device, cut,
                                t.grad_clip, p, stop, on_step, epoch, r.dist, r.class_weight)
            if p.batches_done < len(batches):
                _save_last(r, None)
                raise Interrupted(f"interrupted in epoch {epoch} after {p.batches_done}/{len(batches)} "
                                  f"batches; {r.run_dir / 'last'} holds that point; continue with: "
                                  f"{_resume_command(r)}")
            _finish_epoch(r, batches, lengths)
            stopped = bool(sum_(r.dist, torch.tensor([float(stop())])))  # one answer for all ranks
            if stopped and r.state.epoch <= t.epochs and not r.state.stopped_early:
                raise Interrupted(f"interrupted after epoch {epoch}; continue with: {_resume_command(r)}")
    best = checkpoint.load(r.run_dir / "best", str(r.device), precision=r.ck_cfg.model.precision.value)
    r.metrics["test"] = evaluate(best.model, r.data.splits["test"], r.device, t.batch_size, cut,
                                 r.data.label_names, r.dist)
    if r.dist.is_main:
        write_json(r.run_dir / "metrics.json", r.metrics)
        plots.confusion_matrix(r.metrics["test"], r.run_dir / plots.CONFUSION,
                               f"{r.run_dir.name}: test split, best/")
    log.info(f"test accuracy of best/ (epoch {r.metrics['best_epoch']}): {r.metrics['test']['accuracy']:.4f} "
             f"(n={r.metrics['test']['n']})")
    return r.metrics


def _to_the_end(r: Run) -> Path:
    """fit(r); under torchrun a collective that fails (another rank died: torchrun then ends the rest
    within seconds, or the process group's timeout passed) becomes one line instead of a traceback."""
    try:
        fit(r)
    except RuntimeError as exc:
        if not r.dist.enabled:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerFailed(f"rank {r.dist.rank}: another process of this torchrun launch failed or stopped "
                         f"answering ({first[:200]}); its own output says why") from None
    distributed.stop(r.dist)
    return r.run_dir


def run(cfg: Config) -> Path:
    """Train as `cfg` says; returns the run folder (config.json, metrics.json, best/, last/)."""
    return _to_the_end(start(cfg))


def resume(run_dir: Path) -> Path:
    """Continue a stopped run where it stopped."""
    return _to_the_end(reopen(run_dir))
