"""`lstmcli pretrain`: the embedding and recurrent encoder trained as language models on unlabelled text
(models/language_model.py), in a run folder like `train`'s: config.json, metrics.json (perplexity per
epoch), learning curves, best/ (lowest held-out perplexity) and last/ (to resume from), with the same
Ctrl-C, resume and torchrun behaviour. `train --init-from RUN/best` starts a classifier from it
(training/init_from.py)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lstmcli import checkpoint
from lstmcli.config import Config, from_dict, lm_cutoffs, to_dict
from lstmcli.data.batches import Truncation, bucket_batches, collate, sorted_batches, truncated_lengths
from lstmcli.data.registry import REGISTRY
from lstmcli.data.text import Vocab
from lstmcli.data.unlabelled import Corpus, load_corpus
from lstmcli.errors import CheckFailed, CheckpointError, ConfigError, Interrupted, LstmcliError
from lstmcli.evaluation import plots
from lstmcli.fsutil import recover_dir, write_json
from lstmcli.models.language_model import LanguageModel, pretraining_problem
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime import distributed, native
from lstmcli.runtime.distributed import all_reduce_sum
from lstmcli.runtime.plan import RunPlan, model_spec, plan_run
from lstmcli.training.progress import EpochReporter
from lstmcli.training.rundir import RunLock, check_out, claim, environment, point_latest
from lstmcli.training.schedule import make_optimizer, make_scheduler, step_per_batch
from lstmcli.training.state import EpochProgress, GracefulStop, TrainState, load_state, rng_state, state_dict

log = logging.getLogger(__name__)
KIND = "language_model"  # metrics.json "kind" of a pretraining run and its checkpoints


@dataclass
class PretrainRun:
    cfg: Config
    plan: RunPlan
    run_dir: Path
    corpus: Corpus
    model: LanguageModel
    wrapped: torch.nn.Module  # DistributedDataParallel around model under torchrun, else model
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    metrics: dict
    lock: RunLock | None = None


def lm_spec(cfg: Config, vocab_size: int, plan: RunPlan) -> ModelSpec:
    """The encoder's spec as the classifier will have it (num_classes does not matter here)."""
    return model_spec(plan.saved_cfg.model, vocab_size, 2, plan.choice)


def build_language_model(spec: ModelSpec, cfg: Config) -> LanguageModel:
    if spec.impl == "scratch":
        native.ensure()  # else the Python loops
    return LanguageModel(spec, lm_cutoffs(cfg.pretrain.lm_cutoffs), cfg.pretrain.lm_div_value)


def default_out(cfg: Config) -> Path:
    """runs/pretrain-<dataset or file>-<cell>-<timestamp>."""
    from datetime import datetime
    source = cfg.pretrain.unlabelled or cfg.data.dataset
    name = source if source in REGISTRY else Path(source).stem or "text"
    return Path("runs") / f"pretrain-{name}-{cfg.model.cell.value}-{datetime.now():%Y%m%d-%H%M%S}"


def _check_model(cfg: Config) -> None:
    """Refuse an encoder that cannot be pretrained before any data is read."""
    m = cfg.model
    spec = ModelSpec(vocab_size=2, num_classes=2, bidirectional=m.bidirectional, num_layers=m.num_layers,
                     ngram_buckets=m.ngram_buckets)
    problem = pretraining_problem(spec)
    if problem:
        raise ConfigError(problem)


def _load_corpus(cfg: Config, dist) -> Corpus:
    """The corpus; under torchrun each node's local rank 0 tokenizes (and caches) it first."""
    if dist.local_rank == 0:
        corpus = load_corpus(cfg)
    distributed.barrier(dist)
    if dist.local_rank != 0:
        corpus = load_corpus(cfg)
    return corpus


