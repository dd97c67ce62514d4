"""runtime/plan.py: the one decision of impl and precision per run (impl auto), the model built from it,
and the combinations no choice can make, refused as config errors."""

import pytest
import torch

from lstmcli.config import Cell, ConfigError, Impl, ModelConfig, Precision, resolve
from lstmcli.runtime import native, precision
from lstmcli.runtime.plan import build_model, choose, model_spec

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation

CPU = torch.device("cpu")


@pytest.mark.parametrize("fields,device,want", [
    ({}, "cpu", Impl.scratch),  # an LSTM in fp32 on a CPU: the C++ kernels
    ({"bidirectional": True, "num_layers": 2}, "cpu", Impl.scratch),
    ({"cell": Cell.gru}, "cpu", Impl.builtin),  # not measured faster: builtin
    ({"cell": Cell.rnn}, "cpu", Impl.builtin),
    ({"precision": Precision.bf16}, "cpu", Impl.builtin),  # scratch is float32
    ({}, "cuda", Impl.builtin), ({}, "mps", Impl.builtin),
    ({"peephole": True}, "cuda", Impl.scratch),  # only scratch has peepholes
    ({"impl": Impl.builtin}, "cpu", Impl.builtin), ({"impl": Impl.scratch}, "cuda", Impl.scratch),
])
def test_auto_picks_scratch_for_an_fp32_lstm_on_a_cpu_only(fields, device, want, bf16_level):
    if not native.ensure():
        pytest.fail("the C++ kernels did not build (the log says why)")
    bf16_level(precision.NATIVE)  # an explicit bf16 runs (an AVX2-only CPU refuses it: test_precision.py)
    cfg = ModelConfig(**{"impl": Impl.auto, **fields})
    choice = choose(cfg, torch.device(device))
    assert choice.impl is want and f"impl {want.value}" in choice.why


def test_auto_is_builtin_where_the_kernels_do_not_build(monkeypatch):
    monkeypatch.setattr(native, "ensure", lambda: False)
    choice = choose(ModelConfig(impl=Impl.auto), CPU)
    assert choice.impl is Impl.builtin
    assert choice.why.endswith("impl builtin (auto: the scratch C++ kernels did not build here)")


def test_the_model_is_built_with_the_resolved_impl_and_the_config_keeps_auto():
    cfg = ModelConfig()  # the default is auto
    assert cfg.impl is Impl.auto
    model = build_model(model_spec(cfg, 50, 3, choose(cfg, CPU)))
    assert model.spec.impl == choose(cfg, CPU).impl.value
    gpu = choose(cfg, torch.device("cuda"))  # a model to run on a GPU: built here, not moved there
    assert build_model(model_spec(cfg, 50, 3, gpu)).spec.impl == "builtin"


@pytest.mark.parametrize("body,key", [
    ('[model]\nimpl = "builtin"\npeephole = true\n', "model.peephole"),
    ('[model]\nimpl = "auto"\npeephole = true\nprecision = "bf16"\n', "model.precision"),
    ('[model]\nimpl = "auto"\ncell = "gru"\npeephole = true\n', "model.peephole"),
])
def test_combinations_auto_cannot_resolve_are_config_errors(tmp_path, body, key):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        resolve(str(path), {})
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\nimpl = "auto"\npeephole = true\n')
    assert resolve(str(ok), {}).model.peephole






