"""Builds and installs the C++ time loops of the scratch LSTM and GRU (recurrence.cpp here).

The scratch encoders run the Python loops of lstmcli/models/recurrence.py unless a kernel module has
been handed to `recurrence.use_native`. `ensure()` builds that module with torch.utils.cpp_extension
(a C++ compiler and ninja; about a minute the first time, then cached in
TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions) and hands it over. When it cannot be
built, the Python loops run - same results, slower - and one line on stderr says why.
LSTMCLI_NATIVE=0 skips the build.

The build is compiled for the instruction set torch itself dispatches to on this CPU (AVX512, AVX2,
or none of those: plain x86-64), never -march=native, and its cache folder is named for that
instruction set and a digest of the flags and torch version. So a cache shared between machines (a
home folder on NFS, a CI cache, a Docker layer) never hands an AVX-512 build to an AVX2 CPU, and a
torch upgrade rebuilds instead of loading a module built against another ABI.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from lstmcli.models import recurrence

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("recurrence.cpp")

# -fopenmp: at::parallel_for is a template, compiled here; without it a step's rows run on one thread.
# ATen's Vectorized<T> picks its instruction set from these macros; torch exports the Sleef
# exp/tanh routines it calls. The capability is the one torch itself dispatches to on this CPU.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}

# why the last ensure() returned False ("LSTMCLI_NATIVE=0", or the build's error), for `lstmcli env`
unavailable_reason: str | None = None


@functools.cache
def ensure() -> bool:
    """Build (or load the cached build of) the kernels and install them; True when they are in use."""
    global unavailable_reason
    if os.environ.get("LSTMCLI_NATIVE", "1") == "0":
        unavailable_reason = "LSTMCLI_NATIVE=0"
        return False
    try:
        module = build()
    except Exception as e:  # no compiler, no ninja, a failed build: the Python loops still work
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        unavailable_reason = reason
        log.warning(f"scratch encoders: C++ kernels unavailable ({reason[:200]}); impl auto runs PyTorch's "
                    f"kernels instead, impl scratch its Python loops (slower, same results; "
                    f"LSTMCLI_NATIVE=0 silences this)")
        return False
    recurrence.use_native(module)
    unavailable_reason = None
    return True


def uses_packed_gemm() -> bool:
    """Whether the installed C++ kernels run their float32 step matmuls through MKL's packed GEMM."""
    kernels = recurrence.native_kernels()
    return kernels is not None and kernels.packed_gemm()


def build_spec(isa: str | None = None) -> tuple[str, list[str]]:
    """(module name, compiler flags) of the build for `isa` (default: what torch dispatches to here)."""
    isa = isa or torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ISA_FLAGS.get(isa, [])]
    digest = hashlib.sha256(" ".join([torch.__version__, *flags]).encode()).hexdigest()[:10]
    return f"lstmcli_recurrence_{isa.lower()}_{digest}", flags


def toolchain() -> dict[str, str | None]:
    """What a build would run: the C++ compiler torch.utils.cpp_extension invokes (CXX, else c++) and
    where it and ninja are found (None: not found), ninja looked up as build() does (the virtual
    environment's bin folder first)."""
    command = os.environ.get("CXX") or "c++"
    search = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    return {"compiler_command": command, "compiler": shutil.which(command),
            "ninja": shutil.which("ninja", path=search)}


def missing_toolchain() -> str | None:
    """Why a build cannot even start here (no C++ compiler, no ninja), in a few words; None when both are
    found. Checked first, so that a machine without a compiler gets one line instead of a failed build."""
    tools = toolchain()
    if tools["compiler"] is None:
        return f"no C++ compiler: {tools['compiler_command']!r} not found (install g++ or clang, or set CXX)"
    if tools["ninja"] is None:
        return "ninja not found (pip install ninja)"
    return None


def build():
    """The kernel module: built, or loaded from the cache of an earlier build. The process's PATH,
    sys.path and torch's build logger are as they were afterwards (loading changes nothing
    process-wide)."""
    missing = missing_toolchain()
    if missing:
        raise RuntimeError(missing)
    # torch's build helpers log notes meant for extension developers (no CUDA runtime on a CPU-only
    # machine with a CUDA build of torch, compiler ABI checks): not for lstmcli's user
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        return _build()
    finally:
        torch_log.setLevel(level)


def _build():
    from torch.utils import cpp_extension  # imported here: it is slow to import and only needed now

    # ninja may come from the virtual environment's bin folder, which is not on PATH unless activated;
    # the process's PATH is put back afterwards (loading a model changes nothing process-wide)
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH")
    if bin_dir not in (path or "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + (path or "")
    name, flags = build_spec()
    from lstmcli.runtime.envinfo import cached_build  # (envinfo reads this module: imported here)
    folder, cached, _ = cached_build(name)
    if not cached:  # a minute of silence would look like a hang
        log.info(f"building the scratch encoders' C++ kernels for this CPU (once, under a minute; cached "
                 f"in {folder})")
    sys_path = list(sys.path)  # torch's build helpers add setuptools' vendored packages to it
    try:
        return cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags,
                                  extra_ldflags=["-fopenmp"], verbose=False)
    finally:
        sys.path[:] = sys_path
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path
