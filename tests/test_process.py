"""runtime/process.py: glibc's heap reuse, and that only tune_process (what the CLI calls) turns the
process-wide CPU settings on: importing lstmcli, loading a checkpoint or predicting never does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY, ok, run

FAULTS = """
import json, resource
import torch
from lstmcli.runtime.process import keep_freed_memory
took = keep_freed_memory()
counts = []
for _ in range(10):  # a step's buffers: allocated, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.empty(mb * 2**20 // 4) for mb in (40, 64, 24)]
    for b in buffers:
        b.fill_(1.0)
    del buffers, b
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"took": took, "faults": counts}))
"""

PROCESS_STATE = """
import os, sys, torch
path = os.environ.get("PATH")
import lstmcli
{action}
assert os.environ.get("PATH") == path, "PATH changed"
flushes = float(torch.tensor([1e-39]) * torch.tensor([1.0])) == 0.0  # a denormal flushed to zero?
process = sys.modules.get("lstmcli.runtime.process")
malloc = process is not None and process.keep_freed_memory.cache_info().currsize > 0
print(flushes, malloc)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_freed_buffers_are_reused_without_new_page_faults(setting):
    """Steps that allocate, write and free buffers of 40, 64 and 24 MB: with the setting, once the
    heap has grown to hold them (a few steps) it hands back memory already mapped, and a step faults in
    no pages; without it (LSTMCLI_KEEP_FREED_MEMORY=0) every buffer is a fresh mapping, 32,768 pages of
    4 KB a step (fewer with transparent huge pages)."""
    env = {**os.environ, "LSTMCLI_KEEP_FREED_MEMORY": setting}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["took"] is (setting == "1")
    last = report["faults"][-3:]
    if setting == "1":
        assert max(last) < 100, report
    else:
        assert min(last) > 1000, report


def test_importing_and_loading_change_nothing_process_wide(mirror, workdir):
    """Neither denormal flushing nor glibc's malloc setting is turned on by importing lstmcli, loading a
    checkpoint or predicting with it, and PATH stays as it was (the C++ kernels' build puts the
    interpreter's folder on it while it runs); tune_process (what the CLI calls) turns both on."""
    ok(run("train", "--config", TINY, "--max-train-examples", 40, "--max-eval-examples", 20, "--out", "r"))
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != bin_dir)

    def state(action: str) -> list[str]:
        code = [sys.executable, "-c", PROCESS_STATE.format(action=action), str(workdir / "r" / "best")]
        env = {**os.environ, "PATH": path}
        return subprocess.run(code, capture_output=True, text=True, check=True, env=env).stdout.split()
    for action in ("", "lstmcli.load(sys.argv[1])", "lstmcli.load(sys.argv[1]).predict(['a fine film'])"):
        assert state(action) == ["False", "False"], action
    tuned = state("lstmcli.load(sys.argv[1]); lstmcli.tune_process()")
    assert tuned == ["True", "True" if sys.platform.startswith("linux") else "False"]
