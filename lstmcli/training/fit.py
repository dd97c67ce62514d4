"""Training: train_one_epoch, and a run's epochs: validate, checkpoint, stop and resume, calibrate and
test best/. setup.py starts or reopens the Run this takes through them."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lstmcli import checkpoint
from lstmcli.config import Config
from lstmcli.data.batches import Truncation, bucket_batches, collate, padding_share, truncated_lengths
from lstmcli.data.encode import EncodedSplit
from lstmcli.errors import CheckFailed, Interrupted, LstmcliError, PeerFailed
from lstmcli.evaluation import plots
from lstmcli.evaluation.evaluate import evaluate
from lstmcli.evaluation.metrics import selection_score
from lstmcli.fsutil import write_json
from lstmcli.models.loss import classification_loss, correct
from lstmcli.runtime import distributed
from lstmcli.runtime.distributed import SINGLE, Dist, all_reduce_sum
from lstmcli.training.adversarial import kl_divergence, perturbation
from lstmcli.training.calibration import calibrate, fit_label_thresholds
from lstmcli.training.progress import EpochReporter, StepCallback, chain, epoch_line
from lstmcli.training.rundir import point_latest
from lstmcli.training.schedule import step_per_batch, step_per_epoch
from lstmcli.training.setup import Hooks, Run, reopen, start
from lstmcli.training.state import EpochProgress, GracefulStop, TrainState, rng_state, state_dict

log = logging.getLogger(__name__)


def train_one_epoch(model, split: EncodedSplit, batches: list[torch.Tensor], optimizer, scheduler,
                    device: torch.device, cut: Truncation, grad_clip: float, progress: EpochProgress,
                    should_stop: Callable[[], bool], on_step: StepCallback | None = None,
                    epoch: int = 1, dist: Dist = SINGLE,
                    class_weight: torch.Tensor | None = None,
                    adversarial: tuple[str, float, float] | None = None) -> EpochProgress:
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
        loss, totals = _step_loss(model, split, batches[step - 1], cut, device, dist, class_weight,
                                  adversarial)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _drop_frozen_grads(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf))
        totals[4] = float(should_stop())
        loss_sum, right, seen, tokens, stop = all_reduce_sum(dist, totals).tolist()
        if not (math.isfinite(loss_sum) and math.isfinite(norm)):
            what = f"loss {loss_sum / seen}" if not math.isfinite(loss_sum) else f"gradient norm {norm}"
            raise CheckFailed(f"non-finite {what} in epoch {epoch} at step {step}; training stopped, and "
                              f"last/ keeps the last good checkpoint (try a lower --lr or a --grad-clip)")
        optimizer.step()
        step_per_batch(scheduler)
        p = progress
        p.batches_done, p.loss_sum, p.correct = step, p.loss_sum + loss_sum, p.correct + int(right)
        p.seen, p.tokens, p.seconds = p.seen + int(seen), p.tokens + int(tokens), time.perf_counter() - start
        if on_step is not None:
            on_step(step, p)
        if stop:
            break
    return progress


def _drop_frozen_grads(optimizer) -> None:
    """Gradual unfreezing holds a group frozen at lr 0 (schedule.make_scheduler): its gradients go, so
    that the optimizer skips it (no Adam moments, no weight decay, no momentum) and gradient clipping
    measures the groups that train. Every rank drops the same ones after DDP's all-reduce."""
    for group in optimizer.param_groups:
        if group["lr"] == 0:
            for p in group["params"]:
                p.grad = None


