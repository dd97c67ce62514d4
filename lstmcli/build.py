"""From a run's config to a model: the implementation `auto` picks, the ModelSpec, and the C++ kernels
that the scratch encoders run."""

from __future__ import annotations

import dataclasses
from enum import Enum

import torch

from . import native
from .config import Encoder, Impl, ModelConfig, Precision
from .models.classifier import TextClassifier
from .models.spec import ModelSpec


def resolve_impl(cfg: ModelConfig, device: torch.device | str = "cpu") -> tuple[Impl, str]:
    """The implementation `cfg` runs on `device` (its precision already resolved), and why.

    `auto` picks scratch where it is the faster one and builtin elsewhere. Both give the same function
    of the same weights (one state_dict), so the pick changes speed, not results. Measured with `lstmcli
    bench` (BiLSTM 256, batch 64, lengths 50-400, 2 threads, 2-core AVX2 EPYC), two runs: training
    21,989 and 22,262 tokens/s against 19,689 and 18,266, inference 64,807 and 69,586 against 60,759 and
    58,947. Not measured, so not picked: GRU and RNN (the RNN has no C++ loop), bfloat16 (scratch is
    float32), CUDA and MPS (scratch's loops are for CPUs)."""
    if cfg.impl is not Impl.auto:
        return cfg.impl, f"{cfg.impl.value} (as configured)"
    if cfg.peephole:
        return Impl.scratch, "scratch (auto: peephole connections are scratch's)"
    device = torch.device(device)
    if device.type != "cpu" or cfg.precision is Precision.bf16 or cfg.encoder is not Encoder.lstm:
        return Impl.builtin, f"builtin (auto: scratch is picked for an LSTM on a CPU in fp32, not for a " \
                             f"{cfg.encoder.value} on {device.type} in {cfg.precision.value})"
    if not native.ensure():
        return Impl.builtin, "builtin (auto: the scratch C++ kernels did not build here)"
    return Impl.scratch, "scratch (auto: its C++ LSTM kernels, faster than nn.LSTM's on a CPU)"


def model_spec(cfg: ModelConfig, vocab_size: int, num_classes: int,
               device: torch.device | str = "cpu") -> ModelSpec:
    """The spec of `cfg`'s model on `device` (its precision already resolved: fp32 or bf16)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields["impl"] = resolve_impl(cfg, device)[0]
    return ModelSpec(vocab_size=vocab_size, num_classes=num_classes,
                     **{k: v.value if isinstance(v, Enum) else v for k, v in fields.items()})


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int,
                device: torch.device | str = "cpu") -> TextClassifier:
    """`cfg`'s model, built to run on `device` (it is not moved there)."""
    spec = model_spec(cfg, vocab_size, num_classes, device)
    if spec.impl == "scratch":
        native.ensure()  # the C++ time loops when they build here; the Python ones otherwise
    return TextClassifier(spec)
