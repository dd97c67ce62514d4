"""The scratch encoders against PyTorch's: outputs, final states and every gradient, plus gradcheck."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmcli import native
from lstmcli.models import TextClassifier, recurrence
from lstmcli.models.recurrence import GRULayer, LSTMLayer, RNNLayer, peephole_lstm
from lstmcli.models.scratch import ScratchRNN

TORCH_RNN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["python", "native"])
def loops(request):
    """Run the test with the Python time loops, then with the C++ kernels (lstmcli/native)."""
    if request.param == "native":
        if not native.ensure():
            pytest.fail("the C++ kernels did not build (the line above says why); LSTMCLI_NATIVE=0 skips them")
        module = recurrence._native
    else:
        module = None
    saved = recurrence._native
    recurrence.use_native(module)
    yield request.param
    recurrence.use_native(saved)


def reference(rnn, x, lengths):
    """nn.LSTM/GRU/RNN on a PackedSequence: the exact variable-length semantics we must equal."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return out, h_n, c_n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_equals_pytorch_outputs_states_and_gradients(mode, layers, bidirectional, device, loops):
    torch.manual_seed(layers * 10 + bidirectional)
    ref = TORCH_RNN[mode](5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=True).to(device)
    ours = ScratchRNN(mode, 5, 7, layers, bidirectional).to(device)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([1, 9, 4, 9, 2, 6])  # unsorted, with length 1 and ties
    x = torch.randn(6, 9, 5, device=device)
    _check_against_reference(ref, ours, x, lengths, mode)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_equals_pytorch_when_rows_are_split_between_threads(mode, loops):
    """300 rows of hidden 20 (not a multiple of the vector width): the C++ loop splits a step's rows
    between threads and handles a partial vector at the end of each row."""
    torch.manual_seed(3)
    ref = TORCH_RNN[mode](4, 20, bidirectional=True, batch_first=True)
    ours = ScratchRNN(mode, 4, 20, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.randint(1, 12, (300,))
    lengths[0] = 12
    _check_against_reference(ref, ours, torch.randn(300, 12, 4), lengths, mode)


def _check_against_reference(ref, ours, x, lengths, mode):
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, h1, c1 = ours(x1, lengths)
    out2, h2, c2 = reference(ref, x2, lengths)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1, out2, **tol)
    torch.testing.assert_close(h1, h2, **tol)
    if mode == "lstm":
        torch.testing.assert_close(c1, c2, **tol)
    w_out, w_h = torch.randn_like(out2), torch.randn_like(h2)
    loss1 = (out1 * w_out).sum() + (h1 * w_h).sum() + (c1.sum() if c1 is not None else 0)
    loss2 = (out2 * w_out).sum() + (h2 * w_h).sum() + (c2.sum() if c2 is not None else 0)
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **tol, msg=name)


def test_state_dict_moves_both_ways_through_the_classifier(loops):
    torch.manual_seed(0)
    kw = dict(embedding_dim=6, hidden_size=5, encoder="lstm", num_layers=2, bidirectional=True, pooling="max")
    builtin = TextClassifier(30, 3, impl="builtin", **kw).eval()
    scratch = TextClassifier(30, 3, impl="scratch", **kw).eval()
    assert set(builtin.state_dict()) == set(scratch.state_dict())
    scratch.load_state_dict(builtin.state_dict())
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    torch.testing.assert_close(scratch(ids, lengths), builtin(ids, lengths), atol=1e-6, rtol=1e-5)
    builtin.load_state_dict(scratch.state_dict())


