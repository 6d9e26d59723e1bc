// BatchNorm (training statistics) -> ReLU -> dropout over a [B, H] float32 activation, forward and backward,
// for the hidden layers of DeepFM, IPNN and AIM's MLP on CPU; the MLP's output unit, which makes the logit; and
// dropout alone, for aim.layers.Dropout and the masks of dropout_mask. Loaded by aim/layers/native.py (ctypes, no torch headers).
//
// Why: torch runs these as separate ops, each a pass through a [4096, 400] activation (6.5 MB, larger than
// L2): batch norm's statistics and normalisation, the in-place ReLU, the dropout mask made from its random
// words (draw, compare, convert, multiply), and in the backward the dropout and ReLU gradients and batch norm's
// two passes. Here the forward is two passes (column statistics, then y = relu(a * z + c) * keep) and the
// backward two (column sums of g and g * xhat, then dz), where g = dy * scale wherever y > 0 (y > 0 exactly where
// the ReLU let the value through and dropout kept it, so neither a ReLU mask nor a dropout mask is stored).
//
// The dropout masks come from a counter-based generator (keyed_word below; aim/layers/dropout.py has its torch
// twin, and a test holds the two equal): element i of a draw gets a 32-bit word that is a hash of i and the
// draw's 64-bit key, so a mask is made where it is used, in registers, with no random numbers stored.
// torch.randint's words were 9 % of a DeepFM step after the fused layer (1.9 ms per [4096, 400] layer).
//
// Determinism: column sums run over the rows in order, each column within one thread (threads split the
// columns), so the result does not depend on the number of threads. Sums are in double. The dropout words depend
// only on the key and the element's index.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// Chris Wellons' lowbias32 (hash-prospector): a bijection of 32-bit words with a low avalanche bias.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The word of element i under key k: mix32(mix32(lo(i) ^ lo(k)) ^ hi(k) ^ hi(i)). An element is kept where its
// word >= drop << 16, i.e. where its top 16 bits >= drop (of 65536 levels).
inline uint32_t keyed_word(uint32_t lo_i, uint32_t lo_k, uint32_t hi_k_and_i) {
  return mix32(mix32(lo_i ^ lo_k) ^ hi_k_and_i);
}

// Calls span(offset, count, lo, hi) over the indices [first, first + n), cut where the low 32 bits of the index
// wrap, so the inner loops run on 32-bit lanes (hi is constant in a span; in practice there is one span).
template <class Span>
inline void index_spans(uint64_t first, int64_t n, Span span) {
  int64_t done = 0;
  while (done < n) {
    const uint64_t at = first + static_cast<uint64_t>(done);
    const int64_t room = static_cast<int64_t>((uint64_t{1} << 32) - (at & 0xffffffffULL));
    const int64_t count = std::min(n - done, room);
    span(done, count, static_cast<uint32_t>(at), static_cast<uint32_t>(at >> 32));
    done += count;
  }
}

// Per column h of a [B, H] array, the sums over the rows, in row order and in double, of two terms:
// term(r, h, t1, t2), then finish(h, sum1, sum2). Threads take whole 16-float (64-byte) pieces of the columns,
// so the thread count changes no bit.
template <class Term, class Finish>
void column_sums(int64_t B, int64_t H, int threads, Term term, Finish finish) {
  const int64_t pieces = (H + 15) / 16;
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, pieces)));
#pragma omp parallel num_threads(parts)
  {
    const int64_t part = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t h0 = std::min(H, pieces * part / count * 16), h1 = std::min(H, pieces * (part + 1) / count * 16);
    const int64_t w = h1 - h0;
    std::vector<double> s1(w, 0.0), s2(w, 0.0);
    double* p1 = s1.data();
    double* p2 = s2.data();
    const Term local = term;  // a thread's own copy: its captures go to registers, and the loop vectorises
    for (int64_t r = 0; r < B; ++r) {
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        double t1, t2;
        local(r, h0 + j, t1, t2);
        p1[j] += t1;
        p2[j] += t2;
      }
    }
    for (int64_t j = 0; j < w; ++j) finish(h0 + j, p1[j], p2[j]);
  }
}

// The activations' element type: float32, or bfloat16 (its 16 bits, as in torch; under bf16 autocast a Linear's
// output is bf16). Arithmetic is in float and sums in double either way; a bf16 result is rounded to nearest even.
inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(p[i]) << 16);
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  p[i] = v != v ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffU + ((u >> 16) & 1U)) >> 16);
}