def start(cfg: Config, force: bool = False) -> PretrainRun:
    """A new pretraining run: data and model first (bad input leaves no folder behind), then the folder."""
    _check_model(cfg)
    plan = plan_run(cfg)
    dist = plan.dist
    run_dir = distributed.broadcast(dist, Path(cfg.train.out) if cfg.train.out else default_out(cfg))
    if dist.is_main:
        check_out(run_dir, force)
    corpus = _load_corpus(cfg, dist)
    torch.manual_seed(cfg.train.seed)
    model = build_language_model(lm_spec(cfg, len(corpus.vocab), plan), cfg).to(plan.device)
    lengths = corpus.documents.lengths
    words = int(truncated_lengths(corpus.documents, cfg.data.max_length)[corpus.train].sum())
    metrics = {"kind": KIND, "data": {"source": corpus.source, "documents": len(corpus.train),
                                      "held_out": len(corpus.val), "vocab": len(corpus.vocab),
                                      "tokens": int(lengths[corpus.train].sum()), "tokens_read": words},
               "environment": environment(plan), "history": [], "best_epoch": None}
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, _steps_per_epoch(cfg, corpus))
    lock = claim(run_dir, force) if dist.is_main else None
    if dist.is_main:
        write_json(run_dir / "config.json", {**to_dict(cfg), "launch": plan.launch_record()})
        write_json(run_dir / "metrics.json", metrics)
    log.info(f"pretraining on {len(corpus.train):,} documents ({words:,} tokens read per epoch) of "
             f"{corpus.source}, {len(corpus.val):,} held out; vocabulary {len(corpus.vocab):,}")
    log.info(f"run folder {run_dir}; {sum(p.numel() for p in model.parameters()):,} parameters on "
             f"{plan.device}, {plan.line}")
    if dist.rank:
        torch.manual_seed(cfg.train.seed + dist.rank)
    return PretrainRun(cfg, plan, run_dir, corpus, model, distributed.wrap(model, dist, plan.device),
                       optimizer, scheduler, TrainState(), metrics, lock)


def _steps_per_epoch(cfg: Config, corpus: Corpus) -> int:
    return math.ceil(len(corpus.train) / cfg.train.batch_size)


def _predicted(lengths: torch.Tensor, directions: int) -> int:
    """How many words a batch of these lengths predicts: each but the first (forward) and each but the
    last (backward)."""
    return directions * int((lengths - 1).clamp(min=0).sum())


