"""The recurrences of the scratch encoders, one layer at a time, as autograd Functions.

The equations are in scratch.py. What makes these fast on a CPU:
  * the input projections W_ih x are big matmuls over many (t, b) at once, and each step adds W_hh h
    to its slice in place (the C++ LSTM instead makes a step one deeper matmul, [x_t | h_{t-1}] times
    [W_ih | W_hh]^T, which is faster there);
  * sequences come sorted by length, so step t runs only on the first n_t rows (the batch shrinks as
    sequences end, as with PackedSequence) and padding is never computed;
  * the forward keeps activations in preallocated (T, B, ·) buffers and, when training, also stores the
    backward's per-step factors while the step's values are in cache; the backward is then one matmul
    and a few fused element-wise ops per step, and the weight gradients are matmuls over many steps;
  * a bidirectional LSTM layer's two directions are one call (LSTMLayer), which the C++ kernels run
    side by side on two threads.
The per-step loops exist twice with the same signatures: in Python here (_PythonLoops, the reference
and the fallback) and in C++ (lstmcli/runtime/native/recurrence.cpp), where each step is one matmul plus one
fused pass over its values instead of ~10 element-wise calls, and the LSTM's parameter gradients are
formed a few steps at a time, while those steps' gradients are in cache. lstmcli.runtime.native builds the C++
ones and installs them with `use_native`; the tests run both. The RNN has one element-wise op per step
and stays in Python.
Tensors are time-major: (T, B, features). `active[t]` is n_t, non-increasing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero_tails(t: int, n: int, *buffers: torch.Tensor) -> None:
    """Rows >= n have ended by step t: their outputs read 0 (as pad_packed_sequence gives) and their
    saved factors 0 (no gradient flows through them)."""
    if n < buffers[0].size(1):
        for buf in buffers:
            buf[t, n:].zero_()


class _PythonLoops:
    """The per-step loops in Python, the reference for (and fallback of) the C++ kernels in
    lstmcli/runtime/native/recurrence.cpp, which have the same signatures and write the same buffers."""

    @staticmethod
    def lstm_forward(x, w_ih, bias, w_hh, active, hs, c_last, acts, K, A):
        """acts (T, B, 4H), gate blocks (o, i, f, g), receives W_ih x + b for all steps in one matmul
        (a new tensor when not training); each step adds W_hh h in place and applies its activations,
        so `acts` ends up holding σ(o), σ(i), σ(f), tanh(g). c_last (B, H) gets each row's final c."""
        T, B = x.shape[:2]
        H = w_hh.size(1)
        cs = x.new_empty(T, B, H)
        acts = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t(), out=acts.view(T * B, -1) if acts is not None
                           else None).view(T, B, 4 * H)
        train = K is not None
        tcs, gs = acts.new_empty(T, B, H), acts.new_empty(T, B, H)  # tanh(c), tanh(g)
        one = acts.new_ones(())
        h = c = acts.new_zeros(B, H)
        w_t = w_hh.t()
        # per-step views made once (unbind is one call), sliced to the active rows only when needed
        buffers = (acts, cs, tcs, hs, gs, *((K, A) if train else ()))
        steps = zip(*(buf.unbind(0) for buf in buffers), strict=True)
        for n, views in zip(active, steps, strict=True):
            if n < B:
                for v in views:
                    v[n:].zero_()  # ended rows: outputs 0, as pad_packed_sequence gives; no gradient
                views, h, c = [v[:n] for v in views], h[:n], c[:n]
            a, c_t, tc, h_t, g, *kA = views
            a.addmm_(h, w_t)
            a[:, : 3 * H].sigmoid_()
            torch.tanh(a[:, 3 * H:], out=g)  # into a contiguous buffer: in place on the slice is slower
            o, i, f = a[:, : 3 * H].split(H, 1)
            torch.mul(f, c, out=c_t).addcmul_(i, g)
            torch.tanh(c_t, out=tc)
            torch.mul(o, tc, out=h_t)
            if train:
                k, A_t = kA
                k3 = torch.addcmul(a[:, : 3 * H], a[:, : 3 * H], a[:, : 3 * H], value=-1, out=k[:, : 3 * H])
                k_o, k_i, k_f = k3.split(H, 1)  # σ' = σ(1 - σ)
                k_o.mul_(tc)
                k_i.mul_(g)
                k_f.mul_(c)  # c_{t-1}
                torch.addcmul(one, g, g, value=-1, out=k[:, 3 * H:]).mul_(i)
                torch.addcmul(one, tc, tc, value=-1, out=A_t).mul_(o)
            h, c = h_t, c_t  # the batch only shrinks: the next step reads a prefix of these rows
        c_last.copy_(cs[_last_steps(active, B), torch.arange(B)])

    @staticmethod
    def lstm_backward(d_hs, d_c_last, d_h_last, acts, K, A, w_hh, active):
        T, B, G = acts.shape
        H = G // 4
        last = (_last_steps(active, B), torch.arange(B))  # each row's last step: its final h and c
        if d_h_last is not None:  # the gradient of each row's final h enters at its last step
            d_hs = d_hs.clone() if d_hs is not None else acts.new_zeros(T, B, H)
            d_hs[last] += d_h_last
        d_cs = None
        if d_c_last is not None:  # the gradient of each row's final c enters at its last step
            d_cs = acts.new_zeros(T, B, H)
            d_cs[last] = d_c_last
        f = acts[..., 2 * H: 3 * H]  # 0 at ended rows, so dc does not flow back past a sequence's end
        d_pre = torch.empty_like(acts)
        dc, dh_rec = acts.new_zeros(B, H), acts.new_zeros(B, H)  # rows >= n stay 0 until they start
        for t in range(T - 1, -1, -1):
            n = active[t]
            _zero_tails(t, n, d_pre)
            dh = dh_rec[:n] + d_hs[t, :n] if d_hs is not None else dh_rec[:n]
            dct = dc[:n]
            if t + 1 < T:
                dct.mul_(f[t + 1, :n])
            dct.addcmul_(dh, A[t, :n])
            if d_cs is not None:
                dct.add_(d_cs[t, :n])
            torch.mul(K[t, :n, :H], dh, out=d_pre[t, :n, :H])
            torch.mul(K[t, :n, H:].view(n, 3, H), dct[:, None, :], out=d_pre[t, :n, H:].view(n, 3, H))
            torch.mm(d_pre[t, :n], w_hh, out=dh_rec[:n])
        return d_pre

    @staticmethod
    def lstm_grads(d_hs, d_c_last, d_h_last, acts, K, A, w_hh, w_ih, x, hs, active):
        """[d_x, d_W_ih, d_b, d_W_hh] of one direction: its d_pre for all steps, then one product each."""
        d_pre = _PythonLoops.lstm_backward(d_hs, d_c_last, d_h_last, acts, K, A, w_hh, active)
        return [*_input_grads(d_pre, x, w_ih), _recurrent_weight_grad(d_pre, hs)]

    @staticmethod
    def gru_forward(xproj, w_hh, b_hh, active, hs, zs, K):
        T, B, G = xproj.shape
        H = G // 3
        train = K is not None
        hh = b_hh.expand_as(xproj).clone()  # W_hh h + b_hh, the matmul added in place per step
        rz, ns = xproj.new_empty(T, B, 2 * H), xproj.new_empty(T, B, H)
        one = xproj.new_ones(())
        h, w_t = xproj.new_zeros(B, H), w_hh.t()
        for t, n in enumerate(active):
            _zero_tails(t, n, hh, rz, ns, hs, *((K,) if train else ()))
            hh[t, :n].addmm_(h[:n], w_t)
            torch.add(xproj[t, :n, : 2 * H], hh[t, :n, : 2 * H], out=rz[t, :n]).sigmoid_()
            r, z = rz[t, :n].split(H, 1)
            hn = hh[t, :n, 2 * H:]
            nt = torch.addcmul(xproj[t, :n, 2 * H:], r, hn, out=ns[t, :n]).tanh_()
            diff = h[:n] - nt
            torch.addcmul(nt, z, diff, out=hs[t, :n])  # h' = n + z ⊙ (h - n)
            if train:
                k = torch.addcmul(rz[t, :n], rz[t, :n], rz[t, :n], value=-1, out=K[t, :n, : 2 * H])
                k_r, k_z = k.split(H, 1)  # σ' = σ(1 - σ)
                k_n = torch.addcmul(one, nt, nt, value=-1, out=K[t, :n, 2 * H: 3 * H])
                k_n.addcmul_(k_n, z, value=-1)  # (1 - z)(1 - n²)
                k_r.mul_(hn).mul_(k_n)
                k_z.mul_(diff)
                torch.mul(k_n, r, out=K[t, :n, 3 * H:])
            h = hs[t]
        if train:
            zs.copy_(rz[..., H:])

    @staticmethod
    def gru_backward(d_hs, zs, K, w_hh, active):
        T, B, H = zs.shape
        d_x, d_hh = zs.new_empty(T, B, 3 * H), zs.new_empty(T, B, 3 * H)
        dh_rec = zs.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            n = active[t]
            _zero_tails(t, n, d_x, d_hh)
            dh = dh_rec[:n] + d_hs[t, :n]
            torch.mul(K[t, :n, : 3 * H].view(n, 3, H), dh[:, None, :], out=d_x[t, :n].view(n, 3, H))
            d_hh[t, :n, : 2 * H] = d_x[t, :n, : 2 * H]
            torch.mul(K[t, :n, 3 * H:], dh, out=d_hh[t, :n, 2 * H:])
            torch.addmm(dh * zs[t, :n], d_hh[t, :n], w_hh, out=dh_rec[:n])
        return d_x, d_hh


