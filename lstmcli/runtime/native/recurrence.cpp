// The time loops of the scratch LSTM and GRU (lstmcli/models/recurrence.py), in C++.
//
// Same equations, same buffers and same results as the Python loops there, which stay the reference
// and the fallback. Per time step: one matmul for the active rows (the LSTM's [x_t | h_{t-1}] times
// [W_ih | W_hh]^T, the GRU's W_hh h), then ONE pass over the step's values that applies every gate
// non-linearity and the cell update, and, when training, stores the backward's per-step factors. The
// Python loop needs ~10 element-wise ATen calls per step for that, each a pass over memory plus
// dispatch and interpreter overhead, which at the usual sizes cost about as much as the matmul.
//
// Layouts (all contiguous, time-major, rows sorted by length so that the active rows are a prefix):
//   LSTM acts (T, B, 4H): W_ih x + W_hh h (b is added as it is read), gate blocks (o, i, f, g); the forward
//        leaves σ(f) in the f block (the backward needs f_{t+1}); rows that have ended are not written.
//        K (T, B, 4H) = (K_o, K_i, K_f, K_g), A (T, B, H).
//   GRU  xproj (T, B, 3H) = W_ih x + b_ih, blocks (r, z, n); K (T, B, 4H) = (K_r, K_z, K_n, K_hn).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <omp.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include <exception>
#include <optional>
#include <type_traits>
#include <vector>

using at::Tensor;
template <typename T>
using V = at::vec::Vectorized<T>;

namespace {

// 1 / d. float: the hardware estimate (14 bits with AVX-512, 12 with AVX2) and one Newton step,
// r' = r (2 - d r), which squares its relative error (2^-28 / 2^-24, i.e. float's own precision);
// a division costs several times as much, and an LSTM step has five per unit. Other types divide.
template <typename T>
inline V<T> recip(V<T> d) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const V<T> r(_mm512_rcp14_ps(d));
    return r * (V<T>(T(2)) - d * r);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const V<T> r(_mm256_rcp_ps(d));
    return r * (V<T>(T(2)) - d * r);
  }
#endif
  return V<T>(T(1)) / d;
}

// e^x with x clamped to [-80, 80]: ATen's 5th-order polynomial for float (exp_u20), Sleef elsewhere;
// against nn.LSTM / nn.GRU the outputs stay within ~1e-6 (the tests ask 1e-5). Clamping keeps exp finite, so the Newton step above never sees
// inf · 0; σ(±80) and tanh(±40) are 0 / ±1 to float precision anyway. at::vec::clamp keeps NaN.
template <typename T>
inline V<T> exp_(V<T> x) {
  x = at::vec::clamp(x, V<T>(T(-80)), V<T>(T(80)));
  if constexpr (std::is_same_v<T, float>) return x.exp_u20();
  return x.exp();
}

template <typename T>
inline V<T> sigmoid(V<T> x) {
  return recip(V<T>(T(1)) + exp_(x.neg()));
}

// tanh x = 2 σ(2x) - 1: one exp, as sigmoid. Sleef's tanh (Vectorized::tanh) costs several times as
// much (benchmarks/RESULTS.md, "Design choices"), and the absolute error stays ~1e-7.
template <typename T>
inline V<T> tanh_(V<T> x) {
  return V<T>(T(2)) * recip(V<T>(T(1)) + exp_(x * V<T>(T(-2)))) - V<T>(T(1));
}

// f(j, count) over the H units of a row, a vector register at a time; the last call may be partial.
template <typename T, typename F>
inline void over_units(int64_t H, const F& f) {
  constexpr int64_t W = V<T>::size();
  int64_t j = 0;
  for (; j + W <= H; j += W) f(j, W);
  if (j < H) f(j, H - j);
}

template <typename T>
inline V<T> ld(const T* p, int64_t cnt) {
  return cnt == V<T>::size() ? V<T>::loadu(p) : V<T>::loadu(p, cnt);
}

template <typename T>
inline void st(V<T> v, T* p, int64_t cnt) {
  cnt == V<T>::size() ? v.store(p) : v.store(p, cnt);
}