def _step_loss(r: PretrainRun, rows: torch.Tensor, cut: Truncation) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of the global batch `rows` and this rank's float64 totals [nll sum, words predicted,
    tokens read, 0 (the stop request's place)]. Under torchrun each rank's loss is its sum over its rows
    times world_size / the whole batch's words, so that DDP's mean of gradients is the gradient of the
    mean over every word of the global batch."""
    dist, directions = r.plan.dist, r.model.spec.num_directions
    mine, live = dist.shard(rows)
    batch = collate(r.corpus.documents, mine, cut).to(r.plan.device)
    nll = r.wrapped(batch.ids, batch.lengths)  # (N,)
    total = max(_predicted(truncated_lengths(r.corpus.documents, cut.length)[rows], directions), 1)
    loss = nll.sum() * (live * dist.world_size / total)
    # the adaptive softmax skips a tail cluster no target of this batch falls in, and DDP (built without
    # find_unused_parameters) needs a gradient for every parameter in every step: a zero-weight term
    # gives the whole softmax one, of zeros, on every rank
    loss = loss + 0.0 * sum(p.sum() for p in r.model.softmax.parameters())
    totals = torch.tensor([float(nll.detach().sum()) * live, len(nll) * live, batch.num_tokens * live, 0.0],
                          dtype=torch.float64)
    return loss, totals


def train_one_epoch(r: PretrainRun, batches: list[torch.Tensor], should_stop, on_step) -> None:
    """Train on `batches` from `r.state.progress.batches_done` on, as training/fit.py does a classifier
    (progress.loss_sum: summed negative log-likelihood; progress.seen: words predicted)."""
    r.wrapped.train()
    p, cut, clip = r.state.progress, Truncation.of(r.cfg.data), r.cfg.train.grad_clip
    begun = time.perf_counter() - p.seconds
    for step in range(p.batches_done + 1, len(batches) + 1):
        loss, totals = _step_loss(r, batches[step - 1], cut)
        r.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(r.model.parameters(), clip or math.inf))
        totals[3] = float(should_stop())
        nll, words, tokens, stop = all_reduce_sum(r.plan.dist, totals).tolist()
        if not (math.isfinite(nll) and math.isfinite(norm)):
            raise CheckFailed(f"non-finite loss or gradient in epoch {r.state.epoch} at step {step}; "
                              f"pretraining stopped, last/ keeps the last good weights (try a lower --lr)")
        r.optimizer.step()
        step_per_batch(r.scheduler)
        p.batches_done, p.loss_sum, p.seen = step, p.loss_sum + nll, p.seen + int(words)
        p.tokens, p.seconds = p.tokens + int(tokens), time.perf_counter() - begun
        on_step(step, p)
        if stop:
            break


@torch.no_grad()
def evaluate_lm(model: LanguageModel, corpus: Corpus, indices: torch.Tensor, cut: Truncation,
                batch_size: int, device: torch.device, dist=distributed.SINGLE) -> dict:
    """Held-out loss (mean negative log-likelihood per word) and perplexity, overall and per direction."""
    model.eval()
    D = model.spec.num_directions
    sums = torch.zeros(2 * D, dtype=torch.float64)  # [nll per direction..., words per direction...]
    lengths = truncated_lengths(corpus.documents, cut.length)
    for rows in sorted_batches(lengths[indices], batch_size):
        mine, live = dist.shard(indices[rows])
        if not live:
            continue
        batch = collate(corpus.documents, mine, cut).to(device)
        nll = model(batch.ids, batch.lengths).double().cpu()
        per = _predicted(batch.lengths, 1)  # words per direction
        for d in range(D):
            sums[d] += nll[d * per:(d + 1) * per].sum()
            sums[D + d] += per
    sums = all_reduce_sum(dist, sums)
    words = max(float(sums[D:].sum()), 1.0)
    loss = float(sums[:D].sum()) / words
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700)), "words": int(words)}
    for d, name in enumerate(("forward", "backward")[:D]):
        out[f"{name}_perplexity"] = math.exp(min(float(sums[d]) / max(float(sums[D + d]), 1.0), 700))
    return out


def _save(r: PretrainRun, name: str, extra: dict, trainer: bool) -> None:
    """best/ or last/: a checkpoint folder (labels.json empty: a language model, not a classifier)."""
    rngs = distributed.gather(r.plan.dist, rng_state()) if trainer else None
    if r.plan.dist.is_main:
        state = state_dict(r.state, r.optimizer, r.scheduler, rngs) if trainer else None
        checkpoint.save(r.run_dir / name, r.plan.saved_cfg, r.corpus.vocab, [], r.model,
                        {"kind": KIND, **extra}, state)
    distributed.barrier(r.plan.dist)


def _finish_epoch(r: PretrainRun) -> None:
    """Measure held-out perplexity, record the epoch, save best/ (when lower) and last/."""
    t, p, epoch = r.cfg.train, r.state.progress, r.state.epoch
    val = evaluate_lm(r.model, r.corpus, r.corpus.val, Truncation.of(r.cfg.data), t.batch_size,
                      r.plan.device, r.plan.dist)
    train_loss = p.loss_sum / max(p.seen, 1)
    stats = {"epoch": epoch, "train_loss": train_loss, "train_perplexity": math.exp(min(train_loss, 700)),
             "val_loss": val["loss"], "val_perplexity": val["perplexity"],
             **{f"val_{k}": v for k, v in val.items() if k.endswith("_perplexity") and k != "perplexity"},
             "seconds": p.seconds, "tokens": p.tokens, "tokens_per_s": p.tokens / max(p.seconds, 1e-9),
             "lr": r.optimizer.param_groups[0]["lr"]}
    r.metrics["history"].append(stats)
    improved = -val["loss"] > r.state.best_val
    best_val, best_epoch = (-val["loss"], epoch) if improved else (r.state.best_val, r.state.best_epoch)
    r.state = TrainState(epoch + 1, EpochProgress(), best_val, best_epoch)
    r.metrics["best_epoch"] = best_epoch
    if improved:
        _save(r, "best", {"epoch": epoch, "val": val}, trainer=False)
    if r.plan.dist.is_main:
        write_json(r.run_dir / "metrics.json", r.metrics)
        point_latest(r.run_dir)
        plots.learning_curves(r.metrics, r.run_dir / plots.LEARNING_CURVES,
                              f"{r.run_dir.name}: language model learning curves")
    _save(r, "last", {"epoch": epoch, "val": val}, trainer=True)
    log.info(f"epoch {epoch}/{t.epochs}: train perplexity {stats['train_perplexity']:.1f} | held-out "
             f"perplexity {val['perplexity']:.1f} | {p.seconds:.1f}s {stats['tokens_per_s']:,.0f} tok/s"
             f"{'  *best' if improved else ''}")


def _resume_command(r: PretrainRun) -> str:
    launcher = f"torchrun --nproc-per-node {r.plan.dist.local_world_size} -m " if r.plan.dist.enabled else ""
    return f"{launcher}lstmcli pretrain --resume {r.run_dir}"


def fit(r: PretrainRun) -> Path:
    """Pretrain `r` to its last epoch; returns the run folder (best/ is what `--init-from` takes)."""
    t, cut = r.cfg.train, Truncation.of(r.cfg.data)
    lengths = truncated_lengths(r.corpus.documents, cut.length)[r.corpus.train]
    try:
        with GracefulStop() as signalled:
            while r.state.epoch <= t.epochs:
                epoch, p = r.state.epoch, r.state.progress
                # batches of indices into corpus.documents: the same on every rank
                batches = [r.corpus.train[b] for b in bucket_batches(lengths, t.batch_size, t.seed, epoch)]
                with EpochReporter(epoch, t.epochs, len(batches), p.batches_done, t.log_every,
                                   accuracy=False) as report:
                    train_one_epoch(r, batches, signalled, report)
                if p.batches_done < len(batches):
                    _save(r, "last", {"epoch": epoch - 1}, trainer=True)
                    raise Interrupted(f"interrupted in epoch {epoch} after {p.batches_done}/{len(batches)} "
                                      f"batches; continue with: {_resume_command(r)}")
                _finish_epoch(r)
                if signalled() and r.state.epoch <= t.epochs:
                    raise Interrupted(f"interrupted after epoch {epoch}; continue with: {_resume_command(r)}")
        r.metrics["finished"] = True
        if r.plan.dist.is_main:
            write_json(r.run_dir / "metrics.json", r.metrics)
        log.info(f"best/ (epoch {r.metrics['best_epoch']}) is what `lstmcli train --init-from "
                 f"{r.run_dir / 'best'}` starts from")
    finally:
        if r.lock is not None:
            r.lock.release()
    distributed.stop(r.plan.dist)
    return r.run_dir


def reopen(run_dir: Path) -> PretrainRun:
    """A stopped pretraining run as it was when it stopped."""
    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        saved.pop("launch", None)
        cfg = from_dict(saved, str(run_dir / "config.json"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot resume {run_dir}: not a pretraining run folder ({exc})") from None
    if not isinstance(metrics, dict) or metrics.get("kind") != KIND:
        raise CheckpointError(f"cannot resume {run_dir}: not a pretraining run (a classifier's run resumes "
                              f"with lstmcli train --resume)")
    if metrics.get("finished"):
        raise LstmcliError(f"pretraining run {run_dir} has already finished; nothing to resume")
    recover_dir(run_dir / "last")
    if not (run_dir / "last" / checkpoint.STATE_FILE).is_file():
        raise CheckpointError(f"cannot resume {run_dir}: it stopped before its first checkpoint (no last/); "
                              f"start it again with --force")
    plan = plan_run(cfg)
    lock = RunLock(run_dir) if plan.dist.is_main else None
    try:
        corpus = _load_corpus(cfg, plan.dist)
        model, _, vocab, _ = load_language_model(run_dir / "last", str(plan.device), plan)
        if vocab != corpus.vocab:
            raise CheckpointError(f"cannot resume {run_dir}: its text has changed since the run started")
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, _steps_per_epoch(cfg, corpus))
        state, _ = load_state(run_dir / "last", optimizer, scheduler, plan.dist.rank)
        metrics["history"] = [h for h in metrics["history"] if h.get("epoch", 0) < state.epoch]
        metrics["best_epoch"] = state.best_epoch  # last/'s, which metrics.json may have run ahead of
        metrics["environment"] = environment(plan)
        log.info(f"resuming {run_dir} in epoch {state.epoch} after {state.progress.batches_done} batches")
        return PretrainRun(cfg, plan, run_dir, corpus, model, distributed.wrap(model, plan.dist, plan.device),
                           optimizer, scheduler, state, metrics, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def load_language_model(path: Path, device: str = "cpu",
                        plan: RunPlan | None = None) -> tuple[LanguageModel, Config, Vocab, dict]:
    """A pretraining checkpoint folder (best/ or last/, or a run folder meaning its best/): the model,
    its config, vocabulary and metrics. Anything else there is a CheckpointError naming what it is."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lstmcli.runtime.plan import choose
    path = Path(path)
    if (path / "best").is_dir() and not (path / "model.safetensors").exists():
        path = path / "best"
    cfg, vocab, metrics = checkpoint.read_pretrained(path)
    choice = plan.choice if plan is not None else choose(cfg.model, torch.device(device))
    spec = model_spec(cfg.model, len(vocab), 2, choice)
    model = build_language_model(spec, cfg)
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors"), device=device))
    except (SafetensorError, RuntimeError, OSError) as exc:
        what = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        raise CheckpointError(f"broken pretrained checkpoint: {path / 'model.safetensors'} "
                              f"({what[:300] or type(exc).__name__})") from None
    return model.to(device), cfg, vocab, metrics