def _last_steps(active: list[int], B: int) -> torch.Tensor:
    """(B,) the last step of each row: how many steps it is active for, minus one."""
    return (torch.tensor(active)[:, None] > torch.arange(B)).sum(0) - 1


_native = None  # the C++ kernels, once lstmcli.runtime.native has built them


def use_native(module) -> None:
    """Run the LSTM and GRU time loops of CPU tensors with `module` (lstmcli/runtime/native), or None
    for Python."""
    global _native
    _native = module


def native_kernels():
    """The C++ kernel module in use, or None when the Python loops run."""
    return _native


def _loops(t: torch.Tensor):
    return _native if _native is not None and t.device.type == "cpu" else _PythonLoops


class LSTMLayer(torch.autograd.Function):
    """One LSTM layer, one direction or two: apply(active, x, w_ih, bias, w_hh[, x', w_ih', bias', w_hh'])
    -> (hs, c_last, h_last[, hs', c_last', h_last']), each direction on its own inputs (a backward
    direction gets its sequences reversed within their lengths); c_last and h_last (B, H) are each
    sequence's final states. Gate order inside is (o, i, f, g): one sigmoid covers three.

    h_last is an output of its own, not read out of hs by the caller, so that a classifier that reads
    only the final states sends no gradient to hs: its backward then makes and reads no (T, B, H)
    tensor of zeros with one nonzero row per sequence.

    While training, the forward also stores the backward's per-step factors, computed while the
    step's activations are still in cache: dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ A_t, and the
    pre-activation gradients are K_o ⊙ dh_t for o and K_{i,f,g} ⊙ dc_t for i, f, g.
    Two directions on two threads run side by side, one per thread (the C++ kernels' *_pair), instead of
    one after the other with each step split over both threads; the results are the same up to float32
    summation order.
    """

    @staticmethod
    def forward(ctx, active, *args):
        # per direction: x (T, B, In); w_ih (4H, In); bias (4H,) = b_ih + b_hh; w_hh (4H, H);
        # active: n_t per step
        dirs = [list(args[i:i + 4]) for i in range(0, len(args), 4)]
        train = any(ctx.needs_input_grad)
        for d in dirs:
            d[0] = d[0].contiguous()
        x, w_hh = dirs[0][0], dirs[0][3]
        (T, B), H = x.shape[:2], w_hh.size(1)
        hs, c_last = [x.new_empty(T, B, H) for _ in dirs], [x.new_zeros(B, H) for _ in dirs]
        # training keeps every step's activations (acts: the backward reads σ(f)) and factors K, A
        acts, K, A = ([x.new_empty(T, B, G) for _ in dirs] if train else [None] * len(dirs)
                      for G in (4 * H, 4 * H, H))
        ctx.loops = _loops(x)
        ins = [list(z) for z in zip(*dirs, strict=True)]  # [xs, w_ihs, biases, w_hhs]
        if _pair(ctx.loops, len(dirs)):
            ctx.loops.lstm_forward_pair(*ins, active, hs, c_last, acts, K, A)
        else:
            for d, (x_d, w_ih, bias, w_hh_d) in enumerate(dirs):
                ctx.loops.lstm_forward(x_d, w_ih, bias, w_hh_d, active, hs[d], c_last[d], acts[d], K[d], A[d])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*ins[0], *ins[1], *ins[3], *acts, *K, *A, *hs)
        ctx.active, ctx.num_dirs = active, len(dirs)
        last = (_last_steps(active, B).to(x.device), torch.arange(B, device=x.device))
        h_last = [h[last] for h in hs]
        return tuple(t for triple in zip(hs, c_last, h_last, strict=True) for t in triple)

    @staticmethod
    def backward(ctx, *grads):
        D = ctx.num_dirs
        xs, w_ihs, w_hhs, acts, K, A, hs = (ctx.saved_tensors[i:i + D] for i in range(0, 7 * D, D))
        grads = [None if g is None else g.contiguous() for g in grads]  # per direction: hs, c_last, h_last
        d_hs, d_c_last, d_h_last = (grads[i::3] for i in range(3))
        per_direction = [d_hs, d_c_last, d_h_last, acts, K, A, w_hhs, w_ihs, xs, hs]  # one entry a direction
        if _pair(ctx.loops, D):  # [d_x, d_W_ih, d_b, d_W_hh] of each direction, in turn
            return None, *ctx.loops.lstm_grads_pair(*map(list, per_direction), ctx.active)
        return None, *(g for args in zip(*per_direction, strict=True)
                       for g in ctx.loops.lstm_grads(*args, ctx.active))


