"""From-scratch LSTM, GRU and tanh RNN: the textbook equations, with hand-written backward passes.

Equations (PyTorch's conventions, so weights move between `builtin` and `scratch` unchanged):
  LSTM  i = σ(W_ii x + b_ii + W_hi h + b_hi)    f = σ(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)  o = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g                      h' = o ⊙ tanh(c')
  peephole LSTM (Gers & Schmidhuber 2000): i and f also see w_ci ⊙ c, w_cf ⊙ c; o sees w_co ⊙ c'.
  GRU   r = σ(W_ir x + b_ir + W_hr h + b_hr)    z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))                h' = (1 - z) ⊙ n + z ⊙ h
  RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)

Why it is fast on a CPU:
  * the input projection of every time step is one matmul, W_ih x for all (t, b) at once;
  * sequences are sorted by length, so step t runs only on the first n_t rows (the batch shrinks as
    sequences end, as with PackedSequence) and padding is never computed;
  * autograd.Functions carry each layer's whole loop: the forward keeps activations in preallocated
    (T, B, ·) buffers; the backward precomputes every per-step derivative factor over all steps at once,
    so each step is one matmul and a few fused element-wise ops, and the recurrent weight gradient is
    one matmul over all steps at the end.
Tensors inside a layer are time-major: (T, B, features).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .builtin import last_real, reverse_within_length

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _steps_active(lengths: torch.Tensor, T: int) -> list[int]:
    """n_t = how many (length-sorted, descending) sequences are still running at step t."""
    return (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()


class LSTMLayer(torch.autograd.Function):
    """One direction of one LSTM layer. Gate order inside is (o, i, f, g): one sigmoid covers three."""

    @staticmethod
    def forward(ctx, xproj, w_hh, active):
        # xproj (T, B, 4H): W_ih x + b_ih + b_hh; w_hh (4H, H); active: n_t per step, non-increasing
        T, B, G = xproj.shape
        H = G // 4
        acts = xproj.new_zeros(T, B, G)  # σ(o), σ(i), σ(f), tanh(g); zeros where a row has ended
        cs = xproj.new_zeros(T, B, H)
        tcs = xproj.new_zeros(T, B, H)  # tanh(c)
        hs = xproj.new_zeros(T, B, H)
        h, c, w_t = xproj.new_zeros(B, H), xproj.new_zeros(B, H), w_hh.t()
        for t, n in enumerate(active):
            a = acts[t, :n]
            torch.addmm(xproj[t, :n], h[:n], w_t, out=a)
            a[:, : 3 * H].sigmoid_()
            a[:, 3 * H:].tanh_()
            o, i, f, g = a.split(H, 1)
            torch.mul(f, c[:n], out=cs[t, :n]).addcmul_(i, g)
            torch.tanh(cs[t, :n], out=tcs[t, :n])
            torch.mul(o, tcs[t, :n], out=hs[t, :n])
            h, c = hs[t], cs[t]  # rows >= n are stale, and never read again: the batch only shrinks
        ctx.save_for_backward(acts, cs, tcs, hs, w_hh)
        ctx.active = active
        return hs, cs

    @staticmethod
    def backward(ctx, d_hs, d_cs):
        acts, cs, tcs, hs, w_hh = ctx.saved_tensors
        T, B, G = acts.shape
        H = G // 4
        o, i, f, g = acts.split(H, 2)
        c_prev = torch.cat([cs.new_zeros(1, B, H), cs[:-1]])
        # Per-step factors for all steps at once: dc_t = dh_t ⊙ A_t + dc_{t+1} ⊙ f_{t+1}, and the
        # pre-activation gradients are K_o ⊙ dh_t and K_{i,f,g} ⊙ dc_t.
        A = o * (1 - tcs * tcs)
        K_o = tcs * o * (1 - o)
        K_ifg = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2).view(T, B, 3, H)
        f_next = torch.cat([f[1:], f.new_zeros(1, B, H)])
        d_pre = acts.new_zeros(T, B, G)
        dc = acts.new_zeros(B, H)
        dh_rec = acts.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            n = ctx.active[t]
            dh = dh_rec[:n] + d_hs[t, :n] if d_hs is not None else dh_rec[:n]
            dct = dc[:n].mul_(f_next[t, :n]).addcmul_(dh, A[t, :n])
            if d_cs is not None:
                dct.add_(d_cs[t, :n])
            torch.mul(K_o[t, :n], dh, out=d_pre[t, :n, :H])
            torch.mul(K_ifg[t, :n], dct[:, None, :], out=d_pre[t, :n, H:].view(n, 3, H))
            torch.mm(d_pre[t, :n], w_hh, out=dh_rec[:n])  # rows >= n stay 0 until they start
        d_w = d_pre[1:].flatten(0, 1).t() @ hs[:-1].flatten(0, 1)
        return d_pre, d_w, None


class GRULayer(torch.autograd.Function):
    """One direction of one GRU layer (gate order r, z, n as in PyTorch)."""

    @staticmethod
    def forward(ctx, xproj, w_hh, b_hh, active):
        # xproj (T, B, 3H) = W_ih x + b_ih; b_hh stays inside: n needs r ⊙ (W_hn h + b_hn)
        T, B, G = xproj.shape
        H = G // 3
        hh = xproj.new_zeros(T, B, G)  # W_hh h + b_hh
        rz = xproj.new_zeros(T, B, 2 * H)
        ns = xproj.new_zeros(T, B, H)
        hs = xproj.new_zeros(T, B, H)
        h, w_t = xproj.new_zeros(B, H), w_hh.t()
        for t, n in enumerate(active):
            torch.addmm(b_hh, h[:n], w_t, out=hh[t, :n])
            torch.add(xproj[t, :n, : 2 * H], hh[t, :n, : 2 * H], out=rz[t, :n]).sigmoid_()
            r, z = rz[t, :n].split(H, 1)
            torch.addcmul(xproj[t, :n, 2 * H:], r, hh[t, :n, 2 * H:], out=ns[t, :n]).tanh_()
            # h' = n + z ⊙ (h - n)
            torch.addcmul(ns[t, :n], z, h[:n] - ns[t, :n], out=hs[t, :n])
            h = hs[t]
        ctx.save_for_backward(hh, rz, ns, hs, w_hh)
        ctx.active = active
        return hs

    @staticmethod
    def backward(ctx, d_hs):
        hh, rz, ns, hs, w_hh = ctx.saved_tensors
        T, B, G = hh.shape
        H = G // 3
        r, z = rz.split(H, 2)
        h_prev = torch.cat([hs.new_zeros(1, B, H), hs[:-1]])
        dn_pre = (1 - z) * (1 - ns * ns)  # d n_pre / d h'
        K_x = torch.cat([dn_pre * hh[..., 2 * H:] * r * (1 - r), (h_prev - ns) * z * (1 - z), dn_pre], 2)
        K_h = torch.cat([K_x[..., : 2 * H], dn_pre * r], 2)
        d_x = hh.new_zeros(T, B, G)
        d_hh = hh.new_zeros(T, B, G)
        dh_rec = hh.new_zeros(B, H)
        for t in range(T - 1, -1, -1):
            n = ctx.active[t]
            dh = dh_rec[:n] + d_hs[t, :n]
            torch.mul(K_x[t, :n].view(n, 3, H), dh[:, None, :], out=d_x[t, :n].view(n, 3, H))
            torch.mul(K_h[t, :n].view(n, 3, H), dh[:, None, :], out=d_hh[t, :n].view(n, 3, H))
            torch.addmm(dh * z[t, :n], d_hh[t, :n], w_hh, out=dh_rec[:n])
        d_w = d_hh[1:].flatten(0, 1).t() @ hs[:-1].flatten(0, 1)
        return d_x, d_w, d_hh.sum((0, 1)), None


class RNNLayer(torch.autograd.Function):
    """One direction of one tanh RNN layer."""

    @staticmethod
    def forward(ctx, xproj, w_hh, active):
        T, B, H = xproj.shape
        hs = xproj.new_zeros(T, B, H)
        h, w_t = xproj.new_zeros(B, H), w_hh.t()
        for t, n in enumerate(active):
            torch.addmm(xproj[t, :n], h[:n], w_t, out=hs[t, :n]).tanh_()
            h = hs[t]
        ctx.save_for_backward(hs, w_hh)
        ctx.active = active
        return hs

    @staticmethod
    def backward(ctx, d_hs):
        hs, w_hh = ctx.saved_tensors
        K = 1 - hs * hs
        d_pre = torch.zeros_like(hs)
        dh_rec = hs.new_zeros(hs.shape[1:])
        for t in range(hs.shape[0] - 1, -1, -1):
            n = ctx.active[t]
            torch.mul(dh_rec[:n] + d_hs[t, :n], K[t, :n], out=d_pre[t, :n])
            torch.mm(d_pre[t, :n], w_hh, out=dh_rec[:n])
        d_w = d_pre[1:].flatten(0, 1).t() @ hs[:-1].flatten(0, 1)
        return d_pre, d_w, None


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


def _time_major_reverse(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(T, B, F): each sequence reversed within its own length (padding stays at the end)."""
    return reverse_within_length(x.transpose(0, 1), lengths).transpose(0, 1)