// The caller's floating-point mode, for the threads of a parallel region: the flush of denormals to zero
// that torch.set_flush_denormal sets (lstmcli/runtime/process.py) is a per-thread register (x86 MXCSR),
// and OpenMP's workers start without it. Gradients fading through many forget gates reach denormals,
// which x86 CPUs handle far slower; a worker without the flush would run its direction that much slower.
struct FloatMode {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned csr = _mm_getcsr();
  struct Apply {
    unsigned saved = _mm_getcsr();
    explicit Apply(const FloatMode& m) { _mm_setcsr(m.csr); }
    ~Apply() { _mm_setcsr(saved); }
  };
#else
  struct Apply {
    explicit Apply(const FloatMode&) {}
  };
#endif
};

// Rows of a step, split between threads only when a thread gets enough work to pay for the fork.
template <typename F>
inline void over_rows(int64_t n, int64_t row_size, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_size));
  const FloatMode mode;
  at::parallel_for(0, n, grain, [&](int64_t b0, int64_t b1) {
    const FloatMode::Apply as_caller(mode);
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
}

// MKL's packed GEMM, when the torch build carries MKL (x86 wheels do; its cblas symbols are exported by
// libtorch_cpu). Declared weak: where they are absent the pointers are null and ATen's matmul runs.
// The time loops multiply by the same weight matrix at every step; a plain sgemm re-packs it (1 MB at
// hidden 256) into its internal layout on each call, a good share of the step's matmul. Packing it once per
// sequence batch removes that (oneDNN's RNN does the same). MKL_INT is int (LP64).
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}
inline bool have_packed_gemm() { return cblas_sgemm_pack_get_size && cblas_sgemm_pack && cblas_sgemm_compute; }
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };

// out[0:m] (+)= a[0:m] · op(W), op(W) = W^T when `transposed` (W is N x K, as nn.Linear's weight),
// else W (K x N). Rows of a and out are contiguous; m may change from call to call.
class StepMatmul {
 public:
  StepMatmul(const Tensor& w, bool transposed) : w_(w), wt_(transposed ? w.t() : w) {
    check(w, "weights");
    K_ = wt_.size(0), N_ = wt_.size(1);
    if (w.scalar_type() != at::kFloat || !have_packed_gemm()) return;
    const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, 1, N_, K_);
    packed_ = at::empty({static_cast<int64_t>(bytes)}, w.options().dtype(at::kByte));
    cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, 1, N_, K_, 1.0f, w.data_ptr<float>(),
                     w.size(1), reinterpret_cast<float*>(packed_.data_ptr()));
  }
  void operator()(const Tensor& a, Tensor out, bool accumulate) const {
    const int64_t m = a.size(0);
    if (m == 0) return;
    if (!packed_.defined()) {
      if (accumulate)
        out.addmm_(a, wt_);
      else
        at::mm_out(out, a, wt_);
      return;
    }
    TORCH_CHECK(a.is_contiguous() && out.is_contiguous(), "StepMatmul: rows must be contiguous");
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, m, N_, K_, a.data_ptr<float>(), K_,
                        reinterpret_cast<const float*>(packed_.data_ptr()), N_, accumulate ? 1.0f : 0.0f,
                        out.data_ptr<float>(), N_);
  }

 private:
  Tensor w_, wt_, packed_;
  int64_t K_, N_;
};

}  // namespace

