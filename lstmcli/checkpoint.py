"""A checkpoint is a folder: model.safetensors, config.json, vocab.json, labels.json, metrics.json.

Weights are safetensors, which hold tensors only, so loading never runs code from the file. Saving
writes a sibling temporary folder and swaps it in (fsutil.replace_dir): a kill at any instant leaves
either the old or the new checkpoint under its name, or the old one as `.<name>.old`, which load()
renames back by itself.
Checkpoints written before calibration existed lack the branch weights; they load with them all ones,
which is how they predicted. Those written before the weights' rename hold them as `branch_scale`, and
those written before the cell's rename say `encoder` in config.json (config.py maps the old name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from lstmcli import fsutil
from lstmcli.config import Config, Impl, Precision, apply, from_dict, to_dict
from lstmcli.data.text import Vocab
from lstmcli.errors import CheckpointError, ConfigError
from lstmcli.fsutil import honour_umask, recover_dir, replace_dir, temp_dir, write_failed, write_json
from lstmcli.models.spec import ModelSpec

if TYPE_CHECKING:  # torch is imported where weights are read or written: resolve() and the files' checks
    from lstmcli.models.classifier import TextClassifier  # serve the onnx backend without it
    from lstmcli.runtime.plan import Choice

log = logging.getLogger(__name__)
FILES = ("model.safetensors", "config.json", "vocab.json", "labels.json")
STATE_FILE = "trainer_state.pt"  # last/'s trainer state (training/state.py), to resume from
LEGACY_WEIGHT_NAMES = {"branch_scale": "branch_weights"}  # old name in model.safetensors -> new


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
    from safetensors.torch import save_file
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
            import torch
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


def files_digest(path: Path) -> str:
    """SHA-256 over a checkpoint folder's FILES (weights, config, vocabulary, labels), each with its name:
    what ties an export to the checkpoint it was made from (any of them changed: another model)."""
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(name.encode() + b"\0")
        with open(Path(path) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"broken checkpoint: cannot read {path} ({exc})") from None


def _check_sizes(path: Path, spec: ModelSpec) -> None:
    """Refuse a config.json that does not describe model.safetensors before anything is allocated: the
    model it describes is built first, so an edited hidden_size of 200,000 would otherwise take
    gigabytes before the weights fail to fit. The file's header says how many numbers it holds."""
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), "pt") as fh:
            names = [k for k in fh.keys() if k not in ("branch_weights", *LEGACY_WEIGHT_NAMES)]  # noqa: SIM118
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in names)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"broken checkpoint: {weights} ({first})") from None
    params, buffers = spec.parameter_count()
    expected = params + buffers - len(spec.branches)  # branch_weights aside
    if stored != expected:
        raise CheckpointError(f"broken checkpoint: {path / 'config.json'} describes a model of {expected:,} "
                              f"numbers, {weights} holds {stored:,}")


def resolve(path: Path) -> Path:
    """The checkpoint `path` names: itself, or for a run folder (it holds best/ and no weights of its
    own) its best/, which one info line says. Every command and API call that takes a checkpoint takes
    a run folder this way."""
    path = Path(path)
    best = path / "best"
    if (path / "model.safetensors").exists():
        return path
    if best.is_dir() or fsutil.old_dir(best).is_dir():
        log.info(f"{path} is a run folder: using its best checkpoint, {best}")
        return best
    if (path / "last" / "model.safetensors").is_file():
        raise CheckpointError(f"{path} is a run folder without best/ (it stopped before its first epoch "
                              f"ended); its last/ is --checkpoint {path / 'last'}")
    return path


def _read_files(path: Path) -> tuple[Config, Vocab, list[str], dict]:
    """The checkpoint folder's config, vocabulary, labels and metrics, each checked; a save cut short
    between its renames is restored first."""
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
    if labels == []:  # what lstmcli pretrain writes (training/pretrain.py)
        raise CheckpointError(f"{path} is a pretrained encoder (lstmcli pretrain), not a classifier: train "
                              f"one from it with lstmcli train --init-from {path}")
    if not (isinstance(labels, list) and len(labels) >= 2 and len(set(map(str, labels))) == len(labels)
            and all(isinstance(x, str) and x.strip() and not set(x) & set("\t\n\r") for x in labels)):
        raise CheckpointError(f"broken checkpoint: {path / 'labels.json'} is not a list of two or more "
                              "distinct label names (strings without tabs or line breaks)")
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"broken checkpoint: {path / 'metrics.json'} is not a JSON object")
    return cfg, vocab, [str(x) for x in labels], metrics