class ScratchRNN(nn.Module):
    """Our own multi-layer (bi)directional LSTM / GRU / RNN, batch-first, with exact variable lengths.

    Parameters have nn.LSTM's / nn.GRU's / nn.RNN's names, shapes and initialisation
    (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ..._reverse), so state_dicts move both ways;
    a peephole LSTM adds weight_ci/weight_cf/weight_co per layer and direction.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, peephole: bool = False):
        super().__init__()
        if peephole and mode != "lstm":
            raise ValueError(f"peephole connections are for the lstm encoder, not {mode!r}")
        self.mode, self.hidden_size, self.num_layers = mode, hidden_size, num_layers
        self.dropout, self.peephole = dropout, peephole
        self.suffixes = ["", "_reverse"] if bidirectional else [""]
        gates = GATES[mode] * hidden_size
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * len(self.suffixes)
            for sfx in self.suffixes:
                shapes = {"weight_ih": (gates, in_size), "weight_hh": (gates, hidden_size),
                          "bias_ih": (gates,), "bias_hh": (gates,)}
                if peephole:
                    shapes |= {"weight_ci": (hidden_size,), "weight_cf": (hidden_size,), "weight_co": (hidden_size,)}
                for name, shape in shapes.items():
                    self.register_parameter(f"{name}_l{layer}{sfx}", nn.Parameter(torch.empty(shape)))
        H = hidden_size  # PyTorch's LSTM rows are (i, f, g, o); ours are (o, i, f, g)
        order = torch.cat([torch.arange(3 * H, 4 * H), torch.arange(0, 3 * H)]) if mode == "lstm" else torch.empty(0)
        self.register_buffer("_lstm_order", order.long(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # as nn.RNNBase
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _direction(self, seq: torch.Tensor, layer: int, sfx: str, active: list[int]):
        """seq (T, B, In) -> hs (T, B, H), cs (T, B, H) or None."""
        p = {name: getattr(self, f"{name}_l{layer}{sfx}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        T, B = seq.shape[:2]
        flat = seq.reshape(T * B, -1)
        if self.mode == "gru":
            xproj = torch.addmm(p["bias_ih"], flat, p["weight_ih"].t()).view(T, B, -1)
            return GRULayer.apply(xproj, p["weight_hh"], p["bias_hh"], active), None
        if self.mode == "rnn":
            xproj = torch.addmm(p["bias_ih"] + p["bias_hh"], flat, p["weight_ih"].t()).view(T, B, -1)
            return RNNLayer.apply(xproj, p["weight_hh"], active), None
        if self.peephole:
            xproj = torch.addmm(p["bias_ih"] + p["bias_hh"], flat, p["weight_ih"].t()).view(T, B, -1)
            peep = [getattr(self, f"{name}_l{layer}{sfx}") for name in ("weight_ci", "weight_cf", "weight_co")]
            return peephole_lstm(xproj, p["weight_hh"], *peep, active)
        order = self._lstm_order
        xproj = torch.addmm((p["bias_ih"] + p["bias_hh"])[order], flat, p["weight_ih"][order].t()).view(T, B, -1)
        return LSTMLayer.apply(xproj, p["weight_hh"][order], active)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, T, In), lengths (B,) on the CPU -> outputs (B, T, D*H) (0 at padding),
        h_n (L*D, B, H), c_n (L*D, B, H) or None: as nn.LSTM gives for a PackedSequence."""
        order = lengths.argsort(descending=True, stable=True)
        unsort = order.argsort()
        lens = lengths[order]
        active = _steps_active(lens, x.size(1))
        inp = x[order.to(x.device)].transpose(0, 1)  # (T, B, In), longest first
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout and self.training:
                inp = F.dropout(inp, self.dropout, training=True)
            outs = []
            for d, sfx in enumerate(self.suffixes):
                seq = inp if d == 0 else _time_major_reverse(inp, lens)
                hs, cs = self._direction(seq, layer, sfx, active)
                h_n.append(last_real(hs.transpose(0, 1), lens))
                if cs is not None:
                    c_n.append(last_real(cs.transpose(0, 1), lens))
                outs.append(hs if d == 0 else _time_major_reverse(hs, lens))
            inp = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        back = unsort.to(x.device)
        outputs = inp.transpose(0, 1)[back]
        return outputs, torch.stack(h_n)[:, back], (torch.stack(c_n)[:, back] if c_n else None)


class ScratchEncoder(nn.Module):
    """The scratch counterpart of BuiltinEncoder: (B, T, E) + lengths -> outputs, final (B, D*H)."""

    def __init__(self, encoder: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, pack: str = "auto", peephole: bool = False):
        super().__init__()
        self.rnn = ScratchRNN(encoder, input_size, hidden_size, num_layers, bidirectional,
                              dropout if num_layers > 1 else 0.0, peephole)
        self.num_directions = len(self.rnn.suffixes)
        self.output_size = hidden_size * self.num_directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, h_n, _ = self.rnn(x, lengths.cpu())
        return outputs, torch.cat(list(h_n[-self.num_directions:]), dim=-1)