def _pair(loops, num_dirs: int) -> bool:
    """Whether to run two directions side by side: C++ kernels, two of them, and two threads to run them on
    (faster there; with more threads each direction's steps are split over them instead)."""
    return num_dirs == 2 and hasattr(loops, "lstm_forward_pair") and torch.get_num_threads() == 2


def _input_grads(d_pre: torch.Tensor, x: torch.Tensor, w_ih: torch.Tensor):
    """Gradients of x, W_ih and the bias from those of the pre-activations, all steps in one go."""
    d2 = d_pre.flatten(0, 1)  # (T*B, G)
    return (d2 @ w_ih).view_as(x), d2.t() @ x.reshape(d2.size(0), -1), d2.sum(0)


def _recurrent_weight_grad(d_pre: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
    """Σ_t d_pre_t^T h_{t-1} over all steps in one matmul: the gradient of W_hh (step 0 read h = 0)."""
    return d_pre[1:].flatten(0, 1).t() @ hs[:-1].flatten(0, 1)


class GRULayer(torch.autograd.Function):
    """One direction of one GRU layer (gate order r, z, n as in PyTorch).

    As for the LSTM, the forward stores per-step factors: with dh_t the gradient reaching h_t,
    the gradients of the input pre-activations are K_{r,z,n} ⊙ dh_t, those of W_hh h + b_hh are
    (K_r, K_z, K_hn) ⊙ dh_t, and dh_{t-1} = z ⊙ dh_t + (those) W_hh.
    """

    @staticmethod
    def forward(ctx, xproj, w_hh, b_hh, active):
        # xproj (T, B, 3H) = W_ih x + b_ih; b_hh stays inside: n needs r ⊙ (W_hn h + b_hn)
        T, B, G = xproj.shape
        H = G // 3
        train = any(ctx.needs_input_grad)
        hs = xproj.new_empty(T, B, H)
        zs, K = (xproj.new_empty(T, B, H), xproj.new_empty(T, B, 4 * H)) if train else (None, None)
        ctx.loops = _loops(xproj)
        ctx.loops.gru_forward(xproj, w_hh, b_hh, active, hs, zs, K)
        ctx.save_for_backward(zs, K, hs, w_hh)
        ctx.active = active
        return hs

    @staticmethod
    def backward(ctx, d_hs):
        zs, K, hs, w_hh = ctx.saved_tensors
        d_x, d_hh = ctx.loops.gru_backward(d_hs.contiguous(), zs, K, w_hh, ctx.active)
        d_w = _recurrent_weight_grad(d_hh, hs)
        return d_x, d_w, d_hh.sum((0, 1)), None


class RNNLayer(torch.autograd.Function):
    """One direction of one tanh RNN layer."""

    @staticmethod
    def forward(ctx, x, w_ih, bias, w_hh, active):
        T, B = x.shape[:2]
        hs = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)  # W_ih x + b, all steps
        h, w_t = hs.new_zeros(B, w_hh.size(1)), w_hh.t()
        for t, n in enumerate(active):
            _zero_tails(t, n, hs)
            hs[t, :n].addmm_(h[:n], w_t).tanh_()
            h = hs[t]
        ctx.save_for_backward(x, w_ih, hs, w_hh)
        ctx.active = active
        return hs

    @staticmethod
    def backward(ctx, d_hs):
        x, w_ih, hs, w_hh = ctx.saved_tensors
        K = 1 - hs * hs  # tanh' (0 at ended rows, whose h is 0)
        d_pre = torch.empty_like(hs)
        dh_rec = hs.new_zeros(hs.shape[1:])
        for t in range(hs.shape[0] - 1, -1, -1):
            n = ctx.active[t]
            _zero_tails(t, n, d_pre)
            torch.mul(dh_rec[:n] + d_hs[t, :n], K[t, :n], out=d_pre[t, :n])
            torch.mm(d_pre[t, :n], w_hh, out=dh_rec[:n])
        return _input_grads(d_pre, x, w_ih) + (_recurrent_weight_grad(d_pre, hs), None)


