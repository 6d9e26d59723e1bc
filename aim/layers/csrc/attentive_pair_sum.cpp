// The fused AFM / IFM pair term on CPU, forward and backward, one row at a time (aim/layers/native.py builds it).
//
//   out_b = sum_k a_bk r_bk,  r_bk = <v_k, p_bk>,  p_bk = e_bi ⊙ e_bj ⊙ keep_bk,
//   a_b   = softmax over the unmasked k of  s_bk / temperature,  s_bk = <score, ReLU(W p_bk + bias)>.
//
// The torch version (attention.py, _AttentivePairSum) runs about 25 small ops per chunk of rows, each a pass
// through memory. Here a pair's product (d numbers) and hidden layer (t numbers) live in registers: the work per
// row is a few thousand multiply-adds, and nothing of size [B, m, .] is written but the weights a and values r
// that the backward reads. Plain C++ with no torch headers (called through ctypes), so it builds in about a
// second; compiled for the machine it runs on (-march=native), so the loops over t and d vectorise.
//
// Threads take blocks of BLOCK rows. Each block sums its weight gradients into its own slot, and the slots are
// added in block order: the result does not depend on the number of threads.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t BLOCK = 64;  // rows per block of the backward's gradient slots
constexpr int MAX_WIDTH = 256;  // d and t above this use the torch path (native.py checks)

// hidden = ReLU(W p + bias) with W stored transposed as wt [d, t]; returns <score, hidden>.
template <typename real>
inline real hidden_layer(const real* p, const real* __restrict wt, const real* __restrict bias,
                         const real* __restrict score, int d, int t, real* __restrict hidden) {
  for (int u = 0; u < t; ++u) hidden[u] = bias[u];
  for (int x = 0; x < d; ++x) {
    const real px = p[x];
    const real* w = wt + static_cast<int64_t>(x) * t;
    for (int u = 0; u < t; ++u) hidden[u] += w[u] * px;
  }
  real s = 0;
  for (int u = 0; u < t; ++u) {
    hidden[u] = hidden[u] > 0 ? hidden[u] : 0;
    s += score[u] * hidden[u];
  }
  return s;
}

template <typename real>
inline void pair_product(const real* e, const int64_t* left, const int64_t* right, const real* keep, int k,
                         int d, real* p) {
  const real* ei = e + left[k] * d;
  const real* ej = e + right[k] * d;
  if (keep) {
    const real* kk = keep + static_cast<int64_t>(k) * d;
    for (int x = 0; x < d; ++x) p[x] = ei[x] * ej[x] * kk[x];
  } else {
    for (int x = 0; x < d; ++x) p[x] = ei[x] * ej[x];
  }
}

// The softmax over the unmasked pairs of a row's scores a [m] (the largest unmasked is `top`), in place, and the
// row's output sum_k a_k r_k. Every pair masked: all weights 0, as the torch path.
template <typename real>
inline real softmax_and_sum(real* a, const real* r, const uint8_t* mask, int64_t m, real top) {
  real total = 0;
  for (int64_t k = 0; k < m; ++k) {
    a[k] = (!mask || mask[k]) ? std::exp(a[k] - top) : 0;
    total += a[k];
  }
  real sum = 0;
  const real inv = total > 0 ? 1 / total : 0;
  for (int64_t k = 0; k < m; ++k) {
    a[k] *= inv;
    sum += a[k] * r[k];
  }
  return sum;
}

template <typename real>
void forward_rows(int64_t begin, int64_t end, const real* emb, const int64_t* left, const int64_t* right,
                  const real* wt, const real* bias, const real* score, const real* values, const uint8_t* mask,
                  const real* keep, real temperature, int64_t n, int64_t m, int d, int t, real* out, real* weights,
                  real* pair_values) {
  real p[MAX_WIDTH], hidden[MAX_WIDTH];
  for (int64_t b = begin; b < end; ++b) {
    const real* e = emb + b * n * d;
    const real* kb = keep ? keep + b * m * d : nullptr;
    const uint8_t* mb = mask ? mask + b * m : nullptr;
    real* a = weights + b * m;
    real* r = pair_values + b * m;
    real top = -std::numeric_limits<real>::infinity();
    for (int k = 0; k < m; ++k) {
      pair_product(e, left, right, kb, k, d, p);
      const real* v = values + static_cast<int64_t>(k) * d;
      real rk = 0;
      for (int x = 0; x < d; ++x) rk += v[x] * p[x];
      r[k] = rk;
      a[k] = hidden_layer(p, wt, bias, score, d, t, hidden) / temperature;
      if ((!mb || mb[k]) && a[k] > top) top = a[k];
    }
    out[b] = softmax_and_sum(a, r, mb, m, top);
  }
}

