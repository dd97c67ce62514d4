"""`lstmcli env`'s library part (runtime/envinfo.py): what it reports equals what torch, Python and the
kernel cache say; the text form shows every value; collecting changes nothing process-wide."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import sys
from pathlib import Path

import pytest
import torch

import lstmcli
from lstmcli.models import recurrence
from lstmcli.runtime import envinfo, native, precision
from lstmcli.runtime.device import resolve_device

SECTIONS = ["lstmcli", "python", "cpu", "bf16", "kernels", "cuda", "threads", "packages"]


@pytest.fixture
def no_kernels(monkeypatch):
    """The Python loops in use and no remembered build failure; the kernels in use before come back."""
    saved = recurrence.native_kernels()
    recurrence.use_native(None)
    monkeypatch.setattr(native, "unavailable_reason", None)
    yield
    recurrence.use_native(saved)


@pytest.fixture
def fresh_native(no_kernels):
    """native.ensure() is cached per process: cleared around the test, so that it really runs."""
    native.ensure.cache_clear()
    yield
    native.ensure.cache_clear()


def leaves(section: dict, prefix: str = ""):
    """(dotted key, value) of every value in a section, list items as key[i]."""
    for key, value in section.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from leaves(item, f"{prefix}{key}[{i}].")
        else:
            yield f"{prefix}{key}", value


def shown(value) -> str:
    """How the text form writes a value."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else " ".join(str(value).split())


