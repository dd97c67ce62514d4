"""Precision requests resolved against the device, and the detection behind them."""

import os
import subprocess
import sys

import pytest
import torch

from lstmcli.config import Impl, Precision
from lstmcli.errors import LstmcliError
from lstmcli.runtime import precision
from lstmcli.runtime.precision import NATIVE, NOT_NATIVE, UNAVAILABLE, for_inference, for_training

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation

CPU = torch.device("cpu")
fp32, bf16, auto = Precision.fp32, Precision.bf16, Precision.auto


@pytest.mark.parametrize("level,request_,impl,want", [
    (NATIVE, auto, Impl.builtin, bf16), (NOT_NATIVE, auto, Impl.builtin, fp32),
    (UNAVAILABLE, auto, Impl.builtin, fp32), (NATIVE, auto, Impl.scratch, fp32),
    (NATIVE, fp32, Impl.builtin, fp32), (UNAVAILABLE, fp32, Impl.builtin, fp32),
    (NATIVE, bf16, Impl.builtin, bf16), (NOT_NATIVE, bf16, Impl.builtin, bf16),
    (NATIVE, auto, Impl.auto, bf16), (UNAVAILABLE, auto, Impl.auto, fp32), (NATIVE, bf16, Impl.auto, bf16),
])
def test_training_precision(bf16_level, level, request_, impl, want):
    bf16_level(level)
    got, why = for_training(request_, impl, CPU)
    assert got is want and why.startswith(want.value)
    assert ("expect it to be slower" in why) == (level == NOT_NATIVE and request_ is bf16)


@pytest.mark.parametrize("impl", [Impl.builtin, Impl.scratch])
def test_an_explicit_bf16_that_cannot_run_is_refused_with_what_to_use(bf16_level, impl):
    bf16_level(UNAVAILABLE)
    with pytest.raises(LstmcliError, match="use --precision fp32"):
        for_training(bf16, impl, CPU)


@pytest.mark.parametrize("level,trained,request_,impl,want,note", [
    (NATIVE, bf16, None, Impl.builtin, bf16, None),
    (UNAVAILABLE, bf16, None, Impl.builtin, fp32, "trained in bf16; running it in fp32 (CPU (AVX2)"),
    (NOT_NATIVE, bf16, None, Impl.builtin, fp32, "--precision bf16 to run it in bf16 anyway"),
    (NATIVE, bf16, None, Impl.scratch, fp32, "impl scratch is float32"),
    (NATIVE, bf16, fp32, Impl.builtin, fp32, None),
    (NATIVE, fp32, None, Impl.builtin, fp32, None),
    (NATIVE, fp32, auto, Impl.builtin, bf16, None),
    (UNAVAILABLE, fp32, auto, Impl.builtin, fp32, None),
    (NOT_NATIVE, fp32, bf16, Impl.builtin, bf16, None),
    (NATIVE, auto, None, Impl.builtin, bf16, None),  # a hand-written config may say auto
    (NATIVE, bf16, None, Impl.auto, bf16, None),
    (UNAVAILABLE, bf16, None, Impl.auto, fp32, "trained in bf16; running it in fp32 (CPU (AVX2)"),
])
def test_inference_precision(bf16_level, level, trained, request_, impl, want, note):
    bf16_level(level)
    got, said = for_inference(trained, request_, impl, CPU)
    assert got is want
    assert (said is None) if note is None else (note in said)


def test_inference_refuses_bf16_that_cannot_run(bf16_level):
    bf16_level(UNAVAILABLE)
    with pytest.raises(LstmcliError, match="cannot run on this CPU"):
        for_inference(fp32, bf16, Impl.builtin, CPU)


def test_detection_follows_onednn_capped_at_avx2():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN refuse the bfloat16 LSTM exactly as an AVX2-only CPU does
    (the suite's emulation relies on it), and lstmcli's detection says bf16 is unavailable there."""
    code = ("import torch\nfrom lstmcli.runtime.precision import bf16_support\n"
            "print(bf16_support('cpu').level)\n"
            "try:\n    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "        torch.nn.LSTM(4, 4)(torch.randn(3, 2, 4))\n    print('ran')\n"
            "except RuntimeError as e:\n    print(str(e).splitlines()[0])\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    level, lstm = out.splitlines()
    assert level == UNAVAILABLE
    assert lstm.startswith("could not create a primitive descriptor for the LSTM forward propagation")


def test_detection_agrees_with_torch_here():
    support = precision.bf16_support("cpu")
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert support.level == UNAVAILABLE
    elif torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
        assert support.level in (NATIVE, NOT_NATIVE)  # NOT_NATIVE only where ONEDNN_MAX_CPU_ISA caps it
    else:
        assert support.level == NOT_NATIVE
