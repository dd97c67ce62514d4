"""What a bug report needs to know about this machine and installation, for `lstmcli env`.

`collect()` returns a JSON-able dict with one section per heading of `format_text()`: lstmcli (and
torch), python, cpu, bf16, kernels (the scratch encoders' C++ time loops), cuda, threads, packages.
It reads and never changes: no thread count, environment variable or torch setting is left changed,
and nothing is printed. Only `build_kernels=True` does work with an effect - native.ensure() builds or
loads the kernels and installs them, as a scratch training run would.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import torch

from lstmcli.models import recurrence
from lstmcli.runtime import native, precision
from lstmcli.runtime.device import resolve_device

# The x86 flags that decide which kernels run: torch's dispatch (avx2, avx512f) and oneDNN's bfloat16
# and int8 paths (avx512_bf16, avx512_vnni, amx_*).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
# torch.cpu's private cpuinfo checks, for CPUs without /proc/cpuinfo; amx_bf16 has none
_TORCH_CPU_CHECKS = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
                     "avx512_bf16": "_is_avx512_bf16_supported", "avx512_vnni": "_is_avx512_vnni_supported",
                     "amx_tile": "_is_amx_tile_supported"}
# Environment variables that cap the instruction set torch, oneDNN or MKL use (the test suite's AVX2
# emulation sets them): the capability and bf16 then describe the imitated CPU, the flags the real one.
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
PACKAGES = ("numpy", "safetensors", "typer", "onnx", "onnxruntime", "tensorboardX", "fastapi", "uvicorn")


def collect(build_kernels: bool = False) -> dict:
    """Everything `lstmcli env` reports, one section per heading; with `build_kernels`, the C++ kernels
    are built (or loaded from the cache) first, so that the report says whether that works and why not."""
    return {"lstmcli": _versions(), "python": _python(), "cpu": _cpu(), "bf16": _bf16(),
            "kernels": _kernels(build_kernels), "cuda": _cuda(), "threads": _threads(),
            "packages": {name: _version_of(name) for name in PACKAGES}}


def _version_of(package: str) -> str | None:
    """The installed version of `package` from its metadata (importing it could take seconds), or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    """lstmcli's version, and torch's with the build it is (cpu, cuda X.Y or rocm X.Y)."""
    if torch.version.cuda:
        build = f"cuda {torch.version.cuda}"
    elif getattr(torch.version, "hip", None):
        build = f"rocm {torch.version.hip}"
    else:
        build = "cpu"
    from lstmcli import __version__  # the running code's own (installed metadata can be an older install's)
    return {"version": __version__, "torch": torch.__version__, "torch_build": build}


def _python() -> dict:
    """The interpreter and the operating system it runs on."""
    return {"version": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "os": f"{platform.system()} {platform.release()}".strip(),
            "machine": platform.machine()}


def _cpuinfo() -> dict[str, str]:
    """The fields of /proc/cpuinfo, first occurrence of each ({} where there is none: macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_flags(cpuinfo: dict[str, str]) -> dict[str, bool | None]:
    """Each of CPU_FLAGS: present or not; None where neither /proc/cpuinfo nor torch can tell."""
    listed = cpuinfo.get("flags", cpuinfo.get("Features"))  # "Features" on ARM, where these are all absent
    if listed is not None:
        present = set(listed.split())
        return {flag: flag in present for flag in CPU_FLAGS}
    flags: dict[str, bool | None] = {}
    for flag in CPU_FLAGS:
        check = getattr(torch.cpu, _TORCH_CPU_CHECKS.get(flag, ""), None)
        flags[flag] = bool(check()) if check is not None else None
    return flags


def _cpu() -> dict:
    """The CPU's model, the instruction set torch dispatches to, its relevant flags, and any cap on them."""
    cpuinfo = _cpuinfo()
    model = cpuinfo.get("model name") or cpuinfo.get("Hardware") or platform.processor() or "unknown"
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "onednn": torch.backends.mkldnn.is_available(), "flags": _cpu_flags(cpuinfo),
            "overrides": {name: os.environ.get(name) for name in ISA_OVERRIDES}}


def _bf16_on(device_type: str) -> dict:
    """precision.bf16_support's verdict for one device type, as plain values."""
    support = precision.bf16_support(device_type)
    return {"supported": support.level != precision.UNAVAILABLE, "native": support.level == precision.NATIVE,
            "level": support.level, "why": support.why}


def _bf16() -> dict:
    """bfloat16 on the CPU, and on the device `--device auto` picks where that is another one."""
    auto = resolve_device("auto").type
    devices = ["cpu"] if auto == "cpu" else ["cpu", auto]
    return {"auto_device": auto, **{name: _bf16_on(name) for name in devices}}


