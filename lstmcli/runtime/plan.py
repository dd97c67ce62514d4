"""How a model computes: one decision of its implementation and precision for a device (`choose`), the
ModelSpec that decision gives, the model built from it, and a training run's launch (`plan_run`).

Both implementations give the same function of the same weights (one state_dict), so the pick changes
speed, not results; which impls can run what is models/spec.py's IMPLS table, which cells impl `auto`
runs with scratch is models/cells.py's CELLS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

import torch

from lstmcli.config import Config, Impl, ModelConfig, Precision
from lstmcli.models.cells import CELLS
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec, impls_for
from lstmcli.runtime import distributed, native
from lstmcli.runtime.device import resolve_device
from lstmcli.runtime.distributed import Dist
from lstmcli.runtime.precision import for_inference, for_training


@dataclass(frozen=True)
class Choice:
    """The implementation and precision a model runs at on one device."""

    impl: Impl  # builtin or scratch, never auto
    precision: Precision  # fp32 or bf16, never auto
    why: str  # "precision ..., impl ...": for the run's log line
    note: str | None = None  # inference: why it runs at another precision than it was trained at


def _only_impl(model: ModelConfig) -> Impl:
    """`model.impl`, or where it is `auto` and one implementation alone can run the model (peephole
    connections), that one: the precision rules must see it."""
    able = impls_for(model.cell.value, model.peephole)
    return Impl(able[0]) if model.impl is Impl.auto and len(able) == 1 else model.impl


def _impl(model: ModelConfig, precision: Precision, device: torch.device) -> tuple[Impl, str]:
    """The implementation `model` runs at `precision` on `device`, and why. `auto` picks scratch where
    its C++ loops are the faster ones (the cell's `auto_scratch`, on a CPU in fp32), builtin elsewhere."""
    if model.impl is not Impl.auto:
        return model.impl, f"{model.impl.value} (as configured)"
    able = impls_for(model.cell.value, model.peephole, precision.value)
    if len(able) == 1:
        return Impl(able[0]), f"{able[0]} (auto: the only one that runs this model)"
    cell = CELLS[model.cell.value]
    if device.type != "cpu" or not cell.auto_scratch:  # (bf16: the one-impl case above)
        return Impl.builtin, (f"builtin (auto: scratch is picked on a CPU in fp32 for "
                              f"{', '.join(c for c in CELLS if CELLS[c].auto_scratch)}, not for a "
                              f"{cell.name} on {device.type} in {precision.value})")
    if not native.ensure():
        return Impl.builtin, "builtin (auto: the scratch C++ kernels did not build here)"
    return Impl.scratch, f"scratch (auto: its C++ {cell.torch_module} kernels, faster than PyTorch's here)"


def choose(model: ModelConfig, device: torch.device, trained: Precision | None = None,
           requested: Precision | None = None) -> Choice:
    """The implementation and precision `model` runs at on `device`: decided here, once per run.

    Training (`trained` None): `model.precision` is the request (auto, fp32, bf16). Inference: the
    checkpoint was trained at `trained`, and `requested` (--precision) overrides it; precision.py's
    for_inference says when the two differ."""
    impl = _only_impl(model)  # what the precision rules see
    if trained is None:
        precision, precision_why = for_training(model.precision, impl, device)
        note = None
    else:
        precision, note = for_inference(trained, requested, impl, device)
        precision_why = precision.value
    impl, impl_why = _impl(model, precision, device)
    return Choice(impl, precision, f"precision {precision_why}, impl {impl_why}", note)


def model_spec(model: ModelConfig, vocab_size: int, num_classes: int, choice: Choice,
               multi_label: bool = False) -> ModelSpec:
    """The spec of `model`'s network as `choice` runs it (`multi_label`: the data's DataConfig field)."""
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    fields |= {"impl": choice.impl, "precision": choice.precision}
    return ModelSpec(vocab_size=vocab_size, num_classes=num_classes, multi_label=multi_label,
                     **{k: v.value if isinstance(v, Enum) else v for k, v in fields.items()})


def build_model(spec: ModelSpec) -> TextClassifier:
    """The model of `spec`, on the CPU; a scratch encoder gets the C++ time loops where they build."""
    if spec.impl == "scratch":
        native.ensure()  # else the Python loops
    return TextClassifier(spec)


@dataclass(frozen=True)
class RunPlan:
    """Where and how a training run computes: its place in a torchrun launch, device, CPU threads,
    implementation and precision."""

    dist: Dist
    device: torch.device
    choice: Choice
    saved_cfg: Config  # what its checkpoints record: the config with the precision it trains at

    @property
    def line(self) -> str:
        """The tail of the run's first log line."""
        if not self.dist.enabled:
            return self.choice.why
        return (f"{self.choice.why}; {self.dist.world_size} processes ({self.dist.backend}), "
                f"{torch.get_num_threads()} CPU thread(s) each")

    def launch_record(self) -> dict:
        """How the run was launched, kept in its config.json beside the config (resume reads it again
        from the launch it runs in, so it is a record, not a setting)."""
        return {"world_size": self.dist.world_size, "backend": self.dist.backend,
                "threads_per_process": torch.get_num_threads()}


def plan_run(cfg: Config) -> RunPlan:
    """Join the torchrun launch (if any), take the device and CPU threads, and choose the impl and
    precision: settled before the data, so that a bf16 request the CPU cannot run fails at once."""
    dist, device = distributed.start(distributed.from_env(), resolve_device(cfg.train.device.value))
    if device.type == "cpu":
        torch.set_num_threads(distributed.threads_per_process(dist, cfg.train.threads))
    choice = choose(cfg.model, device)
    saved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, precision=choice.precision))
    return RunPlan(dist, device, choice, saved)