// Per block: grad_wt [d, t], grad_bias [t], grad_score [t], grad_values [m, d], in that order in its slot.
template <typename real>
void backward_rows(int64_t begin, int64_t end, const real* emb, const int64_t* left, const int64_t* right,
                   const real* wt, const real* bias, const real* score, const real* values, const real* keep,
                   real temperature, int64_t n, int64_t m, int d, int t, const real* grad, const real* weights,
                   const real* pair_values, real* grad_emb, real* slot) {
  real p[MAX_WIDTH], hidden[MAX_WIDTH], d_pre[MAX_WIDTH], d_p[MAX_WIDTH];
  real* g_wt = slot;
  real* g_bias = g_wt + static_cast<int64_t>(d) * t;
  real* g_score = g_bias + t;
  real* g_values = g_score + t;
  for (int64_t b = begin; b < end; ++b) {
    const real* e = emb + b * n * d;
    const real* kb = keep ? keep + b * m * d : nullptr;
    const real* a = weights + b * m;
    const real* r = pair_values + b * m;
    real* ge = grad_emb + b * n * d;
    std::memset(ge, 0, sizeof(real) * n * d);
    const real g = grad[b];
    // out = sum_k a_k r_k: d/dr_k = g a_k, d/da_k = g r_k; softmax: d/ds_k = a_k (g r_k - sum_l a_l g r_l)
    real mean = 0;
    for (int k = 0; k < m; ++k) mean += a[k] * r[k];
    for (int k = 0; k < m; ++k) {
      if (a[k] == 0) continue;  // masked (or underflowed): no gradient through this pair
      const real d_r = g * a[k];
      const real d_s = a[k] * g * (r[k] - mean) / temperature;
      pair_product(e, left, right, kb, k, d, p);
      hidden_layer(p, wt, bias, score, d, t, hidden);
      for (int u = 0; u < t; ++u) {
        g_score[u] += d_s * hidden[u];
        d_pre[u] = hidden[u] > 0 ? d_s * score[u] : 0;
        g_bias[u] += d_pre[u];
      }
      const real* v = values + static_cast<int64_t>(k) * d;
      real* gv = g_values + static_cast<int64_t>(k) * d;
      for (int x = 0; x < d; ++x) {
        const real* w = wt + static_cast<int64_t>(x) * t;
        real* gw = g_wt + static_cast<int64_t>(x) * t;
        real acc = d_r * v[x];
        for (int u = 0; u < t; ++u) {
          gw[u] += p[x] * d_pre[u];
          acc += w[u] * d_pre[u];
        }
        gv[x] += d_r * p[x];
        d_p[x] = kb ? acc * kb[static_cast<int64_t>(k) * d + x] : acc;
      }
      const real* ei = e + left[k] * d;
      const real* ej = e + right[k] * d;
      real* gi = ge + left[k] * d;
      real* gj = ge + right[k] * d;
      for (int x = 0; x < d; ++x) {
        gi[x] += d_p[x] * ej[x];
        gj[x] += d_p[x] * ei[x];
      }
    }
  }
}


// ---- The fast path: t == 16 and d <= 16, AFM's and IFM's usual shapes (Frappe: d = 10, t = 16). ----------------
// A pair's product, its hidden layer and its gradients are each one 16-wide vector (GCC's vector extension: one
// AVX-512 register for float, two where the CPU has only AVX2), d padded with zeros to 16. The generic loops
// above left the compiler too little to vectorise: at Frappe's shapes they were 3x slower than the torch path.
template <typename real>
struct Vector16;
template <>
struct Vector16<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vector16<double> {
  typedef double type __attribute__((vector_size(128)));
};
template <typename real>
using vec16 = typename Vector16<real>::type;

// The sum of a vector's 16 numbers as a tree (8 + 8, 4 + 4, ...), in registers: a loop over the numbers went
// through memory (a store, then 16 dependent scalar loads and adds), and two of those per pair were most of the
// forward's time.
template <typename real>
inline real hsum(vec16<real> v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
  return v[0];
}

template <typename real>
inline vec16<real> load(const real* x, int d) {  // d <= 16 numbers, zeros after
  vec16<real> v = {};
  for (int i = 0; i < d; ++i) v[i] = x[i];
  return v;
}

template <typename real>
inline vec16<real> relu(vec16<real> v) {
  const vec16<real> zero = {};
  return v > zero ? v : zero;
}