def _step_loss(model, split: EncodedSplit, rows: torch.Tensor, cut: Truncation, device: torch.device,
               dist: Dist, class_weight: torch.Tensor | None = None,
               adversarial: tuple[str, float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate for the global batch `rows`, and this rank's float64 totals
    [loss sum, correct (multi-label: texts whose whole label set is right), examples, tokens, 0 (the stop
    request's place)].

    One process: the mean loss (with class weights, the weighted mean: sum w_y * loss / sum w_y, as
    F.cross_entropy's). Under torchrun each rank runs its share of the rows, and its loss is its sum over
    them times world_size / (the rows' total weight): DDP averages gradients over the ranks, so the
    result is the gradient of the mean over the whole global batch, however unevenly the rows divide.

    adversarial (mode "at" or "vat", epsilon, weight): the encoder branch's loss gets an adversarial
    term (training/adversarial.py); the totals stay those of the clean batch."""
    mine, live = dist.shard(rows)
    batch = collate(split, mine, cut).to(device)
    adv_mode = adversarial[0] if adversarial is not None and adversarial[0] != "none" else None
    if adv_mode is None:
        # (P, B, C): each branch learns on its own; labels: an NBSVM bag leaves each text out of its counts
        parts = model(batch.ids, batch.lengths, parts=True, labels=batch.labels)
    else:
        parts, adv_part = _adversarial_forward(model, batch, adv_mode, adversarial[1], class_weight, device)
    # (B, C): what evaluation and prediction see (branch_weights is all ones until training has ended)
    logits = parts.sum(0)
    w = None if class_weight is None else class_weight.to(device)
    if dist.enabled:
        # a multi-label weight is a positive weight inside each text's loss: the mean stays over texts
        weighted = w is not None and not split.multi_label
        total = float(class_weight[split.labels[rows]].sum()) if weighted else len(rows)
        loss_sum = sum(classification_loss(part, batch.labels, w, reduction="sum") for part in parts) * live
        loss = loss_sum * (dist.world_size / total)
        if adv_mode == "at":
            adv = classification_loss(adv_part, batch.labels, w, reduction="sum") * live
            loss = loss + adversarial[2] * adv * (dist.world_size / total)
        elif adv_mode == "vat":
            kl = kl_divergence(parts[0].detach(), adv_part, split.multi_label).sum() * live
            loss = loss + adversarial[2] * kl * (dist.world_size / len(rows))
    else:
        loss = sum(classification_loss(part, batch.labels, w) for part in parts)
        if adv_mode == "at":
            loss = loss + adversarial[2] * classification_loss(adv_part, batch.labels, w)
        elif adv_mode == "vat":
            kl = kl_divergence(parts[0].detach(), adv_part, split.multi_label)
            loss = loss + adversarial[2] * kl.mean()
    # reported: the loss of the summed logits, as validation reports it (with one branch, the loss
    # trained); a non-finite trained loss is reported as it is, so that the step stops on it
    value = classification_loss(logits.detach(), batch.labels, reduction="sum").item() * live
    if not math.isfinite(trained := loss.item()):
        value = trained
    n = len(batch.labels) * live
    right = correct(logits.detach(), batch.labels) * live
    return loss, torch.tensor([value, right, n, batch.num_tokens * live, 0.0], dtype=torch.float64)


def _adversarial_forward(model, batch, mode: str, epsilon: float, class_weight: torch.Tensor | None,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean branches (P, B, C) and the encoder branch's logits of the perturbed batch (B, C): the
    perturbation from the unwrapped model (no parameter gradient), then ONE forward of `model` (under
    torchrun the DDP wrapper) over [x; x] with noise [0; r], so that DDP sees one forward per backward."""
    net = getattr(model, "module", model)
    w = None if class_weight is None else class_weight.to(device)
    clean = None
    if mode == "vat":
        with torch.no_grad():
            clean = net(batch.ids, batch.lengths, parts=True, labels=batch.labels)[0]
    r = perturbation(net, mode, epsilon, batch.ids, batch.lengths, batch.labels, w, clean)
    B = batch.ids.shape[0]
    both = model(torch.cat([batch.ids, batch.ids]), torch.cat([batch.lengths, batch.lengths]), parts=True,
                 labels=torch.cat([batch.labels, batch.labels]), noise=torch.cat([torch.zeros_like(r), r]))
    return both[:, :B], both[0, B:]


def _resume_command(r: Run) -> str:
    launcher = f"torchrun --nproc-per-node {r.dist.local_world_size} -m " if r.dist.enabled else ""
    return f"{launcher}lstmcli train --resume {r.run_dir}"


def _save_last(r: Run, val_report: dict | None) -> None:
    """last/ with the trainer state; every rank's RNG is gathered, rank 0 writes."""
    rngs = distributed.gather(r.dist, rng_state())
    if r.dist.is_main:
        checkpoint.save(r.run_dir / "last", r.saved_cfg, r.data.vocab, r.data.label_names, r.model,
                        {"epoch": r.state.epoch - (r.state.progress.batches_done == 0), "val": val_report},
                        state_dict(r.state, r.optimizer, r.scheduler, rngs))
    distributed.barrier(r.dist)  # no rank leaves (and no launcher kills rank 0) before last/ is whole


def _finish_epoch(r: Run, batches: list[torch.Tensor], lengths: torch.Tensor) -> None:
    """Validate, record the epoch, save best/ and last/, step the plateau schedule, early stopping."""
    epoch, p, t = r.state.epoch, r.state.progress, r.cfg.train
    val = evaluate(r.model, r.data.splits["val"], r.device, t.batch_size, Truncation.of(r.cfg.data),
                   r.data.label_names, r.dist, desc="validating")
    stats = {"epoch": epoch, "train_loss": p.loss_sum / p.seen, "train_accuracy": p.correct / p.seen,
             "seconds": p.seconds, "tokens": p.tokens, "tokens_per_s": p.tokens / max(p.seconds, 1e-9),
             "padding": padding_share(batches, lengths), "lr": r.optimizer.param_groups[0]["lr"],
             **{f"val_{k}": val[k] for k in ("loss", "accuracy", "macro_f1", "micro_f1") if k in val}}
    r.metrics["history"].append(stats)
    score = selection_score(val)
    improved = score > r.state.best_val
    step_per_epoch(r.scheduler, score)
    bad = 0 if improved else r.state.bad_epochs + 1
    best_val, best_epoch = (score, epoch) if improved else (r.state.best_val, r.state.best_epoch)
    stop = bool(t.patience and bad >= t.patience)
    r.state = TrainState(epoch + 1, EpochProgress(), best_val, best_epoch, bad, stop)
    if improved and r.dist.is_main:
        checkpoint.save(r.run_dir / "best", r.saved_cfg, r.data.vocab, r.data.label_names, r.model,
                        {"epoch": epoch, "val": val})
    r.metrics["best_epoch"] = r.state.best_epoch
    if r.state.stopped_early:
        r.metrics["stopped_early"] = {"epoch": epoch, "patience": t.patience}
    if r.dist.is_main:
        # the epoch's record before last/: a kill between the two leaves a record of an epoch that
        # last/ has not finished, which a resume drops (setup.reopen), never a finished epoch unrecorded
        write_json(r.run_dir / "metrics.json", r.metrics)
        point_latest(r.run_dir)
        plots.learning_curves(r.metrics, r.run_dir / plots.LEARNING_CURVES,
                              f"{r.run_dir.name}: learning curves")
    _save_last(r, val)
    if r.tb is not None:
        r.tb.on_epoch(stats)
    log.info(epoch_line(stats, t.epochs, improved))
    if r.hooks.on_epoch is not None:
        r.hooks.on_epoch(epoch, score)


def fit(r: Run) -> dict:
    """Train `r` to its last epoch (or early stop), then report test metrics of best/."""
    t, cut = r.cfg.train, Truncation.of(r.cfg.data)
    train = r.data.splits["train"]
    lengths = truncated_lengths(train, cut.length)
    with GracefulStop() as signalled:
        deadline = r.hooks.deadline

        def stop() -> bool:
            return signalled() or (deadline is not None and time.monotonic() >= deadline)

        while r.state.epoch <= t.epochs and not r.state.stopped_early:
            epoch, p = r.state.epoch, r.state.progress
            batches = bucket_batches(lengths, t.batch_size, t.seed, epoch)  # the same on every rank
            with EpochReporter(epoch, t.epochs, len(batches), p.batches_done, t.log_every) as report:
                on_step = report if r.tb is None else chain(report, r.tb.on_step(epoch, len(batches),
                                                                                 r.optimizer, p))
                train_one_epoch(r.wrapped, train, batches, r.optimizer, r.scheduler, r.device, cut,
                                t.grad_clip, p, stop, on_step, epoch, r.dist, r.class_weight,
                                (t.adversarial.value, t.adversarial_epsilon, t.adversarial_weight))
            if p.batches_done < len(batches):
                _save_last(r, None)
                raise Interrupted(f"interrupted in epoch {epoch} after {p.batches_done}/{len(batches)} "
                                  f"batches; {r.run_dir / 'last'} holds that point; continue with: "
                                  f"{_resume_command(r)}")
            _finish_epoch(r, batches, lengths)
            stopped = bool(all_reduce_sum(r.dist, torch.tensor([float(stop())])))  # one answer for all ranks
            if stopped and r.state.epoch <= t.epochs and not r.state.stopped_early:
                raise Interrupted(f"interrupted after epoch {epoch}; continue with: {_resume_command(r)}")
    best = checkpoint.load(r.run_dir / "best", str(r.device), choice=r.choice)
    if t.calibrate:
        _calibrate_best(r, best)
    if r.data.multi_label:
        _fit_thresholds(r, best)
    if not r.hooks.test:
        return r.metrics
    r.metrics["test"] = evaluate(best.model, r.data.splits["test"], r.device, t.batch_size, cut,
                                 r.data.label_names, r.dist, desc="testing",
                                 thresholds=best.metrics.get("thresholds"))
    if r.dist.is_main:
        write_json(r.run_dir / "metrics.json", r.metrics)
        plots.report_picture(r.metrics["test"], r.run_dir, f"{r.run_dir.name}: test split, best/")
    what = "micro-F1" if r.data.multi_label else "accuracy"
    log.info(f"test {what} of best/ (epoch {r.metrics['best_epoch']}): "
             f"{selection_score(r.metrics['test']):.4f} "
             f"(n={r.metrics['test']['n']})")
    if r.tb is not None:  # after metrics.json has "test": a finished run is never resumed to write it again
        r.tb.on_finish(r.cfg, r.metrics)
    return r.metrics


def _calibrate_best(r: Run, best: checkpoint.Checkpoint) -> None:
    """Fit best/'s branch weights on the validation split (calibration.py) and write them into best/.
    Its branch logits ignore the weights it has, so a resumed run that calibrates again gets the same."""
    t = r.cfg.train
    # the plain sum is where calibration starts and what its "before" reports; best/ holds fitted weights
    # already when an earlier try of this run was stopped after calibrating it
    best.model.branch_weights.fill_(1.0)
    try:
        report = calibrate(best.model, r.data.splits["val"], r.device, t.batch_size,
                           Truncation.of(r.cfg.data), r.dist, r.class_weight)
    except LstmcliError as exc:  # (every rank holds the same labels, so every rank returns here)
        r.metrics["calibration"] = {"skipped": str(exc)}
        log.info(f"best/ is not calibrated: {exc}")
        return
    r.metrics["calibration"] = report
    best.metrics = {**best.metrics, "calibration": report}
    if r.dist.is_main:
        checkpoint.update(best.path, best.model, best.metrics)
    b, a = report["before"], report["after"]
    weights = ", ".join(f"{n} {w:.3g}" for n, w in zip(report["branches"], report["weights"], strict=True))
    log.info(f"calibrated best/ on val (n={report['split_size']}): weights {weights}; log-loss "
             f"{b['loss']:.4f} -> {a['loss']:.4f}, accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}")


def _fit_thresholds(r: Run, best: checkpoint.Checkpoint) -> None:
    """A multi-label best/: each label's F1-best threshold on the validation split, written into best/
    (metrics.json "thresholds"), where eval, predict, serve and an export take them from."""
    t = r.cfg.train
    fitted = fit_label_thresholds(best.model, r.data.splits["val"], r.device, t.batch_size,
                                  Truncation.of(r.cfg.data), r.data.label_names, r.dist)
    best.metrics = {**best.metrics, "thresholds": fitted["thresholds"], "thresholds_fitted": {
        k: v for k, v in fitted.items() if k != "thresholds"}}
    r.metrics["thresholds"] = fitted
    if r.dist.is_main:
        checkpoint.update(best.path, best.model, best.metrics)
    log.info(f"fitted the thresholds of {len(fitted['thresholds']) - len(fitted['unfitted'])} labels on val "
             f"(n={fitted['n']}; micro-F1 at 0.5: {fitted['micro_f1_at_0.5']:.4f})")


def _fit_and_release(r: Run) -> Path:
    """fit(r), then let go of the run folder; under torchrun a collective that fails (another rank died:
    torchrun then ends the rest within seconds, or the process group's timeout passed) becomes one line
    instead of a traceback."""
    try:
        with contextlib.closing(r.tb) if r.tb else contextlib.nullcontext():  # open until the test is written
            fit(r)
    except RuntimeError as exc:
        if not r.dist.enabled:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerFailed(f"rank {r.dist.rank}: another process of this torchrun launch failed or stopped "
                         f"answering ({first[:200]}); its own output says why") from None
    finally:
        if r.lock is not None:
            r.lock.release()
    distributed.stop(r.dist)
    return r.run_dir


def run(cfg: Config, force: bool = False, memory_check: bool = True, hooks: Hooks | None = None) -> Path:
    """Train as `cfg` says; returns the run folder (config.json, metrics.json, best/, last/). `force`
    trains into a folder that holds something; `memory_check` False skips the estimate of what the run
    needs against the memory the machine has (runtime/memory.check); `hooks`: setup.Hooks."""
    r = start(cfg, force, memory_check)
    r.hooks = hooks or Hooks()
    return _fit_and_release(r)


def resume(run_dir: Path, hooks: Hooks | None = None) -> Path:
    """Continue a stopped run where it stopped."""
    r = reopen(run_dir)
    r.hooks = hooks or Hooks()
    return _fit_and_release(r)
