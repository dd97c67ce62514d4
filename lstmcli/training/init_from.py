"""`train --init-from`: a classifier that starts from a pretrained embedding and recurrent encoder
(lstmcli pretrain), taking its vocabulary too, so that every word keeps the row it was pretrained in."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lstmcli.checkpoint import read_pretrained
from lstmcli.config import Config
from lstmcli.data.encode import EncodedData
from lstmcli.data.text import UNK_ID, Vocab
from lstmcli.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
# what must agree between the pretrained encoder and the classifier for its weights to fit
ARCHITECTURE = ("cell", "peephole", "embedding_dim", "hidden_size", "num_layers", "bidirectional")


def pretrained_folder(init_from: str) -> Path:
    """The checkpoint folder `init_from` names: itself, or a pretraining run folder's best/."""
    path = Path(init_from)
    if not (path / "model.safetensors").exists() and (path / "best").is_dir():
        return path / "best"
    return path


def pretrained_vocab(cfg: Config) -> Vocab | None:
    """The vocabulary a run with `cfg` uses instead of building one: its init_from's (None: none), after
    checking that the encoder there has the classifier's cell and sizes."""
    if not cfg.train.init_from:
        return None
    path = pretrained_folder(cfg.train.init_from)
    theirs, vocab, _ = read_pretrained(path)
    for name in ARCHITECTURE:
        ours, pre = (getattr(getattr(c.model, name), "value", getattr(c.model, name)) for c in (cfg, theirs))
        if ours != pre:
            raise ConfigError(f"config key 'model.{name}' is {ours!r} but the encoder in {path} was "
                              f"pretrained with {pre!r}; they must agree for --init-from")
    return vocab


def load_encoder(model: torch.nn.Module, cfg: Config, data: EncodedData) -> dict:
    """Copy the pretrained embedding and encoder weights into `model` (a TextClassifier built with the
    pretrained vocabulary); returns the run's record of it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = pretrained_folder(cfg.train.init_from)
    _, vocab, metrics = read_pretrained(path)
    try:
        state = load_file(str(path / "model.safetensors"))
        for part in ("embedding", "encoder"):
            mine = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            getattr(model, part).load_state_dict(mine)
    except (SafetensorError, RuntimeError, OSError) as exc:
        what = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        raise CheckpointError(f"broken pretrained checkpoint: {path / 'model.safetensors'} "
                              f"({what[:300] or type(exc).__name__})") from None
    ids = data.splits["train"].ids
    unknown = float((ids == UNK_ID).float().mean()) if len(ids) else 0.0
    record = {"path": str(path), "epoch": metrics.get("epoch"), "vocab": len(vocab),
              "val_perplexity": (metrics.get("val") or {}).get("perplexity"), "unknown_share": unknown}
    log.info(f"init from {path}: its embedding and encoder (epoch {record['epoch']}), and its vocabulary of "
             f"{len(vocab):,} words ({unknown:.1%} of this training split's tokens are out of it)")
    return record