template <typename real>
struct Vec16Params {  // the attention weights as vectors: W^T by input, W by hidden unit, bias, score, values
  std::vector<vec16<real>> wt, w, values;
  vec16<real> bias, score;
  Vec16Params() = default;
  Vec16Params(const real* wt_, const real* bias_, const real* score_, const real* values_, int64_t m, int d)
      : wt(d), w(16), values(m) {
    for (int x = 0; x < d; ++x) wt[x] = load(wt_ + x * 16, 16);
    for (int u = 0; u < 16; ++u) {
      w[u] = vec16<real>{};
      for (int x = 0; x < d; ++x) w[u][x] = wt_[x * 16 + u];
    }
    for (int64_t k = 0; k < m; ++k) values[k] = load(values_ + k * d, d);
    bias = load(bias_, 16);
    score = load(score_, 16);
  }
  template <int D>
  inline vec16<real> hidden(const vec16<real>& p, int d_runtime) const {  // ReLU(W p + bias)
    const int d = D > 0 ? D : d_runtime;
    vec16<real> h = bias;
    for (int x = 0; x < d; ++x) h += p[x] * wt[x];
    return relu<real>(h);
  }
};

template <typename real, int D>
void forward_rows16(int64_t begin, int64_t end, const Vec16Params<real>& P, const real* emb, const int64_t* left,
                    const int64_t* right, const uint8_t* mask, const real* keep, real temperature, int64_t n,
                    int64_t m, int d_runtime, real* out, real* weights, real* pair_values) {
  const int d = D > 0 ? D : d_runtime;
  std::vector<vec16<real>> e(n);
  for (int64_t b = begin; b < end; ++b) {
    for (int64_t i = 0; i < n; ++i) e[i] = load(emb + (b * n + i) * d, d);
    const real* kb = keep ? keep + b * m * d : nullptr;
    const uint8_t* mb = mask ? mask + b * m : nullptr;
    real* a = weights + b * m;
    real* r = pair_values + b * m;
    real top = -std::numeric_limits<real>::infinity();
    for (int64_t k = 0; k < m; ++k) {
      vec16<real> p = e[left[k]] * e[right[k]];
      if (kb) p *= load(kb + k * d, d);
      r[k] = hsum<real>(P.values[k] * p);
      a[k] = hsum<real>(P.score * P.template hidden<D>(p, d)) / temperature;
      if ((!mb || mb[k]) && a[k] > top) top = a[k];
    }
    out[b] = softmax_and_sum(a, r, mb, m, top);
  }
}

template <typename real, int D>
void backward_rows16(int64_t begin, int64_t end, const Vec16Params<real>& P, const real* emb, const int64_t* left,
                     const int64_t* right, const real* keep, real temperature, int64_t n, int64_t m, int d_runtime,
                     const real* grad, const real* weights, const real* pair_values, real* grad_emb, real* slot) {
  const int d = D > 0 ? D : d_runtime;
  std::vector<vec16<real>> e(n), ge(n), g_wt(d, vec16<real>{}), g_values(m, vec16<real>{});
  vec16<real> g_bias = {}, g_score = {};
  alignas(64) real d_pre[16];
  for (int64_t b = begin; b < end; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      e[i] = load(emb + (b * n + i) * d, d);
      ge[i] = vec16<real>{};
    }
    const real* kb = keep ? keep + b * m * d : nullptr;
    const real* a = weights + b * m;
    const real* r = pair_values + b * m;
    const real g = grad[b];
    real mean = 0;
    for (int64_t k = 0; k < m; ++k) mean += a[k] * r[k];
    for (int64_t k = 0; k < m; ++k) {
      if (a[k] == 0) continue;
      const real d_r = g * a[k];
      const real d_s = a[k] * g * (r[k] - mean) / temperature;
      const vec16<real> kk = kb ? load(kb + k * d, d) : vec16<real>{};
      vec16<real> p = e[left[k]] * e[right[k]];
      if (kb) p *= kk;
      const vec16<real> h = P.template hidden<D>(p, d);
      g_score += d_s * h;
      const vec16<real> zero = {};
      const vec16<real> dp = h > zero ? d_s * P.score : zero;
      g_bias += dp;
      vec16<real> d_p = d_r * P.values[k];
      g_values[k] += d_r * p;
      for (int u = 0; u < 16; ++u) d_pre[u] = dp[u];
      for (int u = 0; u < 16; ++u) d_p += d_pre[u] * P.w[u];
      for (int x = 0; x < d; ++x) g_wt[x] += p[x] * dp;
      if (kb) d_p *= kk;
      ge[left[k]] += d_p * e[right[k]];
      ge[right[k]] += d_p * e[left[k]];
    }
    for (int64_t i = 0; i < n; ++i)
      for (int x = 0; x < d; ++x) grad_emb[(b * n + i) * d + x] = ge[i][x];
  }
  real* s = slot;
  for (int x = 0; x < d; ++x)
    for (int u = 0; u < 16; ++u) *s++ = g_wt[x][u];
  for (int u = 0; u < 16; ++u) *s++ = g_bias[u];
  for (int u = 0; u < 16; ++u) *s++ = g_score[u];
  for (int64_t k = 0; k < m; ++k)
    for (int x = 0; x < d; ++x) *s++ = g_values[k][x];
}

