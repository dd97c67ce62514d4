"""A checkpoint is a folder: model.safetensors, config.json, vocab.json, labels.json, metrics.json.

Weights are safetensors, which hold tensors only, so loading never runs code from the file. Saving
writes a sibling temporary folder and swaps it in (fsutil.replace_dir): a kill at any instant leaves
either the old or the new checkpoint under its name, or the old one as `.<name>.old`, which load()
renames back by itself.
Checkpoints written before calibration existed lack `branch_scale`; they load with it all ones, which
is how they predicted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import fsutil
from .build import build_model, model_spec
from .config import Config, Impl, Precision, apply, from_dict, to_dict
from .errors import CheckpointError, ConfigError
from .fsutil import honour_umask, recover_dir, replace_dir, temp_dir, write_failed, write_json
from .models.classifier import TextClassifier
from .precision import bound_impl, for_inference
from .text import Vocab
from .train_state import STATE_FILE

log = logging.getLogger(__name__)
FILES = ("model.safetensors", "config.json", "vocab.json", "labels.json")


@dataclass
class Checkpoint:
    path: Path
    config: Config
    vocab: Vocab
    label_names: list[str]
    model: TextClassifier
    metrics: dict
    note: str | None = None  # why it runs at another precision than it was trained at (also logged)


def _write_weights(folder: Path, model: TextClassifier, metrics: dict) -> None:
    """model.safetensors and metrics.json in `folder` (a checkpoint's temporary folder)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    honour_umask(folder / "model.safetensors")
    write_json(folder / "metrics.json", metrics)


def _carry_over(old: Path, tmp: Path, rewritten: set[str]) -> None:
    """Copy into the new folder `tmp` whatever the old checkpoint folder `old` holds that this write does
    not produce (a user's notes, an export beside the weights), so that the swap deletes nothing that it
    did not copy: files, folders and links alike."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name in rewritten:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), tmp / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        elif entry.is_file():
            shutil.copy2(entry, tmp / entry.name)


def save(path: Path, cfg: Config, vocab: Vocab, label_names: list[str], model: TextClassifier,
         metrics: dict, trainer_state: dict | None = None) -> None:
    """Write the checkpoint folder `path` (and, to resume from, `trainer_state.pt`) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.remove_stale_parts(path)  # what an earlier save, killed mid-way, left
    tmp = temp_dir(path)
    try:
        _write_weights(tmp, model, metrics)
        write_json(tmp / "config.json", to_dict(cfg))
        (tmp / "vocab.json").write_text(vocab.to_json(), encoding="utf-8")
        write_json(tmp / "labels.json", label_names)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        _carry_over(path, tmp, {*FILES, "metrics.json", STATE_FILE})
        replace_dir(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise write_failed(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def update(path: Path, model: TextClassifier, metrics: dict) -> None:
    """Give the checkpoint at `path` `model`'s weights and `metrics`; every other file in it (config,
    vocabulary, labels, trainer state) stays as it is, byte for byte. A changed copy is swapped in, as
    save() does, so a crash leaves the checkpoint as it was."""
    path = Path(path)
    recover_dir(path)
    tmp = temp_dir(path)
    try:
        _carry_over(path, tmp, {"model.safetensors", "metrics.json"})  # config, vocabulary, labels, ...
        _write_weights(tmp, model, metrics)
        replace_dir(tmp, path)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise write_failed(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"broken checkpoint: cannot read {path} ({exc})") from None


def _check_sizes(path: Path, cfg: Config, vocab_size: int, num_classes: int, device: str) -> None:
    """Refuse a config.json that does not describe model.safetensors before anything is allocated: the
    model it describes is built first, so an edited hidden_size of 200,000 would otherwise take
    gigabytes before the weights fail to fit. The file's header says how many numbers it holds."""
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), "pt") as fh:
            names = [k for k in fh.keys() if k != "branch_scale"]  # noqa: SIM118 (safe_open has no __iter__)
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in names)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"broken checkpoint: {weights} ({first})") from None
    params, buffers = model_spec(cfg.model, vocab_size, num_classes, device).parameter_count()
    expected = params + buffers - (2 if cfg.model.ngram_buckets else 1)  # branch_scale aside
    if stored != expected:
        raise CheckpointError(f"broken checkpoint: {path / 'config.json'} describes a model of {expected:,} "
                              f"numbers, {weights} holds {stored:,}")


def load(path: Path, device: str = "cpu", impl: str | None = None,
         precision: str | None = None) -> Checkpoint:
    """Load a checkpoint folder; anything missing or malformed is a CheckpointError.

    `impl` runs the weights in another encoder implementation (builtin <-> scratch share a state_dict);
    `precision` (auto, fp32, bf16) overrides the one it was trained at, which otherwise runs where the
    device runs it natively (see precision.for_inference). The returned config says how it runs.
    """
    path = Path(path)
    if recover_dir(path):
        log.warning(f"{path} was restored from {path.parent / ('.' + path.name + '.old')}: a save was cut "
                    "short between its two renames")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path} (expected a folder holding {', '.join(FILES)})")
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"not an lstmcli checkpoint: {path} lacks {', '.join(missing)}")
    try:
        cfg = from_dict(_read_json(path / "config.json"), str(path / "config.json"))
        vocab = Vocab.from_json((path / "vocab.json").read_text(encoding="utf-8"))
    except (ConfigError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"broken checkpoint {path}: {exc}") from None
    labels = _read_json(path / "labels.json")
    if not (isinstance(labels, list) and len(labels) >= 2 and len(set(map(str, labels))) == len(labels)
            and all(isinstance(x, str) and x.strip() and not set(x) & set("\t\n\r") for x in labels)):
        raise CheckpointError(f"broken checkpoint: {path / 'labels.json'} is not a list of two or more "
                              "distinct label names (strings without tabs or line breaks)")
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    run_impl = Impl(impl) if impl is not None else cfg.model.impl
    run_precision, note = for_inference(cfg.model.precision, Precision(precision) if precision else None,
                                        bound_impl(run_impl, cfg.model.peephole), torch.device(device))
    try:
        cfg = apply(cfg, {"model": {"impl": run_impl.value, "precision": run_precision.value}},
                    f"--impl {run_impl.value} for {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    _check_sizes(path, cfg, len(vocab), len(labels), device)
    model = build_model(cfg.model, len(vocab), len(labels), device)
    try:
        state = load_file(str(path / "model.safetensors"), device=device)
        state.setdefault("branch_scale", torch.ones_like(model.branch_scale))  # (written before calibration)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"broken checkpoint: {path / 'model.safetensors'} ({first})") from None
    model.to(device).eval()
    if note:
        log.warning(note)
    return Checkpoint(path, cfg, vocab, [str(x) for x in labels], model, metrics, note)