// LSTM inference, float32 with MKL: one OpenMP region for the whole sequence. The hidden units are cut
// into blocks, one or more per thread; a thread owns its blocks' rows of W_ih, W_hh and b (all four
// gates), projects its blocks' inputs a few steps ahead, multiplies h_{t-1} by its block of W_hh
// (single-threaded packed GEMM) and applies the gates to that block at once, while the block's
// pre-activations, c and weights stay in that core's L2. The threads meet once per step (a barrier:
// h_t is complete before step t + 1 reads it). The general loop below pays a fork/join for the
// matmul and another for the gates, and its gate pass reads pre-activations the other core wrote.
// A block's acts are (B, 4w) rows, gate blocks (o, i, f, g) of w units; ended rows are 0 in hs.
void lstm_infer(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh,
                const std::vector<int64_t>& active, Tensor hs, Tensor c_last) {
  const int64_t T = x.size(0), B = x.size(1), In = x.size(2), H = w_hh.size(1);
  constexpr int64_t W = V<float>::size();
  const int64_t nblocks = std::clamp<int64_t>(at::get_num_threads(), 1, std::max<int64_t>(1, H / W));
  const int64_t per = (H + nblocks - 1) / nblocks, width = (per + W - 1) / W * W;  // units per block
  struct Block {
    int64_t u0, w, chunk;
    Tensor w_ih, w_hh, bias, packed_ih, packed_hh, acts;
  };
  std::vector<Block> blocks;
  for (int64_t u0 = 0; u0 < H; u0 += width) {
    Block b{u0, std::min(width, H - u0)};
    auto rows = at::cat({at::arange(u0, u0 + b.w), at::arange(H + u0, H + u0 + b.w),
                         at::arange(2 * H + u0, 2 * H + u0 + b.w), at::arange(3 * H + u0, 3 * H + u0 + b.w)});
    b.w_ih = w_ih.index_select(0, rows), b.w_hh = w_hh.index_select(0, rows), b.bias = bias.index_select(0, rows);
    b.packed_ih = at::empty({static_cast<int64_t>(cblas_sgemm_pack_get_size(kBMatrix, 1, 4 * b.w, In))}, x.options().dtype(at::kByte));
    b.packed_hh = at::empty({static_cast<int64_t>(cblas_sgemm_pack_get_size(kBMatrix, 1, 4 * b.w, H))}, x.options().dtype(at::kByte));
    b.chunk = std::clamp<int64_t>((1 << 17) / (B * 4 * b.w), 1, T);  // ~512 KB of floats
    b.acts = at::empty({b.chunk * B * 4 * b.w}, x.options());
    blocks.push_back(std::move(b));
  }
  const Tensor x2 = x.reshape({T * B, In}).contiguous();
  const float* xp = x2.data_ptr<float>();
  float *h0 = hs.data_ptr<float>(), *c0 = c_last.data_ptr<float>();
  const int64_t nb = static_cast<int64_t>(blocks.size());
  const FloatMode mode;
#pragma omp parallel num_threads(nb)
  {
    const FloatMode::Apply as_caller(mode);
    const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
    auto mine = [&](const auto& f) { for (int64_t k = tid; k < nb; k += nth) f(blocks[k]); };
    auto P = [](const Tensor& t) { return reinterpret_cast<float*>(t.data_ptr()); };
    mine([&](Block& b) {  // packed by the thread that computes with it, as MKL advises
      cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, 1, 4 * b.w, In, 1.0f, b.w_ih.data_ptr<float>(), In, P(b.packed_ih));
      cblas_sgemm_pack(kRowMajor, kBMatrix, kTrans, 1, 4 * b.w, H, 1.0f, b.w_hh.data_ptr<float>(), H, P(b.packed_hh));
    });
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = active[t];
      float* h_t = h0 + t * B * H;
      mine([&](Block& b) {
        const int64_t w = b.w, u0 = b.u0;
        float* acts = P(b.acts);
        if (t % b.chunk == 0)  // W_ih x for steps t .. t + chunk - 1, this block's gates only
          cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, std::min(b.chunk, T - t) * B, 4 * w, In,
                              xp + t * B * In, In, P(b.packed_ih), 4 * w, 0.0f, acts, 4 * w);
        float* a0 = acts + (t % b.chunk) * B * 4 * w;
        if (t > 0)  // + W_hh h_{t-1}, active rows only
          cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, n, 4 * w, H, h_t - B * H, H, P(b.packed_hh), 4 * w,
                              1.0f, a0, 4 * w);
        const float* bi = b.bias.data_ptr<float>();
        for (int64_t r = 0; r < n; ++r) {
          const float* a = a0 + r * 4 * w;
          float *c = c0 + r * H + u0, *h = h_t + r * H + u0;
          over_units<float>(w, [&](int64_t j, int64_t m) {
            auto pre = [&](int64_t q) { return ld(a + q * w + j, m) + ld(bi + q * w + j, m); };
            auto o = sigmoid(pre(0)), i = sigmoid(pre(1)), f = sigmoid(pre(2)), g = tanh_(pre(3));
            auto cv = f * ld(c + j, m) + i * g;  // c' = f ⊙ c + i ⊙ g
            st(cv, c + j, m);
            st(o * tanh_(cv), h + j, m);  // h' = o ⊙ tanh(c')
          });
        }
        for (int64_t r = n; r < B; ++r) std::fill_n(h_t + r * H + u0, w, 0.0f);
      });
#pragma omp barrier
    }
  }
}

