"""impl auto (build.resolve_impl) and the process-wide malloc setting (memory.py) of CPU runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lstmcli import native
from lstmcli.build import build_model, resolve_impl
from lstmcli.config import ConfigError, Encoder, Impl, ModelConfig, Precision, resolve

CPU = torch.device("cpu")


@pytest.mark.parametrize("fields,device,want", [
    ({}, "cpu", Impl.scratch),  # an LSTM in fp32 on a CPU: the C++ kernels
    ({"bidirectional": True, "num_layers": 2}, "cpu", Impl.scratch),
    ({"encoder": Encoder.gru}, "cpu", Impl.builtin),  # not measured faster: builtin
    ({"encoder": Encoder.rnn}, "cpu", Impl.builtin),
    ({"precision": Precision.bf16}, "cpu", Impl.builtin),  # scratch is float32
    ({}, "cuda", Impl.builtin), ({}, "mps", Impl.builtin),
    ({"peephole": True}, "cuda", Impl.scratch),  # only scratch has peepholes
    ({"impl": Impl.builtin}, "cpu", Impl.builtin), ({"impl": Impl.scratch}, "cuda", Impl.scratch),
])
def test_auto_picks_scratch_for_an_fp32_lstm_on_a_cpu_only(fields, device, want):
    if not native.ensure():
        pytest.fail("the C++ kernels did not build (the log says why)")
    cfg = ModelConfig(**{"impl": Impl.auto, **fields})
    impl, why = resolve_impl(cfg, torch.device(device))
    assert impl is want and why.startswith(want.value)


def test_auto_is_builtin_where_the_kernels_do_not_build(monkeypatch):
    monkeypatch.setattr(native, "ensure", lambda: False)
    assert resolve_impl(ModelConfig(impl=Impl.auto), CPU) == (
        Impl.builtin, "builtin (auto: the scratch C++ kernels did not build here)")


def test_the_model_is_built_with_the_resolved_impl_and_the_config_keeps_auto():
    cfg = ModelConfig()  # the default is auto
    assert cfg.impl is Impl.auto
    model = build_model(cfg, 50, 3, CPU)
    assert model.spec.impl == resolve_impl(cfg, CPU)[0].value
    assert build_model(cfg, 50, 3, "cuda").spec.impl == "builtin"  # built for a GPU (not moved there)


@pytest.mark.parametrize("body,key", [
    ('[model]\nimpl = "builtin"\npeephole = true\n', "model.peephole"),
    ('[model]\nimpl = "auto"\npeephole = true\nprecision = "bf16"\n', "model.precision"),
    ('[model]\nimpl = "auto"\nencoder = "gru"\npeephole = true\n', "model.peephole"),
])
def test_combinations_auto_cannot_resolve_are_config_errors(tmp_path, body, key):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(str(path), {})
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\nimpl = "auto"\npeephole = true\n')
    assert resolve(str(ok), {}).model.peephole


def test_bench_measures_implementations_by_name():
    from typer.testing import CliRunner

    from lstmcli.cli import app
    result = CliRunner().invoke(app, ["bench", "--impl", "auto"])
    assert result.exit_code == 2 and "--impl builtin --impl scratch" in result.output
    assert isinstance(result.exception, SystemExit)  # one line, no traceback


FAULTS = """
import json, resource
import torch
from lstmcli.memory import keep_freed_memory
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