// z [B, H]; gamma, beta [H] (float). Dropout where drop > 0: an element is kept where keyed_word >= drop << 16
// (index r * H + h, key `key`), then scaled by `scale`. Writes y [B, H], and per column the mean,
// 1 / sqrt(biased var + eps) and the biased var.
template <class T>
void bnrd_forward(const T* z, const float* gamma, const float* beta, uint64_t key, uint32_t drop, float scale,
                  double eps, int64_t B, int64_t H, int threads, T* y, float* mean_out, float* rstd_out,
                  float* var_out) {
  std::vector<float> a(H), c(H);
  float* pa = a.data();
  float* pc = c.data();
  column_sums(
      B, H, threads,
      [=](int64_t r, int64_t h, double& t1, double& t2) {
        const double v = load(z, r * H + h);
        t1 = v;
        t2 = v * v;
      },
      [=](int64_t h, double sum, double sumsq) {
        const double mean = sum / B;
        const double var = std::max(sumsq / B - mean * mean, 0.0);
        const double rstd = 1.0 / std::sqrt(var + eps);
        mean_out[h] = static_cast<float>(mean);
        rstd_out[h] = static_cast<float>(rstd);
        var_out[h] = static_cast<float>(var);
        pa[h] = static_cast<float>(gamma[h] * rstd);  // y = relu(a z + c): the normalisation folded
        pc[h] = static_cast<float>(beta[h] - mean * gamma[h] * rstd);
      });
  const uint32_t lo_k = static_cast<uint32_t>(key), hi_k = static_cast<uint32_t>(key >> 32);
  const uint32_t cut = drop << 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const T* zr = z + r * H;
    T* yr = y + r * H;
    if (drop == 0) {
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) store(yr, h, std::max(pa[h] * load(zr, h) + pc[h], 0.0f));
      continue;
    }
    index_spans(static_cast<uint64_t>(r) * H, H, [=](int64_t off, int64_t n, uint32_t lo, uint32_t hi) {
      const uint32_t hi_ki = hi_k ^ hi;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const int64_t h = off + j;
        const float v = std::max(pa[h] * load(zr, h) + pc[h], 0.0f) * scale;
        store(yr, h, keyed_word(lo + static_cast<uint32_t>(j), lo_k, hi_ki) >= cut ? v : 0.0f);
      }
    });
  }
}

// dy, y, z [B, H]; mean, rstd, gamma [H] (float). Writes dz [B, H], dgamma and dbeta [H] (float).
template <class T>
void bnrd_backward(const T* dy, const T* y, const T* z, const float* mean, const float* rstd, const float* gamma,
                   float scale, int64_t B, int64_t H, int threads, T* dz, float* dgamma, float* dbeta) {
  std::vector<float> k(H), m1(H), m2(H);
  float* pk = k.data();
  float* p1 = m1.data();
  float* p2 = m2.data();
  column_sums(
      B, H, threads,
      [=](int64_t r, int64_t h, double& t1, double& t2) {
        const int64_t i = r * H + h;
        const float g = load(dy, i) * (load(y, i) > 0.0f ? scale : 0.0f);  // both loads unconditional: vectorised
        t1 = g;
        t2 = static_cast<double>(g) * ((load(z, i) - mean[h]) * rstd[h]);
      },
      [=](int64_t h, double sg, double sgx) {
        dbeta[h] = static_cast<float>(sg);
        dgamma[h] = static_cast<float>(sgx);
        pk[h] = gamma[h] * rstd[h];  // dz = gamma rstd (g - mean(g) - xhat mean(g xhat))
        p1[h] = static_cast<float>(sg / B);
        p2[h] = static_cast<float>(sgx / B);
      });
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const T* dyr = dy + r * H;
    const T* yr = y + r * H;
    const T* zr = z + r * H;
    T* dzr = dz + r * H;
#pragma omp simd
    for (int64_t h = 0; h < H; ++h) {
      const float g = load(dyr, h) * (load(yr, h) > 0.0f ? scale : 0.0f);
      const float xhat = (load(zr, h) - mean[h]) * rstd[h];
      store(dzr, h, pk[h] * (g - p1[h] - xhat * p2[h]));
    }
  }
}

// The MLP's output unit: out[r] = b + sum_h x[r, h] w[h] (x float32 or bf16; w, b, out float32, sums in float).
// Under bf16 autocast torch casts x [B, H] to float32 for this product and the backward's gradient back (two 6.5
// MB copies at [4096, 400]) and runs the backward's outer product [B, 1] x [1, H] as a matrix product with K = 1;
// together 3.6 ms of a 45 ms AutoInt+ step (torch profiler), against about 0.5 here.
template <class T>
void unit_forward(const T* x, const float* w, float b, int64_t B, int64_t H, int threads, float* out) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < B; ++r) {
    const T* xr = x + r * H;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t h = 0; h < H; ++h) acc += load(xr, h) * w[h];
    out[r] = acc + b;
  }
}

