"""Which float precision a model runs at: a request (auto, fp32, bf16) resolved against the device.

bf16 means bfloat16 autocast: the matmuls and the fused recurrent kernels take bfloat16 copies of the
float32 weights, while weights, optimizer state and loss stay float32 (so a checkpoint is the same
float32 file at either precision). It pays only where the hardware multiplies bfloat16 natively:
  * CUDA GPUs of compute capability 8.0 and up;
  * CPUs with AVX-512-BF16 or AMX, through oneDNN. A CPU with AVX-512 but neither gets oneDNN's
    emulation, slower than float32; an AVX2-only CPU has no bfloat16 recurrent kernel at all, and
    nn.LSTM under autocast fails there ("could not create a primitive descriptor for the LSTM
    forward propagation primitive").
`auto` picks bf16 only on the first kind (and fp32 for the scratch kernels, which are float32).
torch's own check, `_is_mkldnn_bf16_supported`, follows ONEDNN_MAX_CPU_ISA, so a capped oneDNN (the
test suite's AVX2 emulation) is seen as the CPU it imitates.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from lstmcli.config import Impl, Precision
from lstmcli.errors import LstmcliError
from lstmcli.models.spec import IMPLS

NATIVE, NOT_NATIVE, UNAVAILABLE = "native", "not native", "unavailable"

# oneDNN ISA names below AVX512_CORE_BF16: with oneDNN capped at one of these (ONEDNN_MAX_CPU_ISA, or
# its older name DNNL_MAX_CPU_ISA), no bfloat16 instruction runs even on a CPU that has them.
_ONEDNN_CAPS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                             "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class Bf16Support:
    level: str  # NATIVE, NOT_NATIVE (runs, slower than fp32) or UNAVAILABLE (fails)
    why: str  # what the device is, for messages: "CPU with AVX-512-BF16"


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)  # private helpers of torch.cpu (cpuinfo), present since 2.3
    return bool(check()) if check is not None else False


def _cpu_support() -> Bf16Support:
    capability = torch.backends.cpu.get_cpu_capability()
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return Bf16Support(UNAVAILABLE, f"CPU ({capability}) without bfloat16 support in oneDNN")
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    isa = "AMX" if _cpu_flag("_is_amx_tile_supported") else (
        "AVX-512-BF16" if _cpu_flag("_is_avx512_bf16_supported") else "")
    if isa and cap not in _ONEDNN_CAPS_WITHOUT_BF16:
        return Bf16Support(NATIVE, f"CPU with {isa}")
    return Bf16Support(NOT_NATIVE, f"CPU ({capability}) without AVX-512-BF16 or AMX, where oneDNN emulates "
                                   f"bfloat16 (slower than fp32)")


@functools.cache
def bf16_support(device_type: str) -> Bf16Support:
    """How `device_type` ('cpu', 'cuda', 'mps') runs the bfloat16 recurrent kernels."""
    if device_type == "cpu":
        return _cpu_support()
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Bf16Support(NATIVE, f"GPU {name} with native bfloat16")
        if torch.cuda.is_bf16_supported(including_emulation=True):
            return Bf16Support(NOT_NATIVE, f"GPU {name} without native bfloat16 (emulated, slower than fp32)")
        return Bf16Support(UNAVAILABLE, f"GPU {name} without bfloat16")
    return Bf16Support(NOT_NATIVE, f"{device_type} device, not known to run bfloat16 recurrent kernels "
                                   f"natively")


def _runs_bf16(impl: Impl) -> bool:
    """Whether `impl` computes in bfloat16 (IMPLS); `auto` can pick one that does."""
    return impl is Impl.auto or "bf16" in IMPLS[impl.value].precisions


def _in(impl: Impl) -> str:
    """What `impl` computes in, for messages: "impl scratch is float32"."""
    return f"impl {impl.value} is {', '.join(p.replace('fp', 'float') for p in IMPLS[impl.value].precisions)}"


def _bf16_or_refuse(device: torch.device, impl: Impl, what: str) -> tuple[Precision, str]:
    """An explicit bf16 request: refused where it cannot run, allowed with a warning where it is slow."""
    if not _runs_bf16(impl):
        able = " or ".join(i for i, kind in IMPLS.items() if "bf16" in kind.precisions)
        raise LstmcliError(f"precision bf16 needs impl {able} ({_in(impl)}); use --precision fp32")
    support = bf16_support(device.type)
    if support.level == UNAVAILABLE:
        raise LstmcliError(f"precision bf16 cannot run on this {support.why}; use --precision fp32, "
                           f"or auto, which picks bf16 only where it is native")
    note = "" if support.level == NATIVE else "; expect it to be slower than fp32"
    return Precision.bf16, f"bf16 ({what}; {support.why}{note})"


def for_training(requested: Precision, impl: Impl, device: torch.device) -> tuple[Precision, str]:
    """The precision a run trains at, and a line saying why."""
    if requested is Precision.fp32:
        return Precision.fp32, "fp32 (as configured)"
    if requested is Precision.bf16:
        return _bf16_or_refuse(device, impl, "as configured")
    if not _runs_bf16(impl):
        return Precision.fp32, f"fp32 (auto: {_in(impl)})"
    support = bf16_support(device.type)
    picked = Precision.bf16 if support.level == NATIVE else Precision.fp32
    return picked, f"{picked.value} (auto: {support.why})"


def for_inference(trained: Precision, requested: Precision | None, impl: Impl,
                  device: torch.device) -> tuple[Precision, str | None]:
    """The precision `eval`/`predict` run a checkpoint trained at `trained`, and a note for stderr when
    that is not the trained one. With no request, a bf16 checkpoint runs in fp32 where bf16 is not
    native: its weights are float32, and fp32 is then both faster and more exact."""
    if requested is None and trained is Precision.bf16:
        support = bf16_support(device.type)
        if support.level == NATIVE and _runs_bf16(impl):
            return Precision.bf16, None
        reason = support.why if _runs_bf16(impl) else _in(impl)
        insist = "; --precision bf16 to run it in bf16 anyway" if support.level == NOT_NATIVE else ""
        return Precision.fp32, f"this checkpoint was trained in bf16; running it in fp32 ({reason}){insist}"
    if requested is None or requested is Precision.auto:  # trained: fp32, or auto in a hand-written config
        return for_training(requested or trained, impl, device)[0], None
    if requested is Precision.bf16:
        return _bf16_or_refuse(device, impl, "--precision bf16")[0], None
    return Precision.fp32, None
