"""The scratch encoders against PyTorch's: outputs, final states and every gradient, plus gradcheck."""

import copy
import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

from lstmcli.models import recurrence
from lstmcli.models.cells import CELLS
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.recurrence import GRULayer, LSTMLayer, RNNLayer, peephole_lstm
from lstmcli.models.scratch import ScratchRNN
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime import native

from .conftest import assert_float32_close, float32_tolerance, reference

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation

# the reference for each cell: PyTorch's own module, as its row in CELLS names it
TORCH_RNN = {name: getattr(nn, cell.torch_module) for name, cell in CELLS.items()}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["python", "native"])
def loops(request):
    """Run the test with the Python time loops, then with the C++ kernels (lstmcli/native)."""
    if request.param == "native":
        if not native.ensure():
            pytest.fail("the C++ kernels did not build (the log says why); LSTMCLI_NATIVE=0 skips them")
        module = recurrence.native_kernels()
    else:
        module = None
    saved = recurrence.native_kernels()
    recurrence.use_native(module)
    yield request.param
    recurrence.use_native(saved)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_equals_pytorch_outputs_states_and_gradients(cell, layers, bidirectional, device, loops):
    torch.manual_seed(layers * 10 + bidirectional)
    ref = TORCH_RNN[cell](5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    ref = ref.to(device)
    ours = ScratchRNN(cell, 5, 7, layers, bidirectional).to(device)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([1, 9, 4, 9, 2, 6])  # unsorted, with length 1 and ties
    x = torch.randn(6, 9, 5, device=device)
    _check_against_reference(ref, ours, x, lengths, cell)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_equals_pytorch_when_rows_are_split_between_threads(cell, loops):
    """300 rows of hidden 20 (not a multiple of the vector width): the C++ loop splits a step's rows
    between threads and handles a partial vector at the end of each row."""
    torch.manual_seed(3)
    ref = TORCH_RNN[cell](4, 20, bidirectional=True, batch_first=True)
    ours = ScratchRNN(cell, 4, 20, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.randint(1, 12, (300,))
    lengths[0] = 12
    _check_against_reference(ref, ours, torch.randn(300, 12, 4), lengths, cell)


def _run(fn, x, lengths, weights):
    """Outputs, states and the gradients of x and every parameter of a fixed weighted sum of them."""
    x = x.clone().requires_grad_()
    out, h, c = fn(x, lengths)
    w_out, w_h = (w.to(out.dtype) for w in weights)
    ((out * w_out).sum() + (h * w_h).sum() + (c.sum() if c is not None else 0)).backward()
    return {"output": out, "h_n": h, "c_n": c, "x.grad": x.grad}


def _check_against_reference(ref, ours, x, lengths, cell):
    """Ours (float32) against nn.LSTM/GRU/RNN in float32 and, as the exact answer, in float64."""
    exact = copy.deepcopy(ref).double()
    g = torch.Generator().manual_seed(0)
    out_shape = (x.size(0), x.size(1), ref.hidden_size * (2 if ref.bidirectional else 1))
    h_shape = (ref.num_layers * (2 if ref.bidirectional else 1), x.size(0), ref.hidden_size)
    weights = [torch.randn(shape, generator=g).to(x.device) for shape in (out_shape, h_shape)]
    got = _run(ours, x, lengths, weights)
    want = _run(lambda x, lens: reference(ref, x, lens), x, lengths, weights)
    best = _run(lambda x, lens: reference(exact, x, lens), x.double(), lengths, weights)
    for key in ("output", "h_n", "c_n", "x.grad"):
        if best[key] is not None:
            assert_float32_close(got[key], want[key], best[key], f"{cell} {key}")
    theirs, truth = dict(ref.named_parameters()), dict(exact.named_parameters())
    for name, p in ours.named_parameters():
        assert_float32_close(p.grad, theirs[name].grad, truth[name].grad, f"{cell} {name}.grad")


def test_state_dict_moves_both_ways_through_the_classifier(loops):
    torch.manual_seed(0)
    kw = dict(vocab_size=30, num_classes=3, embedding_dim=6, hidden_size=5, num_layers=2, bidirectional=True,
              pooling="max")
    builtin = TextClassifier(ModelSpec(**kw, impl="builtin")).eval()
    scratch = TextClassifier(ModelSpec(**kw, impl="scratch")).eval()
    assert set(builtin.state_dict()) == set(scratch.state_dict())
    scratch.load_state_dict(builtin.state_dict())
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    exact = copy.deepcopy(builtin).double()
    assert_float32_close(scratch(ids, lengths), builtin(ids, lengths), exact(ids, lengths), "logits")
    builtin.load_state_dict(scratch.state_dict())


def _active(lengths, T):
    return (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()


def test_gradcheck_hand_written_backwards(loops):
    torch.manual_seed(0)
    T, B, H = 4, 3, 2
    active = _active(torch.tensor([4, 3, 1]), T)
    dd = dict(dtype=torch.float64, requires_grad=True)
    xl, wil, bl, wl = torch.randn(T, B, 3, **dd), torch.randn(4 * H, 3, **dd), torch.randn(4 * H, **dd), \
        torch.randn(4 * H, H, **dd)
    # outputs (hs, c_last, h_last): all of them read, then only the final states (d_hs is None)
    for read in (slice(None), slice(1, None), slice(2, None)):
        layer = lambda *a, read=read: LSTMLayer.apply(active, *a)[read]  # noqa: E731
        assert torch.autograd.gradcheck(layer, (xl, wil, bl, wl))
    xg, wg, bg = torch.randn(T, B, 3 * H, **dd), torch.randn(3 * H, H, **dd), torch.randn(3 * H, **dd)
    assert torch.autograd.gradcheck(lambda x, w, b: GRULayer.apply(x, w, b, active), (xg, wg, bg))
    xr, wir, br, wr = torch.randn(T, B, 3, **dd), torch.randn(H, 3, **dd), torch.randn(H, **dd), \
        torch.randn(H, H, **dd)
    assert torch.autograd.gradcheck(lambda *a: RNNLayer.apply(*a, active), (xr, wir, br, wr))


def test_gradcheck_whole_encoder_float64(loops):
    torch.manual_seed(1)
    lengths = torch.tensor([2, 5, 1])
    for cell in CELLS:
        rnn = ScratchRNN(cell, 3, 2, num_layers=2, bidirectional=True).double()
        x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, rnn=rnn: rnn(x, lengths)[0], (x,))


def test_peephole_one_step_by_hand():
    torch.manual_seed(2)
    rnn = ScratchRNN("lstm", 2, 3, peephole=True).double()
    x = torch.randn(1, 2, 2, dtype=torch.float64)
    out, h_n, c_n = rnn(x, torch.tensor([2]))
    p = {n: t.detach() for n, t in rnn.named_parameters()}
    W_i, W_h = p["weight_ih_l0"], p["weight_hh_l0"]
    b = p["bias_ih_l0"] + p["bias_hh_l0"]
    sig = torch.sigmoid
    h, c = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t in range(2):
        z = W_i @ x[0, t] + W_h @ h + b
        i = sig(z[0:3] + p["weight_ci_l0"] * c)
        f = sig(z[3:6] + p["weight_cf_l0"] * c)
        g = torch.tanh(z[6:9])
        c = f * c + i * g
        o = sig(z[9:12] + p["weight_co_l0"] * c)  # the output gate sees the new cell
        h = o * torch.tanh(c)
        torch.testing.assert_close(out[0, t], h)
    torch.testing.assert_close(h_n[0, 0], h)
    torch.testing.assert_close(c_n[0, 0], c)


def test_peephole_gradcheck_and_padding():
    torch.manual_seed(3)
    T, B, H = 3, 2, 2
    dd = dict(dtype=torch.float64, requires_grad=True)
    args = (torch.randn(T, B, 4 * H, **dd), torch.randn(4 * H, H, **dd),
            torch.randn(H, **dd), torch.randn(H, **dd), torch.randn(H, **dd))
    active = [2, 2, 1]
    assert torch.autograd.gradcheck(lambda *a: peephole_lstm(*a, active)[0], args)
    rnn = ScratchRNN("lstm", 3, 4, 2, True, peephole=True).eval()
    seq = torch.randn(1, 3, 3)
    alone = rnn(seq, torch.tensor([3]))
    batch = torch.cat([torch.cat([seq, torch.randn(1, 4, 3)], 1), torch.randn(1, 7, 3)])
    padded = rnn(batch, torch.tensor([3, 7]))
    tol = float32_tolerance(2 * 3 * (3 + 4))  # the same float32 sums in another batch: 2 layers, 3 steps
    torch.testing.assert_close(padded[0][0, :3], alone[0][0], atol=tol, rtol=0)
    torch.testing.assert_close(padded[1][:, 0], alone[1][:, 0], atol=tol, rtol=0)


def test_peephole_only_for_lstm():
    with pytest.raises(ValueError, match="peephole"):
        ScratchRNN("gru", 3, 3, peephole=True)
    with pytest.raises(ValueError, match="peephole"):
        ModelSpec(vocab_size=10, num_classes=2, impl="builtin", peephole=True)


@pytest.fixture
def fresh_native():
    """native.ensure() is cached per process: clear it around a test, and restore the kernels after."""
    saved = recurrence.native_kernels()
    native.ensure.cache_clear()
    recurrence.use_native(None)
    yield
    native.ensure.cache_clear()
    recurrence.use_native(saved)


def test_failed_build_falls_back_to_the_python_loops_with_one_line(monkeypatch, caplog, fresh_native):
    def broken_build():
        raise RuntimeError("Error building extension 'lstmcli_recurrence':\nc++: command not found")

    monkeypatch.setattr(native, "build", broken_build)
    assert native.ensure() is False
    assert recurrence.native_kernels() is None
    [record] = caplog.records
    assert record.levelname == "WARNING" and "\n" not in record.getMessage()
    assert record.getMessage().startswith("scratch encoders: C++ kernels unavailable "
                                          "(c++: command not found); impl auto runs PyTorch's kernels")


def test_lstmcli_native_0_skips_the_build(monkeypatch, caplog, fresh_native):
    monkeypatch.setenv("LSTMCLI_NATIVE", "0")
    monkeypatch.setattr(native, "build", lambda: pytest.fail("built although LSTMCLI_NATIVE=0"))
    assert native.ensure() is False
    assert recurrence.native_kernels() is None and caplog.records == []


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_path_equals_pytorch(cell, loops):
    """Under no_grad the loops take their inference path. At hidden 256 / batch 64 on 2 threads the C++
    LSTM gives each thread 128 units and projects 4 steps at a time: 11 steps make chunks of 4, 4 and 3."""
    torch.manual_seed(4)
    ref = TORCH_RNN[cell](5, 256, num_layers=2, bidirectional=True, batch_first=True)
    ours = ScratchRNN(cell, 5, 256, 2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.randint(1, 12, (64,))
    lengths[0] = 11
    x = torch.randn(64, 11, 5)
    with torch.no_grad():
        got, want = ours(x, lengths), reference(ref, x, lengths)
        exact = reference(copy.deepcopy(ref).double(), x.double(), lengths)
    for name, a, b, c in zip(("output", "h_n", "c_n"), got, want, exact, strict=True):
        if c is not None:
            assert_float32_close(a, b, c, name)


@pytest.mark.parametrize("threads", [1, 3])
def test_lstm_inference_blocks_of_units_per_thread(threads, loops):
    """The C++ LSTM's inference cuts the hidden units into one block per thread. Hidden 40 on 3 threads
    makes blocks of 16, 16 and 8 units (the last a partial vector); on 1 thread one block of 40.
    Rows end at different steps, so blocks zero their part of the ended rows' outputs."""
    torch.manual_seed(5)
    ref = nn.LSTM(3, 40, bidirectional=True, batch_first=True)
    ours = ScratchRNN("lstm", 3, 40, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([9, 9, 7, 5, 5, 2, 1])
    x = torch.randn(7, 9, 3)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got, want = ours(x, lengths), reference(ref, x, lengths)
            exact = reference(copy.deepcopy(ref).double(), x.double(), lengths)
    finally:
        torch.set_num_threads(saved)
    for name, a, b, c in zip(("output", "h_n", "c_n"), got, want, exact, strict=True):
        assert_float32_close(a, b, c, name)


@pytest.fixture
def two_threads():
    """Two torch threads: where LSTMLayer runs two directions side by side, one on each."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _bidirectional_run(threads: int, x, lengths, ref):
    """Outputs, h_n, c_n and every gradient of a training pass of a scratch BiLSTM with ref's weights."""
    torch.manual_seed(0)
    ours = ScratchRNN("lstm", x.size(-1), ref.hidden_size, num_layers=2, bidirectional=True).to(x.dtype)
    ours.load_state_dict(ref.state_dict())
    x = x.clone().requires_grad_()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, h_n, c_n = ours(x, lengths)
        (out.square().sum() + h_n.sum() + c_n.sum()).backward()
    finally:
        torch.set_num_threads(saved)
    return [out, h_n, c_n, x.grad] + [p.grad for p in ours.parameters()]


def test_directions_side_by_side_match_one_after_the_other_and_nn_lstm(loops):
    """On two threads the C++ kernels run a bidirectional layer's two directions at once, one per thread
    (on one thread, and in Python, one after the other): every output and gradient of a 2-layer BiLSTM
    training pass stays what nn.LSTM computes, within its own float32 error."""
    torch.manual_seed(3)
    ref = nn.LSTM(5, 24, num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([13, 13, 11, 8, 8, 5, 2, 1])
    x = torch.randn(8, 13, 5)
    side_by_side, in_turn = _bidirectional_run(2, x, lengths, ref), _bidirectional_run(1, x, lengths, ref)
    exact = _bidirectional_run(1, x.double(), lengths, copy.deepcopy(ref).double())
    for i, (a, b, c) in enumerate(zip(side_by_side, in_turn, exact, strict=True)):
        assert_float32_close(a, b, c, f"tensor {i}")


def test_gradcheck_two_directions_side_by_side(loops, two_threads):
    torch.manual_seed(1)
    T, B, H = 4, 3, 2
    active = _active(torch.tensor([4, 3, 1]), T)
    dd = dict(dtype=torch.float64, requires_grad=True)
    args = [t for _ in range(2) for t in (torch.randn(T, B, 3, **dd), torch.randn(4 * H, 3, **dd),
                                          torch.randn(4 * H, **dd), torch.randn(4 * H, H, **dd))]
    for read in (slice(None), slice(2, None, 3)):  # every output; each direction's final h only
        assert torch.autograd.gradcheck(lambda *a, read=read: LSTMLayer.apply(active, *a)[read], args)


def test_both_directions_flush_denormals_as_the_caller_does(loops, two_threads):
    """torch.set_flush_denormal sets a per-thread register; the thread that runs the second direction
    must flush as the caller does. Here c = i * g = σ(-80) * tanh(1e-4) ~ 1.8e-39, a denormal: flushed,
    both directions' final cell states are exactly 0."""
    T, B, H = 3, 2, 4
    bias = torch.cat([torch.full((H,), v) for v in (80.0, -80.0, -80.0, 1e-4)])  # gates (o, i, f, g)
    one = [torch.zeros(T, B, 1), torch.zeros(4 * H, 1), bias, torch.zeros(4 * H, H)]
    torch.set_flush_denormal(True)
    _, c_last, _, _, c_last_rev, _ = LSTMLayer.apply([B] * T, *one, *one)
    assert c_last.abs().max().item() == 0.0 and c_last_rev.abs().max().item() == 0.0


def test_an_error_in_a_side_by_side_kernel_is_raised_not_fatal():
    """An exception thrown on one of the two threads is carried out of the parallel region and raised
    in Python (escaping an OpenMP region would terminate the process)."""
    if not native.ensure():
        pytest.fail("the C++ kernels did not build (the log says why)")
    T, B, In, H = 3, 2, 2, 4
    one = [torch.randn(T, B, In)], [torch.randn(4 * H, In)], [torch.zeros(4 * H)], [torch.randn(4 * H, H)]
    hs = [torch.empty(T, B, H), torch.empty(T, H, B).transpose(1, 2)]  # the second is not contiguous
    with pytest.raises(RuntimeError, match="contiguous"):
        recurrence.native_kernels().lstm_forward_pair(*(v * 2 for v in one), [B] * T, hs,
                                                      [torch.zeros(B, H)] * 2, *[[None] * 2] * 3)


def test_builds_are_named_for_what_they_were_compiled_for():
    """A build cache shared between machines must never hand one CPU a build for another: each
    instruction set (and torch version) gets its own module name, and none is -march=native."""
    specs = {isa: native.build_spec(isa) for isa in ("AVX512", "AVX2", "DEFAULT")}
    names = {name for name, _ in specs.values()}
    assert len(names) == 3 and specs["AVX2"][0].startswith("lstmcli_recurrence_avx2_")
    assert "-mavx2" in specs["AVX2"][1]
    assert not any("avx512" in f for f in specs["AVX2"][1] + specs["DEFAULT"][1])
    assert not any(f.startswith("-march") for _, flags in specs.values() for f in flags)


AVX512_REGISTERS = re.compile(r"%zmm|%k[1-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b")  # EVEX-only: any use is AVX-512


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_the_build_uses_the_instructions_of_its_isa_and_no_others():
    """Disassemble the kernels this process loaded: an AVX2 (or plain) build holds no AVX-512
    instruction, so it runs on every AVX2 CPU; an AVX-512 build does use them (its flags took)."""
    isa = torch.backends.cpu.get_cpu_capability()
    module = native.build()  # the module ensure() loads (built once per process and cache)
    assert module.__name__ == native.build_spec()[0]
    assert module.__name__.startswith(f"lstmcli_recurrence_{isa.lower()}_")
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", module.__file__], capture_output=True,
                          text=True, check=True).stdout
    avx512 = len(AVX512_REGISTERS.findall(text))
    if isa == "AVX512":
        assert avx512 > 0
    else:
        assert avx512 == 0, f"{avx512} AVX-512 register uses in the {isa} build {module.__file__}"


def test_without_a_compiler_the_build_is_not_tried_and_auto_runs_builtin(monkeypatch, caplog, fresh_native):
    """No C++ compiler: one warning line says so (no failed build's output), and impl auto picks builtin."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(native, "_build", lambda: pytest.fail("tried to build"))
    assert native.missing_toolchain() == ("no C++ compiler: '/nonexistent/c++' not found (install g++ or "
                                          "clang, or set CXX)")
    assert native.ensure() is False
    [record] = caplog.records
    assert record.getMessage().startswith("scratch encoders: C++ kernels unavailable (no C++ compiler: ")
    assert "impl auto runs PyTorch's kernels instead" in record.getMessage()
    from lstmcli.config import resolve
    from lstmcli.runtime.plan import choose
    choice = choose(resolve(None, {"cell": "lstm"}).model, torch.device("cpu"))
    assert choice.impl.value == "builtin" and "did not build here" in choice.why
