"""Benchmark: the scratch LSTM's C++ time loops against the GEMMs they contain, in GFLOP/s.

    python benchmarks/bench_kernels.py [--steps 400] [--batch 64] [--input 128] [--hidden 256]

Says where a training step's time goes below `lstmcli bench`: whether the kernels (matmuls plus the
fused gate passes and the bookkeeping) lose against their own products, or the machine's two threads
lose against one. Rows (the FLOPs are the same useful products in each pair of rows):
  fwd / gemm fwd    one direction's training forward on one thread, and the same products through
                    torch.mm ([x_t | h_{t-1}] [W_ih | W_hh]^T at each step's rows);
  bwd / gemm bwd    its backward (d_x, d_b, d[W_ih | W_hh] and the per-step d_pre W_hh), and the same
                    products through torch.mm;
  fwd pair / bwd pair   both directions side by side on two threads, as a bidirectional layer trains;
  sgemm 1 / sgemm 2 the GEMM rate `lstmcli bench` samples for its limit (bench.sgemm_peak: the best
                    square product of n = 1024 and 2048), on one thread and on two.
Lengths run evenly from --steps down to 85% of it, as in one length-sorted batch. Best of --repeats.
"""

import argparse
import time

import torch

from lstmcli.models import recurrence
from lstmcli.runtime import native
from lstmcli.runtime.bench import sgemm_peak
from lstmcli.runtime.process import tune_process


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: buffers, thread pools, packed weights
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def direction(T: int, B: int, In: int, H: int) -> dict:
    """One direction's inputs, weights and training buffers (time-major, as recurrence.py has them)."""
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(T, B, In, generator=g), "w_ih": torch.randn(4 * H, In, generator=g) * 0.05,
            "bias": torch.zeros(4 * H), "w_hh": torch.randn(4 * H, H, generator=g) * 0.05,
            "hs": torch.empty(T, B, H), "c": torch.zeros(B, H), "acts": torch.empty(T, B, 4 * H),
            "K": torch.empty(T, B, 4 * H), "A": torch.empty(T, B, H),
            "d_hs": torch.randn(T, B, H, generator=g) * 0.01}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    tune_process()  # the process set up as the CLI sets it up (denormal flush, heap reuse)
    if not native.ensure():
        raise SystemExit("bench_kernels: the C++ kernels did not build here (see `lstmcli bench`)")
    kernels = recurrence.native_kernels()
    T, B, In, H = args.steps, args.batch, args.input, args.hidden
    lengths = torch.linspace(T, int(0.85 * T), B).long()
    active = (lengths[None, :] > torch.arange(T)[:, None]).sum(1).tolist()  # n_t, non-increasing
    flops = 2 * 4 * H * (In + H) * int(lengths.sum())  # one direction's forward; the backward is twice it
    d = [direction(T, B, In, H), direction(T, B, In, H)]
    one = d[0]

    def fwd():
        one["c"].zero_()
        kernels.lstm_forward(one["x"], one["w_ih"], one["bias"], one["w_hh"], active, one["hs"], one["c"],
                             one["acts"], one["K"], one["A"])

    def bwd():
        kernels.lstm_grads(one["d_hs"], None, None, one["acts"], one["K"], one["A"], one["w_hh"], one["w_ih"],
                           one["x"], one["hs"], active)

    # made once, outside the timings: [W_ih | W_hh]^T and every step's [x_t | h_{t-1}]
    w_t = torch.cat([one["w_ih"], one["w_hh"]], 1).t().contiguous()
    xh = torch.cat([one["x"], torch.cat([torch.zeros(1, B, H), one["hs"][:-1]])], 2)

    def gemm_fwd():
        for t in range(T):
            torch.mm(xh[t, : active[t]], w_t, out=one["acts"][t, : active[t]])

    def gemm_bwd():
        d_pre, dh = one["K"].view(T * B, 4 * H), torch.empty(B, H)
        for t in range(T - 1, 0, -1):
            torch.mm(one["K"][t, : active[t]], one["w_hh"], out=dh[: active[t]])
        torch.mm(d_pre, one["w_ih"])
        torch.mm(d_pre.t(), xh.view(T * B, In + H))

    def pair(*names):
        return [p[n] for n in names for p in d]

    def fwd_pair():
        for p in d:
            p["c"].zero_()
        x, w_ih, bias, w_hh, hs, c, acts, K, A = (pair(n) for n in
                                                  ("x", "w_ih", "bias", "w_hh", "hs", "c", "acts", "K", "A"))
        kernels.lstm_forward_pair(x, w_ih, bias, w_hh, active, hs, c, acts, K, A)

    def bwd_pair():
        d_hs, acts, K, A, w_hh, w_ih, x, hs = (pair(n) for n in
                                               ("d_hs", "acts", "K", "A", "w_hh", "w_ih", "x", "hs"))
        kernels.lstm_grads_pair(d_hs, [None, None], [None, None], acts, K, A, w_hh, w_ih, x, hs, active)

    rows = [("fwd", 1, fwd, flops), ("gemm fwd", 1, gemm_fwd, flops), ("bwd", 1, bwd, 2 * flops),
            ("gemm bwd", 1, gemm_bwd, 2 * flops), ("fwd pair", 2, fwd_pair, 2 * flops),
            ("bwd pair", 2, bwd_pair, 4 * flops)]
    print(f"T {T}, batch {B}, input {In}, hidden {H}, lengths {T}-{int(0.85 * T)}; best of {args.repeats}; "
          f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    for name, threads, fn, work in rows:
        torch.set_num_threads(threads)
        seconds = best_seconds(fn, args.repeats)
        print(f"{name:10s} {threads} thread{'s' if threads > 1 else ' '} {seconds * 1000:8.1f} ms "
              f"{work / seconds / 1e9:7.1f} GFLOP/s", flush=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rate = sgemm_peak(torch.device("cpu"), repeats=args.repeats)
        print(f"{f'sgemm {threads}':10s} {threads} thread{'s' if threads > 1 else ' '} {'':>8}    "
              f"{rate / 1e9:7.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