// LSTM forward over x (T, B, In). hs (T, B, H) is written (0 at ended rows); c_last (B, H), zero on
// entry, is the running cell state: rows that have ended are no longer touched, so it ends holding
// each sequence's final c (what c_n needs; the backward needs no other c). Training passes
// acts, K and A: acts (T, B, 4H) keeps each step's σ(f) for the backward, K and A its factors.
// A step's pre-activations are ONE product, [x_t | h_{t-1}] · [W_ih | W_hh]^T, over the active rows
// (K = In + H), written straight into the step's acts. Projecting x a few steps ahead with W_ih and
// then adding W_hh h_{t-1} per step made two GEMMs of depth In and H and wrote the acts twice; the
// single deeper one is faster per forward (benchmarks/RESULTS.md, "Design choices"), for a copy of
// x_t and h_{t-1} (B x (In + H) floats) per step.
void lstm_forward(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh,
                  const std::vector<int64_t>& active, Tensor hs, Tensor c_last, std::optional<Tensor> acts_,
                  std::optional<Tensor> K, std::optional<Tensor> A) {
  for (auto* t : {&hs, &c_last}) check(*t, "LSTM buffers");
  const int64_t T = x.size(0), B = x.size(1), In = x.size(2), H = w_hh.size(1);
  const bool train = K.has_value();
  if (!train && x.scalar_type() == at::kFloat && have_packed_gemm() && !omp_in_parallel())
    return lstm_infer(x, w_ih.contiguous(), bias.contiguous(), w_hh.contiguous(), active, hs, c_last);
  const StepMatmul step(at::cat({w_ih, w_hh}, 1).contiguous(), true);  // · [W_ih | W_hh]^T
  const Tensor x_ = x.contiguous(), b_ = bias.contiguous();
  Tensor xh = at::zeros({B, In + H}, x.options());  // [x_t | h_{t-1}]; h_{-1} = 0
  Tensor acts = train ? *acts_ : at::empty({1, B, 4 * H}, hs.options());  // inference: one step's
  if (train) check(acts, "LSTM buffers");
  AT_DISPATCH_FLOATING_TYPES(hs.scalar_type(), "lstm_forward", [&] {
    using T_ = scalar_t;
    T_* xh0 = xh.data_ptr<T_>();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = active[t];
      const T_* x_t = x_.data_ptr<T_>() + t * B * In;
      const T_* h_prev = t > 0 ? hs.data_ptr<T_>() + (t - 1) * B * H : nullptr;
      for (int64_t r = 0; r < n; ++r) {
        std::copy_n(x_t + r * In, In, xh0 + r * (In + H));
        if (h_prev) std::copy_n(h_prev + r * H, H, xh0 + r * (In + H) + In);
      }
      const Tensor a_t = acts[train ? t : 0];
      step(xh.narrow(0, 0, n), a_t.narrow(0, 0, n), false);  // the gate pass adds b
      if (n < B) hs[t].narrow(0, n, B - n).zero_();
      T_* a0 = a_t.data_ptr<T_>();
      const T_* bi = b_.data_ptr<T_>();
      T_ *c0 = c_last.data_ptr<T_>(), *h0 = hs[t].data_ptr<T_>();
      T_* k0 = train ? (*K)[t].data_ptr<T_>() : nullptr;
      T_* A0 = train ? (*A)[t].data_ptr<T_>() : nullptr;
      over_rows(n, 4 * H, [&](int64_t b) {
        T_* a = a0 + b * 4 * H;
        over_units<T_>(H, [&](int64_t j, int64_t m) {
          const V<T_> one(T_(1));
          auto pre = [&](int64_t q) { return ld(a + q * H + j, m) + ld(bi + q * H + j, m); };
          auto o = sigmoid(pre(0)), i = sigmoid(pre(1)), f = sigmoid(pre(2)), g = tanh_(pre(3));
          auto c_prev = ld(c0 + b * H + j, m);  // c_last[b] holds c_{t-1} until overwritten here
          auto c = f * c_prev + i * g;  // c' = f ⊙ c + i ⊙ g
          auto tc = tanh_(c);
          st(c, c0 + b * H + j, m);
          st(o * tc, h0 + b * H + j, m);  // h' = o ⊙ tanh(c')
          if (train) {
            st(f, a + 2 * H + j, m);
            T_* k = k0 + b * 4 * H;
            st(o * (one - o) * tc, k + j, m);               // ∂h/∂pre_o
            st(i * (one - i) * g, k + H + j, m);            // ∂c/∂pre_i
            st(f * (one - f) * c_prev, k + 2 * H + j, m);   // ∂c/∂pre_f
            st((one - g * g) * i, k + 3 * H + j, m);        // ∂c/∂pre_g
            st((one - tc * tc) * o, A0 + b * H + j, m);     // ∂h/∂c
          }
        });
      });
    }
  });
}