def _active(lengths, T):
    return (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()


def test_gradcheck_hand_written_backwards(loops):
    torch.manual_seed(0)
    T, B, H = 4, 3, 2
    active = _active(torch.tensor([4, 3, 1]), T)
    dd = dict(dtype=torch.float64, requires_grad=True)
    xl, wl = torch.randn(T, B, 4 * H, **dd), torch.randn(4 * H, H, **dd)
    wil, bl = torch.randn(4 * H, 3, **dd), torch.randn(4 * H, **dd)
    xl = torch.randn(T, B, 3, **dd)
    assert torch.autograd.gradcheck(lambda x, wi, b, w: LSTMLayer.apply(x, wi, b, w, active), (xl, wil, bl, wl))
    xg, wg, bg = torch.randn(T, B, 3 * H, **dd), torch.randn(3 * H, H, **dd), torch.randn(3 * H, **dd)
    assert torch.autograd.gradcheck(lambda x, w, b: GRULayer.apply(x, w, b, active), (xg, wg, bg))
    xr, wr = torch.randn(T, B, H, **dd), torch.randn(H, H, **dd)
    xr, wir, br = torch.randn(T, B, 3, **dd), torch.randn(H, 3, **dd), torch.randn(H, **dd)
    assert torch.autograd.gradcheck(lambda x, wi, b, w: RNNLayer.apply(x, wi, b, w, active), (xr, wir, br, wr))


def test_gradcheck_whole_encoder_float64(loops):
    torch.manual_seed(1)
    for mode in ("lstm", "gru", "rnn"):
        rnn = ScratchRNN(mode, 3, 2, num_layers=2, bidirectional=True).double()
        x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
        lengths = torch.tensor([2, 5, 1])
        assert torch.autograd.gradcheck(lambda x: rnn(x, lengths)[0], (x,))


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
    padded = rnn(torch.cat([torch.cat([seq, torch.randn(1, 4, 3)], 1), torch.randn(1, 7, 3)]), torch.tensor([3, 7]))
    torch.testing.assert_close(padded[0][0, :3], alone[0][0])
    torch.testing.assert_close(padded[1][:, 0], alone[1][:, 0])


def test_peephole_only_for_lstm():
    with pytest.raises(ValueError, match="peephole"):
        ScratchRNN("gru", 3, 3, peephole=True)
    with pytest.raises(ValueError, match="peephole"):
        TextClassifier(10, 2, impl="builtin", peephole=True)


@pytest.fixture
def fresh_native():
    """native.ensure() is cached per process: clear it around a test, and restore the kernels after."""
    saved = recurrence._native
    native.ensure.cache_clear()
    recurrence.use_native(None)
    yield
    native.ensure.cache_clear()
    recurrence.use_native(saved)


def test_failed_build_falls_back_to_the_python_loops_with_one_line(monkeypatch, capsys, fresh_native):
    def broken_build():
        raise RuntimeError("Error building extension 'lstmcli_recurrence':\nc++: command not found")

    monkeypatch.setattr(native, "build", broken_build)
    assert native.ensure() is False
    assert recurrence._native is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("scratch encoders: C++ kernels unavailable (c++: command not found); using the Python loops")


def test_lstmcli_native_0_skips_the_build(monkeypatch, capsys, fresh_native):
    monkeypatch.setenv("LSTMCLI_NATIVE", "0")
    monkeypatch.setattr(native, "build", lambda: pytest.fail("built although LSTMCLI_NATIVE=0"))
    assert native.ensure() is False
    assert recurrence._native is None and capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_inference_path_equals_pytorch(mode, loops):
    """Under no_grad the loops take their inference path. At hidden 256 / batch 64 on 2 threads the C++
    LSTM gives each thread 128 units and projects 4 steps at a time: 11 steps make chunks of 4, 4 and 3."""
    torch.manual_seed(4)
    ref = TORCH_RNN[mode](5, 256, num_layers=2, bidirectional=True, batch_first=True)
    ours = ScratchRNN(mode, 5, 256, 2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.randint(1, 12, (64,))
    lengths[0] = 11
    x = torch.randn(64, 11, 5)
    with torch.no_grad():
        got, want = ours(x, lengths), reference(ref, x, lengths)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
