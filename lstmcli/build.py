"""From a run's config to a model: the ModelSpec, and the C++ kernels that the scratch encoders run."""

from __future__ import annotations

import dataclasses
from enum import Enum

from . import native
from .config import ModelConfig
from .models.classifier import TextClassifier
from .models.spec import ModelSpec


def model_spec(cfg: ModelConfig, vocab_size: int, num_classes: int) -> ModelSpec:
    """The spec of `cfg`'s model (its precision already resolved: fp32 or bf16)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return ModelSpec(vocab_size=vocab_size, num_classes=num_classes,
                     **{k: v.value if isinstance(v, Enum) else v for k, v in fields.items()})


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int) -> TextClassifier:
    spec = model_spec(cfg, vocab_size, num_classes)
    if spec.impl == "scratch":
        native.ensure()  # the C++ time loops when they build here; the Python ones otherwise
    return TextClassifier(spec)