// LSTM backward, all of it: the gradients of x (T, B, In), W_ih (4H, In), b (4H) and W_hh (4H, H).
// Per step, from t = T - 1 down, the pre-activation gradients d_pre_t (B, 4H), 0 at ended rows:
// dh_t = d_pre_{t+1} W_hh (+ d_hs_t), plus d h_last at a sequence's last step; dc_t = dc_{t+1} ⊙ f_{t+1}
// + dh_t ⊙ A_t, where at a sequence's last step d c_last takes the place of dc_{t+1} ⊙ f_{t+1};
// d_pre = (K_o ⊙ dh_t, K_{i,f,g} ⊙ dc_t). When only the final states are read (pooling "last"), d_hs
// is absent: no dense (T, B, H) gradient, almost all zeros, is made and read.
// They are kept for a few steps only (`ring`, step t in slot t % slots): each time a block of steps is
// complete, the products that need them run while they are still in cache, d_x = d_pre W_ih,
// d_b += Σ d_pre and d[W_ih | W_hh] += d_pre^T [x_t | h_{t-1}]. Forming d_pre for all T steps first
// (tens of MB) and then big products over it read it back from memory for each product. The weights'
// gradient is one product over the rows [x_t | h_{t-1}], copied side by side into `xh` (as the forward
// multiplies them), into d_w (4H, In + H): less time than one product for W_ih (N = In) and one for
// W_hh (N = H) (benchmarks/RESULTS.md, "Design choices").
struct GradBuffers {
  std::vector<Tensor> out;  // d_x, d_W_ih, d_b, d_W_hh
  Tensor ring, xh, d_w;
};

void lstm_grads_into(const GradBuffers& buf, const std::optional<Tensor>& d_hs, const std::optional<Tensor>& d_c_last,
                     const std::optional<Tensor>& d_h_last, const Tensor& acts, const Tensor& K, const Tensor& A,
                     const Tensor& w_hh, const Tensor& w_ih, const Tensor& x, const Tensor& hs,
                     const std::vector<int64_t>& active) {
  const Tensor& ring = buf.ring;
  const int64_t T = acts.size(0), B = acts.size(1), H = acts.size(2) / 4, In = x.size(2), slots = ring.size(0);
  const Tensor &d_x = buf.out[0], &d_w_ih = buf.out[1], &d_b = buf.out[2], &d_w_hh = buf.out[3];
  Tensor dc = at::zeros({B, H}, acts.options()), dh_rec = at::zeros({B, H}, acts.options());
  const StepMatmul rec(w_hh, false);  // · W_hh
  auto block_done = [&](int64_t t0) {  // steps t0 .. t1 - 1 are in slots 0 .. t1 - t0 - 1
    const int64_t t1 = std::min(t0 + slots, T), rows = (t1 - t0) * B;
    const Tensor dp = ring.narrow(0, 0, t1 - t0).view({rows, 4 * H});
    Tensor d_x_block = d_x.narrow(0, t0, t1 - t0).view({rows, In});
    at::mm_out(d_x_block, dp, w_ih);
    d_b.add_(dp.sum(0));
    const Tensor xh = buf.xh.narrow(0, 0, rows), x_part = xh.narrow(1, 0, In), h_part = xh.narrow(1, In, H);
    x_part.copy_(x.narrow(0, t0, t1 - t0).view({rows, In}));
    if (t0 == 0) {  // step 0 read h_{-1} = 0
      h_part.narrow(0, 0, B).zero_();
      if (t1 > 1) h_part.narrow(0, B, rows - B).copy_(hs.narrow(0, 0, t1 - 1).view({rows - B, H}));
    } else {
      h_part.copy_(hs.narrow(0, t0 - 1, t1 - t0).view({rows, H}));
    }
    buf.d_w.addmm_(dp.t(), xh);
  };
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_grads", [&] {
    using T_ = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t n = active[t], n_next = t + 1 < T ? active[t + 1] : 0;
      const Tensor dp_t = ring[t % slots];
      if (n < B) dp_t.narrow(0, n, B - n).zero_();
      const T_* f_next = t + 1 < T ? acts[t + 1].data_ptr<T_>() + 2 * H : nullptr;
      const T_* dhs = d_hs ? (*d_hs)[t].data_ptr<T_>() : nullptr;
      const T_* dcl = d_c_last ? d_c_last->data_ptr<T_>() : nullptr;
      const T_* dhl = d_h_last ? d_h_last->data_ptr<T_>() : nullptr;
      const T_ *k0 = K[t].data_ptr<T_>(), *A0 = A[t].data_ptr<T_>();
      T_ *dc0 = dc.data_ptr<T_>(), *dhr0 = dh_rec.data_ptr<T_>(), *dp0 = dp_t.data_ptr<T_>();
      over_rows(n, 4 * H, [&](int64_t b) {
        const T_* k = k0 + b * 4 * H;
        T_* dp = dp0 + b * 4 * H;
        over_units<T_>(H, [&](int64_t j, int64_t m) {
          auto dh = ld(dhr0 + b * H + j, m);
          if (dhs) dh = dh + ld(dhs + b * H + j, m);
          const bool last = b >= n_next;  // t is row b's last step
          if (last && dhl) dh = dh + ld(dhl + b * H + j, m);
          auto dcv = dh * ld(A0 + b * H + j, m);
          if (!last)
            dcv = dcv + ld(dc0 + b * H + j, m) * ld(f_next + b * 4 * H + j, m);
          else if (dcl)
            dcv = dcv + ld(dcl + b * H + j, m);
          st(dcv, dc0 + b * H + j, m);
          st(ld(k + j, m) * dh, dp + j, m);
          for (int64_t q = 1; q < 4; ++q) st(ld(k + q * H + j, m) * dcv, dp + q * H + j, m);
        });
      });
      if (t > 0) rec(dp_t.narrow(0, 0, n), dh_rec.narrow(0, 0, n), false);
      if (t % slots == 0) block_done(t);
    }
  });
  d_w_ih.copy_(buf.d_w.narrow(1, 0, In));
  d_w_hh.copy_(buf.d_w.narrow(1, In, H));
}