def read_vocab(path: Path) -> Vocab:
    """The vocabulary of the checkpoint folder `path`."""
    try:
        return Vocab.from_json((path / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"broken checkpoint: cannot read {path / 'vocab.json'} ({exc})") from None


def read_pretrained(path: Path) -> tuple[Config, Vocab, dict]:
    """A pretraining checkpoint's config, vocabulary and metrics (lstmcli pretrain writes them as a
    classifier's, with an empty labels.json); a classifier or anything else is a CheckpointError."""
    recover_dir(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if not path.is_dir() or missing:
        raise CheckpointError(f"no pretrained encoder at {path} (expected a folder lstmcli pretrain wrote, "
                              f"e.g. RUN/best, holding {', '.join(FILES)})")
    metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    if _read_json(path / "labels.json") != [] or not isinstance(metrics, dict) or \
            metrics.get("kind") != "language_model":
        raise CheckpointError(f"{path} is not a pretrained encoder (lstmcli pretrain writes those); a "
                              f"classifier's checkpoint cannot be an --init-from")
    try:
        cfg = from_dict(_read_json(path / "config.json"), str(path / "config.json"))
        vocab = Vocab.from_json((path / "vocab.json").read_text(encoding="utf-8"))
    except (ConfigError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"broken pretrained checkpoint {path}: {exc}") from None
    return cfg, vocab, metrics


def load(path: Path, device: str = "cpu", impl: str | None = None, precision: str | None = None,
         choice: Choice | None = None) -> Checkpoint:
    """Load a checkpoint folder; anything missing or malformed is a CheckpointError.

    `impl` runs the weights in another encoder implementation (builtin <-> scratch share a state_dict);
    `precision` (auto, fp32, bf16) overrides the one it was trained at, which otherwise runs where the
    device runs it natively (runtime/plan.choose). A training run passes the `choice` it made instead,
    so that it decides once. The returned config says how it runs: its impl as asked (`auto` stays
    auto), its precision the one chosen.
    """
    import torch
    from safetensors.torch import load_file

    from lstmcli.runtime.plan import build_model, choose, model_spec
    path = resolve(path) if choice is None else Path(path)  # (a run loads its own best/ and last/)
    cfg, vocab, labels, metrics = _read_files(path)
    run_impl = Impl(impl) if impl is not None else cfg.model.impl
    if choice is None:
        choice = choose(dataclasses.replace(cfg.model, impl=run_impl), torch.device(device),
                        trained=cfg.model.precision, requested=Precision(precision) if precision else None)
    try:
        cfg = apply(cfg, {"model": {"impl": run_impl.value, "precision": choice.precision.value}},
                    f"--impl {run_impl.value} for {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    spec = model_spec(cfg.model, len(vocab), len(labels), choice, cfg.data.multi_label)
    _check_sizes(path, spec)
    model = build_model(spec)
    try:
        state = load_file(str(path / "model.safetensors"), device=device)
        for old, new in LEGACY_WEIGHT_NAMES.items():
            if old in state and new not in state:  # (both: an unexpected key, refused below)
                state[new] = state.pop(old)
        # checkpoints written before calibration existed have no branch weights: all ones is how they ran
        state.setdefault("branch_weights", torch.ones_like(model.branch_weights))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        # load_state_dict's message is a header line, then a line per problem: keep the problems
        what = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        raise CheckpointError(f"broken checkpoint: {path / 'model.safetensors'} "
                              f"({what[:300] or type(exc).__name__})") from None
    if not bool(torch.isfinite(model.branch_weights).all()):
        raise CheckpointError(f"broken checkpoint: {path / 'model.safetensors'} holds branch weights that "
                              f"are not finite ({model.branch_weights.tolist()})")
    model.to(device).eval()
    if choice.note:
        log.warning(choice.note)
    return Checkpoint(path, cfg, vocab, labels, model, metrics, choice.note)