def test_sections_keys_and_types():
    info = envinfo.collect()
    assert list(info) == SECTIONS
    assert set(info["lstmcli"]) == {"version", "torch", "torch_build"}
    assert set(info["python"]) == {"version", "implementation", "executable", "os", "machine"}
    assert set(info["cpu"]) == {"model", "capability", "onednn", "flags", "overrides"}
    assert list(info["cpu"]["flags"]) == list(envinfo.CPU_FLAGS)
    assert set(info["kernels"]) == {"enabled", "status", "reason", "in_use", "packed_gemm", "isa", "module",
                                    "cache", "cached", "stale", "compiler_command", "compiler", "ninja"}
    assert set(info["cuda"]) == {"available", "device_count", "devices", "cudnn", "visible_devices"}
    assert set(info["threads"]) == {"torch", "cpu_count", "affinity", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert list(info["packages"]) == list(envinfo.PACKAGES)
    assert all(isinstance(v, bool | None) for v in info["cpu"]["flags"].values())
    assert all(isinstance(v, str | None) for v in info["packages"].values())
    assert isinstance(info["threads"]["torch"], int) and isinstance(info["kernels"]["enabled"], bool)
    assert json.loads(json.dumps(info)) == info


def test_versions_are_torch_and_pythons_own():
    info = envinfo.collect()
    assert info["lstmcli"]["version"] == lstmcli.__version__  # the running code's, not an install's
    assert info["lstmcli"]["torch"] == torch.__version__
    assert info["lstmcli"]["torch_build"] == (f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu")
    assert info["python"]["version"] == platform.python_version()
    assert info["python"]["implementation"] == platform.python_implementation()
    assert info["python"]["executable"] == sys.executable
    assert info["packages"]["numpy"] == importlib.metadata.version("numpy")


def test_versions_without_installed_metadata(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    info = envinfo.collect()
    assert info["lstmcli"]["version"] == lstmcli.__version__  # a source checkout on PYTHONPATH too
    assert set(info["packages"].values()) == {None}


def test_cpu_is_what_torch_and_proc_cpuinfo_say():
    cpu = envinfo.collect()["cpu"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["onednn"] == torch.backends.mkldnn.is_available()
    assert cpu["overrides"] == {name: os.environ.get(name) for name in envinfo.ISA_OVERRIDES}
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo here")
    lines = cpuinfo.read_text().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    assert cpu["flags"] == {flag: flag in flags for flag in envinfo.CPU_FLAGS}
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    if model:
        assert cpu["model"] == model


def test_cpu_flags_without_proc_cpuinfo_come_from_torch():
    flags = envinfo._cpu_flags({})
    assert flags["avx2"] == torch.cpu._is_avx2_supported()
    assert flags["avx512_bf16"] == torch.cpu._is_avx512_bf16_supported()
    assert flags["amx_tile"] == torch.cpu._is_amx_tile_supported()
    assert flags["amx_bf16"] is None  # torch has no check for it


def test_bf16_is_precisions_verdict():
    bf16 = envinfo.collect()["bf16"]
    support = precision.bf16_support("cpu")
    assert bf16["cpu"] == {"supported": support.level != precision.UNAVAILABLE,
                           "native": support.level == precision.NATIVE, "level": support.level,
                           "why": support.why}
    assert bf16["auto_device"] == resolve_device("auto").type


def test_cuda_and_threads():
    info = envinfo.collect()
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["cuda"]["device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert [d["name"] for d in info["cuda"]["devices"]] == [
        torch.cuda.get_device_name(i) for i in range(info["cuda"]["device_count"])]
    assert info["threads"]["torch"] == torch.get_num_threads()
    assert info["threads"]["cpu_count"] == os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert info["threads"]["affinity"] == len(os.sched_getaffinity(0))


def test_text_shows_every_value_under_its_heading():
    info = envinfo.collect()
    text = envinfo.format_text(info)
    lines = text.splitlines()
    assert [line for line in lines if line and not line.startswith(" ")] == SECTIONS
    for section in SECTIONS:
        for key, value in leaves(info[section]):
            text = shown(value)
            assert any(line.startswith(f"  {key}:") and line.endswith(f" {text}") for line in lines), key


def test_text_is_aligned_per_section():
    text = envinfo.format_text({"cuda": {"available": True, "devices": [
        {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8}], "cudnn": None},
        "threads": {"torch": 2, "OMP_NUM_THREADS": "2"}})
    assert text == ("cuda\n"
                    "  available:             yes\n"
                    "  devices[0].name:       NVIDIA H200\n"
                    "  devices[0].capability: 9.0\n"
                    "  devices[0].memory_gib: 139.8\n"
                    "  cudnn:                 -\n"
                    "\n"
                    "threads\n"
                    "  torch:           2\n"
                    "  OMP_NUM_THREADS: 2\n")


def test_lstmcli_native_0_reports_disabled_and_builds_nothing(monkeypatch, fresh_native):
    monkeypatch.setenv("LSTMCLI_NATIVE", "0")
    monkeypatch.setattr(native, "build", lambda: pytest.fail("built although LSTMCLI_NATIVE=0"))
    kernels = envinfo.collect(build_kernels=True)["kernels"]
    assert kernels["enabled"] is False and kernels["in_use"] is False
    assert kernels["status"] == "disabled" and "LSTMCLI_NATIVE=0" in kernels["reason"]


def test_missing_compiler_is_reported(monkeypatch, tmp_path, no_kernels):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler, no ninja
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # no cached build
    monkeypatch.delenv("LSTMCLI_NATIVE", raising=False)
    kernels = envinfo.collect()["kernels"]
    assert kernels["compiler"] is None and kernels["cached"] is False
    assert kernels["compiler_command"] == str(tmp_path / "no-such-c++")
    assert kernels["status"] == "no compiler" and "no-such-c++' not found" in kernels["reason"]
    assert not (tmp_path / "extensions").exists()  # looking created no folder


def test_cached_build_is_found_and_a_stale_one_is_not_used(monkeypatch, tmp_path, no_kernels):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv("LSTMCLI_NATIVE", raising=False)
    name, _ = native.build_spec()
    library = tmp_path / name / f"{name}.so"
    library.parent.mkdir()
    library.touch()
    kernels = envinfo.collect()["kernels"]
    assert kernels["cache"] == str(tmp_path / name) and kernels["module"] == name
    assert (kernels["cached"], kernels["stale"], kernels["status"]) == (True, False, "cached")
    older = native.SOURCE.stat().st_mtime - 60
    os.utime(library, (older, older))
    kernels = envinfo.collect()["kernels"]
    assert (kernels["cached"], kernels["stale"]) == (False, True)
    assert kernels["status"] in {"stale", "no compiler", "no ninja"}


def test_failed_build_reports_its_reason(monkeypatch, caplog, fresh_native):
    def broken_build():
        raise RuntimeError("Error building extension 'lstmcli_recurrence':\nc++: command not found")

    monkeypatch.delenv("LSTMCLI_NATIVE", raising=False)
    monkeypatch.setattr(native, "build", broken_build)
    kernels = envinfo.collect(build_kernels=True)["kernels"]
    assert (kernels["status"], kernels["reason"], kernels["in_use"]) == ("failed", "c++: command not found",
                                                                         False)
    assert native.unavailable_reason == "c++: command not found"
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # ensure()'s own line, unchanged


def test_cached_build_loads(monkeypatch, fresh_native):
    monkeypatch.delenv("LSTMCLI_NATIVE", raising=False)
    if not envinfo.collect()["kernels"]["cached"]:
        pytest.skip("no cached build of the kernels for this CPU (building takes a minute)")
    kernels = envinfo.collect(build_kernels=True)["kernels"]
    assert (kernels["status"], kernels["in_use"]) == ("in use", True)
    assert native.unavailable_reason is None and recurrence.native_kernels() is not None
    assert kernels["packed_gemm"] == native.uses_packed_gemm()


def test_collect_changes_nothing_and_says_nothing(capsys, caplog, fresh_native):
    caplog.set_level(logging.DEBUG)
    threads, environ, path = torch.get_num_threads(), dict(os.environ), list(sys.path)
    info = envinfo.collect()
    if info["kernels"]["cached"]:  # the build step puts PATH back and sys.path too
        envinfo.collect(build_kernels=True)
    assert torch.get_num_threads() == threads and dict(os.environ) == environ and sys.path == path
    assert capsys.readouterr() == ("", "")
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_env_command_prints_text_and_json():
    from .conftest import ok, run
    info = json.loads(ok(run("env", "--json")).stdout)
    assert list(info) == ["lstmcli", "python", "cpu", "bf16", "kernels", "cuda", "threads", "packages"]
    assert info["lstmcli"]["torch"] == torch.__version__
    text = ok(run("env")).stdout
    assert torch.__version__ in text and info["cpu"]["capability"] in text