// The outputs (d_x, d_W_ih, d_b, d_W_hh) and the working buffers: a ring of ~GRAD_ROWS rows of d_pre,
// as many rows of [x_t | h_{t-1}] and the weights' gradient d[W_ih | W_hh]. Allocated by the thread that
// calls: glibc gives other threads' allocations arenas of their own (see lstmcli/runtime/process.py).
constexpr int64_t GRAD_ROWS = 1024;  // 16 steps at batch 64, 4 MB at hidden 256: stays in cache
GradBuffers grads_buffers(const Tensor& acts, const Tensor& w_ih, const Tensor& x) {
  const int64_t T = acts.size(0), B = acts.size(1), G = acts.size(2), H = G / 4, In = x.size(2);
  const int64_t slots = std::clamp<int64_t>(GRAD_ROWS / std::max<int64_t>(1, B), 1, std::max<int64_t>(1, T));
  const auto opt = acts.options();
  return {{at::empty_like(x), at::empty_like(w_ih), at::zeros({G}, opt), at::empty({G, H}, opt)},
          at::empty({slots, B, G}, opt), at::empty({slots * B, In + H}, opt), at::zeros({G, In + H}, opt)};
}

std::vector<Tensor> lstm_grads(std::optional<Tensor> d_hs, std::optional<Tensor> d_c_last,
                               std::optional<Tensor> d_h_last, const Tensor& acts, const Tensor& K, const Tensor& A,
                               const Tensor& w_hh, const Tensor& w_ih, const Tensor& x, const Tensor& hs,
                               const std::vector<int64_t>& active) {
  const GradBuffers buf = grads_buffers(acts, w_ih, x);
  lstm_grads_into(buf, d_hs, d_c_last, d_h_last, acts, K, A, w_hh, w_ih, x, hs, active);
  return buf.out;
}

