"""Training: the epoch loop, evaluation, checkpoints and metrics.json of a run folder."""

from __future__ import annotations

import platform
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import __version__, checkpoint
from .batching import bucket_batches, collate, padding_share, sorted_batches, truncated_lengths
from .config import Config, to_dict
from .device import resolve_device
from .errors import LstmcliError
from .fsutil import write_json
from .metrics import classification_report
from .prepare import EncodedSplit, Prepared, prepare


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer.value == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def train_one_epoch(model, split: EncodedSplit, batches: list[torch.Tensor], optimizer, device: torch.device,
                    max_length: int, grad_clip: float, bar: tqdm) -> dict:
    """One pass over `batches`; returns mean loss, accuracy, seconds and tokens/s."""
    model.train()
    loss_sum = correct = seen = tokens = 0
    start = time.perf_counter()
    for indices in batches:
        batch = collate(split, indices, max_length).to(device)
        logits = model(batch.ids, batch.lengths)
        loss = F.cross_entropy(logits, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = len(indices)
        loss_sum += loss.item() * n
        correct += int((logits.argmax(1) == batch.labels).sum())
        seen, tokens = seen + n, tokens + batch.num_tokens
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", tok_s=f"{tokens / elapsed:,.0f}")
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen, "seconds": seconds,
            "tokens": tokens, "tokens_per_s": tokens / seconds}


@torch.no_grad()
def evaluate(model, split: EncodedSplit, device: torch.device, batch_size: int, max_length: int,
             label_names: list[str]) -> dict:
    """Loss and classification metrics of `model` on every example of `split`."""
    model.eval()
    lengths = truncated_lengths(split, max_length)
    preds, targets, loss_sum = [], [], 0.0
    for indices in sorted_batches(lengths, batch_size):
        batch = collate(split, indices, max_length).to(device)
        logits = model(batch.ids, batch.lengths)
        loss_sum += float(F.cross_entropy(logits, batch.labels, reduction="sum"))
        preds.append(logits.argmax(1).cpu())
        targets.append(batch.labels.cpu())
    n = max(len(split), 1)
    return classification_report(torch.cat(targets), torch.cat(preds), label_names, loss=loss_sum / n)


def default_out(cfg: Config) -> Path:
    name = Path(cfg.data.dataset).stem if cfg.data.dataset not in ("imdb", "ag_news") else cfg.data.dataset
    return Path("runs") / f"{name}-{cfg.model.encoder.value}-{datetime.now():%Y%m%d-%H%M%S}"


def point_latest(run_dir: Path) -> None:
    """`<parent>/latest` -> run_dir, replaced atomically."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{run_dir.name}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)


def environment(device: torch.device) -> dict:
    return {"lstmcli": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads()}


def _prepared(cfg: Config, quiet: bool) -> Prepared:
    start = time.perf_counter()
    data = prepare(cfg.data, quiet=quiet)
    n = {s: len(data.splits[s]) for s in ("train", "val", "test")}
    if not n["train"] or not n["val"]:
        raise LstmcliError(f"dataset {cfg.data.dataset}: {n['train']} training and {n['val']} validation "
                           "examples; both need at least one (check val_fraction and max_*_examples)")
    log(f"{n['train']} train / {n['val']} val / {n['test']} test examples, vocabulary {len(data.vocab)} "
        f"(ready in {time.perf_counter() - start:.1f}s)", quiet)
    return data


def _epoch_line(stats: dict, epochs: int, improved: bool) -> str:
    return (f"epoch {stats['epoch']}/{epochs}: train loss {stats['train_loss']:.4f} acc {stats['train_accuracy']:.4f}"
            f" | val loss {stats['val_loss']:.4f} acc {stats['val_accuracy']:.4f} | {stats['seconds']:.1f}s "
            f"{stats['tokens_per_s']:,.0f} tok/s, padding {stats['padding']:.1%}{'  *best' if improved else ''}")


def run(cfg: Config, quiet: bool = False) -> Path:
    """Train as `cfg` says; returns the run folder (config.json, metrics.json, best/, last/)."""
    device = resolve_device(cfg.train.device.value)
    data = _prepared(cfg, quiet)  # before the run folder: bad data must leave nothing behind
    train, val, test = (data.splits[s] for s in ("train", "val", "test"))
    run_dir = Path(cfg.train.out) if cfg.train.out else default_out(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))
    torch.manual_seed(cfg.train.seed)
    model = checkpoint.build_model(cfg, len(data.vocab), len(data.label_names)).to(device)
    optimizer = make_optimizer(model, cfg)
    metrics = {"data": {**{s: len(data.splits[s]) for s in data.splits}, "vocab": len(data.vocab),
                        "labels": data.label_names},
               "environment": environment(device), "history": [], "best_epoch": None}
    log(f"run folder {run_dir}; {sum(p.numel() for p in model.parameters()):,} parameters on {device}", quiet)
    t, max_len, best_acc = cfg.train, cfg.data.max_length, -1.0
    save = partial(checkpoint.save, cfg=cfg, vocab=data.vocab, label_names=data.label_names, model=model)
    lengths = truncated_lengths(train, max_len)
    for epoch in range(1, t.epochs + 1):
        batches = bucket_batches(lengths, t.batch_size, t.seed, epoch)
        with tqdm(total=len(batches), desc=f"epoch {epoch}/{t.epochs}", leave=False,
                  disable=quiet or not sys.stderr.isatty()) as bar:
            stats = train_one_epoch(model, train, batches, optimizer, device, max_len, t.grad_clip, bar)
        val_report = evaluate(model, val, device, t.batch_size, max_len, data.label_names)
        stats = {"epoch": epoch, **stats, "padding": padding_share(batches, lengths),
                 **{f"val_{k}": val_report[k] for k in ("loss", "accuracy", "macro_f1")}}
        metrics["history"].append(stats)
        improved = val_report["accuracy"] > best_acc
        if improved:
            best_acc, metrics["best_epoch"] = val_report["accuracy"], epoch
            save(run_dir / "best", metrics={"epoch": epoch, "val": val_report})
        save(run_dir / "last", metrics={"epoch": epoch, "val": val_report})
        write_json(run_dir / "metrics.json", metrics)
        if epoch == 1:
            point_latest(run_dir)  # once it holds a checkpoint to use
        log(_epoch_line(stats, t.epochs, improved), quiet)
    best = checkpoint.load(run_dir / "best", str(device))
    metrics["test"] = evaluate(best.model, test, device, t.batch_size, max_len, data.label_names)
    write_json(run_dir / "metrics.json", metrics)
    log(f"test accuracy of best/ (epoch {metrics['best_epoch']}): {metrics['test']['accuracy']:.4f} "
        f"(n={metrics['test']['n']})", quiet)
    return run_dir