template <typename real>
void forward(const real* emb, const int64_t* left, const int64_t* right, const real* wt, const real* bias,
             const real* score, const real* values, const uint8_t* mask, const real* keep, double temperature,
             int64_t batch, int64_t n, int64_t m, int64_t d, int64_t t, int threads, real* out, real* weights,
             real* pair_values) {
  const int64_t blocks = (batch + BLOCK - 1) / BLOCK;
  const bool fast = t == 16 && d <= 16;
  Vec16Params<real> P;  // read only on the fast path (its constructor reads 16 numbers of bias and score)
  if (fast) P = Vec16Params<real>(wt, bias, score, values, m, int(d));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * BLOCK, end = begin + BLOCK < batch ? begin + BLOCK : batch;
    if (fast && d == 10)
      forward_rows16<real, 10>(begin, end, P, emb, left, right, mask, keep, real(temperature), n, m, int(d), out,
                               weights, pair_values);
    else if (fast)
      forward_rows16<real, 0>(begin, end, P, emb, left, right, mask, keep, real(temperature), n, m, int(d), out,
                              weights, pair_values);
    else
      forward_rows<real>(begin, end, emb, left, right, wt, bias, score, values, mask, keep, real(temperature), n, m,
                         int(d), int(t), out, weights, pair_values);
  }
}

template <typename real>
void backward(const real* emb, const int64_t* left, const int64_t* right, const real* wt, const real* bias,
              const real* score, const real* values, const real* keep, double temperature, int64_t batch, int64_t n,
              int64_t m, int64_t d, int64_t t, int threads, const real* grad, const real* weights,
              const real* pair_values, real* grad_emb, real* slots, real* grad_params) {
  const int64_t blocks = (batch + BLOCK - 1) / BLOCK;
  const int64_t slot_size = d * t + 2 * t + m * d;
  std::memset(slots, 0, sizeof(real) * blocks * slot_size);
  const bool fast = t == 16 && d <= 16;
  Vec16Params<real> P;  // read only on the fast path (its constructor reads 16 numbers of bias and score)
  if (fast) P = Vec16Params<real>(wt, bias, score, values, m, int(d));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * BLOCK, end = begin + BLOCK < batch ? begin + BLOCK : batch;
    real* slot = slots + blk * slot_size;
    if (fast && d == 10)
      backward_rows16<real, 10>(begin, end, P, emb, left, right, keep, real(temperature), n, m, int(d), grad,
                                weights, pair_values, grad_emb, slot);
    else if (fast)
      backward_rows16<real, 0>(begin, end, P, emb, left, right, keep, real(temperature), n, m, int(d), grad,
                               weights, pair_values, grad_emb, slot);
    else
      backward_rows<real>(begin, end, emb, left, right, wt, bias, score, values, keep, real(temperature), n, m,
                          int(d), int(t), grad, weights, pair_values, grad_emb, slot);
  }
  // The blocks' slots in block order: the same sums whatever the number of threads.
  std::memset(grad_params, 0, sizeof(real) * slot_size);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const real* slot = slots + blk * slot_size;
    for (int64_t i = 0; i < slot_size; ++i) grad_params[i] += slot[i];
  }
}

}  // namespace

extern "C" {

int aim_pair_max_width() { return MAX_WIDTH; }
int64_t aim_pair_block_rows() { return BLOCK; }

#define AIM_PAIR_ENTRY_POINTS(real, suffix)                                                                        \
  void aim_pair_forward_##suffix(const real* emb, const int64_t* left, const int64_t* right, const real* wt,      \
                                 const real* bias, const real* score, const real* values, const uint8_t* mask,      \
                                 const real* keep, double temperature, int64_t batch, int64_t n, int64_t m,         \
                                 int64_t d, int64_t t, int threads, real* out, real* weights, real* pair_values) {  \
    forward<real>(emb, left, right, wt, bias, score, values, mask, keep, temperature, batch, n, m, d, t, threads,  \
                  out, weights, pair_values);                                                                     \
  }                                                                                                               \
  void aim_pair_backward_##suffix(const real* emb, const int64_t* left, const int64_t* right, const real* wt,     \
                                  const real* bias, const real* score, const real* values, const real* keep,        \
                                  double temperature, int64_t batch, int64_t n, int64_t m, int64_t d, int64_t t,    \
                                  int threads, const real* grad, const real* weights, const real* pair_values,      \
                                  real* grad_emb, real* slots, real* grad_params) {                                 \
    backward<real>(emb, left, right, wt, bias, score, values, keep, temperature, batch, n, m, d, t, threads, grad, \
                   weights, pair_values, grad_emb, slots, grad_params);                                            \
  }

AIM_PAIR_ENTRY_POINTS(float, f32)
AIM_PAIR_ENTRY_POINTS(double, f64)

}  // extern "C"