// GRU forward. hs (T, B, H) is written (0 at ended rows); zs (T, B, H) and K when given (training).
void gru_forward(const Tensor& xproj, const Tensor& w_hh, const Tensor& b_hh, const std::vector<int64_t>& active,
                 Tensor hs, std::optional<Tensor> zs, std::optional<Tensor> K) {
  check(xproj, "GRU buffers");
  check(hs, "GRU buffers");
  const int64_t T = xproj.size(0), B = xproj.size(1), H = xproj.size(2) / 3;
  const bool train = K.has_value();
  const Tensor zero = at::zeros({B, H}, xproj.options());
  const StepMatmul rec(w_hh, true);  // · W_hh^T
  Tensor hh = at::empty({B, 3 * H}, xproj.options());  // W_hh h + b_hh of the current step
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "gru_forward", [&] {
    using T_ = scalar_t;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = active[t];
      if (n < B) hs[t].narrow(0, n, B - n).zero_();
      const Tensor h_prev = t > 0 ? hs[t - 1] : zero;
      Tensor hh_n = hh.narrow(0, 0, n);
      hh_n.copy_(b_hh.expand_as(hh_n));
      if (t > 0) rec(h_prev.narrow(0, 0, n), hh_n, true);  // h_0 = 0: W_hh h_0 + b_hh = b_hh
      const T_ *x0 = xproj[t].data_ptr<T_>(), *hh0 = hh.data_ptr<T_>(), *hp0 = h_prev.data_ptr<T_>();
      T_* h0 = hs[t].data_ptr<T_>();
      T_* z0 = train ? (*zs)[t].data_ptr<T_>() : nullptr;
      T_* k0 = train ? (*K)[t].data_ptr<T_>() : nullptr;
      over_rows(n, 3 * H, [&](int64_t b) {
        const T_ *x = x0 + b * 3 * H, *q = hh0 + b * 3 * H;
        over_units<T_>(H, [&](int64_t j, int64_t m) {
          const V<T_> one(T_(1));
          auto r = sigmoid(ld(x + j, m) + ld(q + j, m));
          auto z = sigmoid(ld(x + H + j, m) + ld(q + H + j, m));
          auto hn = ld(q + 2 * H + j, m);
          auto nt = tanh_(ld(x + 2 * H + j, m) + r * hn);  // n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
          auto diff = ld(hp0 + b * H + j, m) - nt;
          st(nt + z * diff, h0 + b * H + j, m);  // h' = n + z ⊙ (h - n) = (1 - z) ⊙ n + z ⊙ h
          if (train) {
            T_* k = k0 + b * 4 * H;
            auto k_n = (one - nt * nt) * (one - z);
            st(z, z0 + b * H + j, m);
            st(r * (one - r) * hn * k_n, k + j, m);
            st(z * (one - z) * diff, k + H + j, m);
            st(k_n, k + 2 * H + j, m);
            st(k_n * r, k + 3 * H + j, m);
          }
        });
      });
    }
  });
}

// GRU backward: the gradients of the input pre-activations d_x and of W_hh h + b_hh d_hh, (T, B, 3H)
// each, 0 at ended rows. d_x = K_{r,z,n} ⊙ dh; d_hh = (K_r, K_z, K_hn) ⊙ dh; dh_{t-1} = z ⊙ dh + d_hh W_hh.
std::vector<Tensor> gru_backward(const Tensor& d_hs, const Tensor& zs, const Tensor& K, const Tensor& w_hh,
                                 const std::vector<int64_t>& active) {
  const int64_t T = zs.size(0), B = zs.size(1), H = zs.size(2);
  Tensor d_x = at::empty({T, B, 3 * H}, zs.options()), d_hh = at::empty({T, B, 3 * H}, zs.options());
  Tensor dh_rec = at::zeros({B, H}, zs.options());
  const StepMatmul rec(w_hh, false);  // · W_hh
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "gru_backward", [&] {
    using T_ = scalar_t;
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t n = active[t];
      if (n < B) {
        d_x[t].narrow(0, n, B - n).zero_();
        d_hh[t].narrow(0, n, B - n).zero_();
      }
      const T_ *dhs = d_hs[t].data_ptr<T_>(), *z0 = zs[t].data_ptr<T_>(), *k0 = K[t].data_ptr<T_>();
      T_ *dhr0 = dh_rec.data_ptr<T_>(), *dx0 = d_x[t].data_ptr<T_>(), *dq0 = d_hh[t].data_ptr<T_>();
      over_rows(n, 3 * H, [&](int64_t b) {
        const T_* k = k0 + b * 4 * H;
        T_ *dx = dx0 + b * 3 * H, *dq = dq0 + b * 3 * H;
        over_units<T_>(H, [&](int64_t j, int64_t m) {
          auto dh = ld(dhr0 + b * H + j, m) + ld(dhs + b * H + j, m);
          auto dr = ld(k + j, m) * dh, dz = ld(k + H + j, m) * dh;
          st(dr, dx + j, m);
          st(dz, dx + H + j, m);
          st(ld(k + 2 * H + j, m) * dh, dx + 2 * H + j, m);
          st(dr, dq + j, m);
          st(dz, dq + H + j, m);
          st(ld(k + 3 * H + j, m) * dh, dq + 2 * H + j, m);
          st(dh * ld(z0 + b * H + j, m), dhr0 + b * H + j, m);  // the z ⊙ dh part; the matmul adds the rest
        });
      });
      if (t > 0) rec(d_hh[t].narrow(0, 0, n), dh_rec.narrow(0, 0, n), true);
    }
  });
  return {d_x, d_hh};
}