def _cache_dir() -> Path:
    """The folder torch.utils.cpp_extension builds into. Its own helper for this creates the folder, so
    the path is worked out here the same way: TORCH_EXTENSIONS_DIR as is, else the default root with a
    folder per Python version and accelerator."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return Path(root)
    from torch.utils import cpp_extension  # imported here, as in native.build: only this needs it

    if getattr(torch.version, "hip", None):
        accelerator = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda:
        accelerator = "cu" + torch.version.cuda.replace(".", "")
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(cpp_extension.get_default_build_root()) / f"{python}_{accelerator}"


def cached_build(name: str) -> tuple[Path, bool, bool]:
    """(folder, cached, stale) of the kernel build `name`: a library there that ninja would reuse, or one
    older than recurrence.cpp, which the next load rebuilds (the name changes with flags and torch, not
    with the source)."""
    folder = _cache_dir() / name
    library = folder / (name + (".pyd" if sys.platform == "win32" else ".so"))
    if not library.is_file():
        return folder, False, False
    stale = library.stat().st_mtime < native.SOURCE.stat().st_mtime
    return folder, not stale, stale


def _kernels(build_kernels: bool) -> dict:
    """Whether the scratch encoders run the C++ time loops, and if not, why; `build_kernels` tries."""
    enabled = os.environ.get("LSTMCLI_NATIVE", "1") != "0"
    name, _ = native.build_spec()
    folder, cached, stale = cached_build(name)
    if build_kernels and enabled:
        native.ensure()  # logs its one warning line when the build fails, as a training run would
    loaded = recurrence.native_kernels() is not None
    # unavailable_reason outlives a cleared ensure() cache (tests clear it): only a remembered run counts
    failure = native.unavailable_reason if native.ensure.cache_info().currsize else None
    info = {"enabled": enabled, "status": "", "reason": "", "in_use": loaded,
            "packed_gemm": native.uses_packed_gemm() if loaded else None,
            "isa": torch.backends.cpu.get_cpu_capability(), "module": name, "cache": str(folder),
            "cached": cached, "stale": stale, **native.toolchain()}
    info["status"], info["reason"] = _kernel_status(info, failure)
    return info


def _kernel_status(info: dict, failure: str | None) -> tuple[str, str]:
    """(status, reason) of the kernels described by `info`: disabled, in use, failed, cached, no compiler,
    no ninja, stale or not built."""
    python_loops = "the scratch encoders would run the Python loops"
    if not info["enabled"]:
        return "disabled", "LSTMCLI_NATIVE=0: the scratch encoders run the Python loops"
    if info["in_use"]:
        return "in use", "the scratch encoders run the C++ time loops"
    if failure:
        return "failed", failure
    if info["cached"]:
        return "cached", "built for this CPU and torch; loaded on the first scratch run"
    if info["compiler"] is None:
        return "no compiler", (f"C++ compiler '{info['compiler_command']}' not found (CXX, else c++ on "
                               f"PATH); {python_loops}")
    if info["ninja"] is None:
        return "no ninja", f"ninja not found; {python_loops}"
    if info["stale"]:
        return "stale", "the cached build is older than recurrence.cpp; rebuilt on the first scratch run"
    return "not built", "built on the first scratch run, then cached"


def _cuda() -> dict:
    """CUDA devices torch sees, with their compute capability and memory; CUDA is not initialised
    where none is available."""
    available = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if available else 0):
        props = torch.cuda.get_device_properties(index)
        devices.append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1)})
    cudnn = torch.backends.cudnn.version() if available else None
    return {"available": available, "device_count": len(devices), "devices": devices, "cudnn": cudnn,
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _threads() -> dict:
    """torch's intra-op thread count, the CPUs there are and those this process may run on, and the
    variables that set the thread pools' sizes."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"torch": torch.get_num_threads(), "cpu_count": os.cpu_count(), "affinity": affinity,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}


def _render(value) -> str:
    """One value as the text report shows it: yes/no, '-' for none, one line."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return " ".join(str(value).split())


def flatten(section: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(key, text) pairs of a section: nested dicts as dotted keys, list items as key[i]."""
    pairs: list[tuple[str, str]] = []
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs += flatten(value, f"{name}.")
        elif isinstance(value, list):
            if not value:
                pairs.append((name, _render(None)))
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    pairs += flatten(item, f"{name}[{i}].")
                else:
                    pairs.append((f"{name}[{i}]", _render(item)))
        else:
            pairs.append((name, _render(value)))
    return pairs


def format_text(info: dict) -> str:
    """`collect()`'s dict as aligned "key: value" lines under one heading per section, for a bug report."""
    blocks = []
    for heading, section in info.items():
        pairs = flatten(section) if isinstance(section, dict) else [("value", _render(section))]
        width = max((len(key) for key, _ in pairs), default=0) + 1
        lines = [f"  {key + ':':<{width}} {text}" for key, text in pairs]
        blocks.append("\n".join([heading, *lines]))
    return "\n\n".join(blocks) + "\n"