// g [B] (d out); writes dx[r, h] = g[r] w[h] (x's type) and dw[h] = sum_r g[r] x[r, h], in one pass over x and dx.
// Threads take whole groups of rows (at most 64 groups, fixed by B alone), each group sums into a slot of its own,
// and the slots are added in order, so the thread count changes no bit. (Splitting the columns between threads
// instead, as column_sums does, took 0.55 ms at [4096, 400] against 0.29: each thread then writes half rows.)
template <class T>
void unit_backward(const T* x, const float* w, const float* g, int64_t B, int64_t H, int threads, T* dx, float* dw) {
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(64, B));
  std::vector<float> slots(groups * H);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t q = 0; q < groups; ++q) {
    float* __restrict acc = slots.data() + q * H;
    std::fill(acc, acc + H, 0.0f);
    for (int64_t r = q * B / groups; r < (q + 1) * B / groups; ++r) {
      const float gr = g[r];
      const T* xr = x + r * H;
      T* dxr = dx + r * H;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        store(dxr, h, gr * w[h]);
        acc[h] += gr * load(xr, h);
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    float total = 0.0f;
    for (int64_t q = 0; q < groups; ++q) total += slots[q * H + h];
    dw[h] = total;
  }
}

}  // namespace

extern "C" {

#define AIM_BNRD(suffix, T)                                                                                        \
  void aim_bnrd_forward_##suffix(const T* z, const float* gamma, const float* beta, uint64_t key, uint32_t drop,   \
                                 float scale, double eps, int64_t B, int64_t H, int threads, T* y, float* mean,    \
                                 float* rstd, float* var) {                                                        \
    bnrd_forward(z, gamma, beta, key, drop, scale, eps, B, H, threads, y, mean, rstd, var);                       \
  }                                                                                                                \
  void aim_bnrd_backward_##suffix(const T* dy, const T* y, const T* z, const float* mean, const float* rstd,       \
                                  const float* gamma, float scale, int64_t B, int64_t H, int threads, T* dz,       \
                                  float* dgamma, float* dbeta) {                                                   \
    bnrd_backward(dy, y, z, mean, rstd, gamma, scale, B, H, threads, dz, dgamma, dbeta);                          \
  }
AIM_BNRD(f32, float)
AIM_BNRD(bf16, uint16_t)
#undef AIM_BNRD

#define AIM_UNIT(suffix, T)                                                                                        \
  void aim_unit_forward_##suffix(const T* x, const float* w, float b, int64_t B, int64_t H, int threads,           \
                                 float* out) {                                                                     \
    unit_forward(x, w, b, B, H, threads, out);                                                                     \
  }                                                                                                                \
  void aim_unit_backward_##suffix(const T* x, const float* w, const float* g, int64_t B, int64_t H, int threads,   \
                                  T* dx, float* dw) {                                                              \
    unit_backward(x, w, g, B, H, threads, dx, dw);                                                                 \
  }
AIM_UNIT(f32, float)
AIM_UNIT(bf16, uint16_t)
#undef AIM_UNIT

// Dropout of n float32 values whose indices start at `first` (0 but in tests): out[k] = x[k] * scale where
// keyed_word(first + k, key) >= drop << 16, else 0. With x null it writes the mask itself (scale or 0). Being
// linear, the same call with the same key is the backward.
void aim_dropout(const float* x, uint64_t key, uint32_t drop, float scale, uint64_t first, int64_t n, int threads,
                 float* out) {
  const uint32_t lo_k = static_cast<uint32_t>(key), hi_k = static_cast<uint32_t>(key >> 32);
  const uint32_t cut = drop << 16;
  constexpr int64_t block = 1 << 14;
  const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * block;
    index_spans(first + static_cast<uint64_t>(start), std::min(block, n - start),
                [=](int64_t off, int64_t count, uint32_t lo, uint32_t hi) {
                  const uint32_t hi_ki = hi_k ^ hi;
                  float* os = out + start + off;
                  if (x == nullptr) {
#pragma omp simd
                    for (int64_t j = 0; j < count; ++j)
                      os[j] = keyed_word(lo + static_cast<uint32_t>(j), lo_k, hi_ki) >= cut ? scale : 0.0f;
                  } else {
                    const float* xs = x + start + off;
#pragma omp simd
                    for (int64_t j = 0; j < count; ++j)
                      os[j] = xs[j] * (keyed_word(lo + static_cast<uint32_t>(j), lo_k, hi_ki) >= cut ? scale : 0.0f);
                  }
                });
  }
}

}  // extern "C"