// The two directions of a bidirectional LSTM layer at once, one per thread. They share nothing until
// the layer's output, and each step of one is a small matmul (B x H by H x 4H) plus a gate pass: split
// over two threads, every step pays two fork/joins and the matmul runs well short of twice as fast;
// run side by side on one thread each, a step needs no synchronisation and each core runs at its full
// single-thread speed (MKL and at::parallel_for run serially inside a parallel region). Worker threads
// start with autograd enabled: the guard keeps the kernels' ATen calls off the graph, as on the caller.
// An exception must not leave an OpenMP region (that terminates the process): it is carried out of it.
template <typename F>
void both_directions(const F& f) {
  const FloatMode mode;
  std::exception_ptr error;
#pragma omp parallel num_threads(2)
  {
    const FloatMode::Apply as_caller(mode);
    at::NoGradGuard no_grad;
    const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
    try {
      for (int d = tid; d < 2; d += nth) f(d);  // a one-thread team (nested, or OMP limits) runs both
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void lstm_forward_pair(const std::vector<Tensor>& x, const std::vector<Tensor>& w_ih, const std::vector<Tensor>& bias,
                       const std::vector<Tensor>& w_hh, const std::vector<int64_t>& active,
                       const std::vector<Tensor>& hs, const std::vector<Tensor>& c_last,
                       const std::vector<std::optional<Tensor>>& acts, const std::vector<std::optional<Tensor>>& K,
                       const std::vector<std::optional<Tensor>>& A) {
  both_directions([&](int d) { lstm_forward(x[d], w_ih[d], bias[d], w_hh[d], active, hs[d], c_last[d], acts[d], K[d], A[d]); });
}

std::vector<Tensor> lstm_grads_pair(const std::vector<std::optional<Tensor>>& d_hs,
                                    const std::vector<std::optional<Tensor>>& d_c_last,
                                    const std::vector<std::optional<Tensor>>& d_h_last, const std::vector<Tensor>& acts,
                                    const std::vector<Tensor>& K, const std::vector<Tensor>& A,
                                    const std::vector<Tensor>& w_hh, const std::vector<Tensor>& w_ih,
                                    const std::vector<Tensor>& x, const std::vector<Tensor>& hs,
                                    const std::vector<int64_t>& active) {
  const GradBuffers buf[2] = {grads_buffers(acts[0], w_ih[0], x[0]), grads_buffers(acts[1], w_ih[1], x[1])};
  both_directions([&](int d) {
    lstm_grads_into(buf[d], d_hs[d], d_c_last[d], d_h_last[d], acts[d], K[d], A[d], w_hh[d], w_ih[d], x[d], hs[d],
                    active);
  });
  std::vector<Tensor> out = buf[0].out;
  out.insert(out.end(), buf[1].out.begin(), buf[1].out.end());
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("packed_gemm", &have_packed_gemm,
        "whether the float32 step matmuls go through MKL's packed GEMM (else ATen's matmul)");
  m.def("lstm_forward", &lstm_forward, nogil);
  m.def("lstm_grads", &lstm_grads, nogil);
  m.def("lstm_forward_pair", &lstm_forward_pair, nogil);
  m.def("lstm_grads_pair", &lstm_grads_pair, nogil);
  m.def("gru_forward", &gru_forward, nogil);
  m.def("gru_backward", &gru_backward, nogil);
}