def peephole_lstm(xproj, w_hh, w_ci, w_cf, w_co, active):
    """Peephole LSTM over time, written step by step and left to autograd (clarity over speed).

    xproj (T, B, 4H) in PyTorch's gate order (i, f, g, o), biases included. Returns (hs, cs).
    """
    T, B, G = xproj.shape
    H = G // 4
    h, c = xproj.new_zeros(B, H), xproj.new_zeros(B, H)
    hs, cs = [], []
    for t, n in enumerate(active):
        gi, gf, gg, go = (xproj[t, :n] + h[:n] @ w_hh.t()).split(H, 1)
        i = torch.sigmoid(gi + w_ci * c[:n])
        f = torch.sigmoid(gf + w_cf * c[:n])
        c_new = f * c[:n] + i * torch.tanh(gg)
        o = torch.sigmoid(go + w_co * c_new)
        h_new = o * torch.tanh(c_new)
        # ended rows keep their last state, which is never read again
        h = torch.cat([h_new, h[n:]]) if n < B else h_new
        c = torch.cat([c_new, c[n:]]) if n < B else c_new
        hs.append(F.pad(h_new, (0, 0, 0, B - n)))
        cs.append(F.pad(c_new, (0, 0, 0, B - n)))
    return torch.stack(hs), torch.stack(cs)
