// Self-attention over a row's fields, AutoInt's interacting layer core, forward and backward, on CPU, reading and
// writing float32 or bfloat16. Loaded by aim/layers/native.py (ctypes, no torch headers).
//
// Why: at AutoInt's shapes the sequence is a row's fields (Frappe: 10) and a head is a few numbers wide (5), so
// each of B * heads attention problems is a few hundred multiply-adds. torch's fused CPU attention spent 6.1 ms
// forward and 7.5 ms backward per layer at batch 4096 (2 heads), about 40 % of an AutoInt+ step, for 1.6 % of
// its FLOPs. Loops over such small problems do not vectorise, so here the SIMD lanes are rows: a block of L rows
// is copied into lane-minor buffers (x[i][d][lane]), and every loop ends in a loop over the L lanes, which the
// compiler vectorises whatever n and the head width are. The softmax weights are kept for the backward in that
// layout ([blocks, H, n, n, L], float32, private to this file). exp is a polynomial that vectorises (exp_poly).
// Rows are independent, so the thread count changes no bit.
//
// The layer around the attention is fused in too, as at these sizes it cost more than the attention itself: the
// projections (q, k, v of every head and the residual, one [width, E] weight) are made from x in the lanes, so
// the [B, n, width] projection is never written (MKL ran these K = 10 products at 25-45 GFLOP/s, 1.8 ms per layer
// with their backward); the residual is added on the way out and the ReLU applied there; the backward takes the
// ReLU's mask from the output, remakes the projection from x, and returns dx and the weight's gradient. The
// weight's gradient is summed in lanes over a group of blocks, then over the lanes, then over the groups in order
// (64 groups at most, fixed by B alone), so the thread count changes no bit there either.
//
// That pays while the weight is small (Frappe's AutoInt+: [40, 10]). A wide layer (BARS' config: [512, 128]) is a
// real matrix product, which MKL does far better than lanes of broadcast multiply-adds, and its per-lane weight
// gradient (16 * width * E floats, 4 MB) would not stay in cache: there the caller passes the projection as x and no
// weight (w null), and the kernel starts from the projection.
//
// Layout: x [B, n, E]; weight [width, E], rows q, k, v of every head ([3, H, D]) then, with `residual`, the
// residual projection [H, D] (width = 3HD or 4HD); out [B, n, H, D]. x, out and dx are float32 or bf16, the
// weight and its gradient float32. Arithmetic is float32 whatever the element type; a bf16 result is rounded
// once, to nearest even.
// A block's lanes are one 512-bit vector; GCC otherwise prefers two 256-bit halves on x86 (forward -10 %, bf16
// backward -20 % here). Ignored where the CPU has no AVX-512 (and by compilers other than GCC).
#pragma GCC target("prefer-vector-width=512")

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t L = 16;  // rows per block: the lanes

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(p[i]) << 16);
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  p[i] = v != v ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffU + ((u >> 16) & 1U)) >> 16);
}

// exp(x) for x <= 0 (a score minus its row's largest), Cephes' expf polynomial, about 1 ulp. k = round(x / ln 2)
// comes from the 1.5 * 2^23 trick, whose low bits hold k, so there is no float -> int conversion (with one, GCC
// would not vectorise the loop).
inline float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float k = shifted - 12582912.0f;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = (__builtin_bit_cast(uint32_t, shifted) - 0x4b400000U + 127U) << 23;  // 2^k
  return p * __builtin_bit_cast(float, bits);
}

// acc[lane] = sum_d x[(i * xs + d) * L + lane] * y[(j * ys + d) * L + lane], xs and ys the arrays' field
// strides: <q_i, k_j> in the forward, <dO_i, v_j> in the backward.
inline void lane_dot(const float* __restrict x, int64_t xs, int64_t i, const float* __restrict y, int64_t ys,
                     int64_t j, int64_t D, float* __restrict acc) {
  for (int64_t l = 0; l < L; ++l) acc[l] = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float* __restrict xd = x + (i * xs + d) * L;
    const float* __restrict yd = y + (j * ys + d) * L;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) acc[l] += xd[l] * yd[l];
  }
}

// out[d * L + lane] = sum_y w[y * step * L + lane] * e[(y * es + d) * L + lane] for every d < D: a weighted sum of
// n fields' lane vectors (field stride es), the weights w[y] read `step` apart (1: along a row of an n x n
// matrix, n: down a column).
inline void lane_weighted_sum(const float* __restrict w, int64_t step, const float* __restrict e, int64_t es,
                              int64_t n, int64_t D, float* __restrict out) {
  for (int64_t d = 0; d < D; ++d) {
    float acc[L] = {};
    for (int64_t y = 0; y < n; ++y) {
      const float* __restrict wy = w + y * step * L;
      const float* __restrict ed = e + (y * es + d) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) acc[l] += wy[l] * ed[l];
    }
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) out[d * L + l] = acc[l];
  }
}

// Rows [b0, b0 + rows) of a [B, N] array into lane-minor t[c * L + lane], as float; missing lanes get 0. With
// `mask` (an array like src), an element counts only where mask > 0. A block is copied whole, once, rather
// than head by head: runs of N contiguous numbers instead of D (a third of the kernel's time at D = 5). The copy
// goes in chunks of 64 columns, so the 4 KB of t that 16 rows write stays in L1 (a wide layer's block is larger
// than L1: BARS' config, 10 fields of 512, is 328 KB, and column by column its strided stores missed).
constexpr int64_t kChunk = 64;

template <class T>
inline void to_lanes(const T* src, const T* mask, int64_t b0, int64_t rows, int64_t N, float* __restrict t) {
  for (int64_t c0 = 0; c0 < N; c0 += kChunk) {
    const int64_t c1 = std::min(N, c0 + kChunk);
    for (int64_t l = 0; l < L; ++l) {
      if (l >= rows) {
        for (int64_t c = c0; c < c1; ++c) t[c * L + l] = 0.0f;
        continue;
      }
      const T* s = src + (b0 + l) * N;
      if (mask == nullptr) {
        for (int64_t c = c0; c < c1; ++c) t[c * L + l] = load(s, c);
      } else {
        const T* m = mask + (b0 + l) * N;
        for (int64_t c = c0; c < c1; ++c) t[c * L + l] = load(m, c) > 0.0f ? load(s, c) : 0.0f;
      }
    }
  }
}

template <class T>
inline void from_lanes(const float* __restrict t, int64_t b0, int64_t rows, int64_t N, T* dst) {
  for (int64_t c0 = 0; c0 < N; c0 += kChunk) {
    const int64_t c1 = std::min(N, c0 + kChunk);
    for (int64_t l = 0; l < rows; ++l) {
      T* d = dst + (b0 + l) * N;
      for (int64_t c = c0; c < c1; ++c) store(d, c, t[c * L + l]);
    }
  }
}

// out[(i * outs + o) * L + lane] = sum_k w[o * o_stride + k * k_stride] * in[(i * ins + k) * L + lane], for each of
// a block's n fields: the projections (w as [outs, ins]) and, with the strides swapped, their backward to the input
// (w read as its transpose). The sum runs over k in order either way.
inline void lane_matvec(const float* __restrict w, int64_t o_stride, int64_t k_stride, const float* __restrict in,
                        int64_t n, int64_t ins, int64_t outs, float* __restrict out) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < outs; ++o) {
      float acc[L] = {};
      for (int64_t k = 0; k < ins; ++k) {
        const float wk = w[o * o_stride + k * k_stride];
        const float* __restrict xk = in + (i * ins + k) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[l] += wk * xk[l];
      }
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) out[(i * outs + o) * L + l] = acc[l];
    }
}

// p[(i * width + c) * L + lane] = sum_e w[c * E + e] * x[(i * E + e) * L + lane]: a block's projections.
inline void project(const float* __restrict w, const float* __restrict x, int64_t n, int64_t E, int64_t width,
                    float* __restrict p) {
  lane_matvec(w, E, 1, x, n, E, width, p);
}

// The projection's backward for a block:
//   dx[(i * E + e) * L + lane] = sum_c dp[(i * width + c) * L + lane] w[c * E + e],
//   dw_lanes[(c * E + e) * L + lane] += sum_i dp[(i * width + c) * L + lane] x[(i * E + e) * L + lane].
inline void project_back(const float* __restrict w, const float* __restrict x, const float* __restrict dp, int64_t n,
                         int64_t E, int64_t width, float* __restrict dx, float* __restrict dw_lanes) {
  lane_matvec(w, 1, E, dp, n, width, E, dx);
  for (int64_t c = 0; c < width; ++c)
    for (int64_t e = 0; e < E; ++e) {
      float* __restrict acc = dw_lanes + (c * E + e) * L;
      for (int64_t i = 0; i < n; ++i) {
        const float* __restrict g = dp + (i * width + c) * L;
        const float* __restrict xe = x + (i * E + e) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[l] += g[l] * xe[l];
      }
    }
}

// out = [ReLU](attention + [residual]); attn gets the softmax weights.
template <class T>
void forward(const T* x, const float* w, int64_t B, int64_t n, int64_t E, int64_t H, int64_t D, bool residual,
             bool relu, float scale, int threads, T* out, float* attn) {
  const int64_t HD = H * D, width = (residual ? 4 : 3) * HD, blocks = (B + L - 1) / L;
  const bool fused = w != nullptr;  // else x is the projection itself (E = width), made by the caller
  const int64_t xe = fused ? E : 0;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer((xe + width + HD) * n * L);
    float* __restrict xl = buffer.data();      // the block's x, xl[(i * E + e) * L + lane]
    float* __restrict p = xl + n * xe * L;     // its projections, p[(i * width + c) * L + lane]
    float* __restrict o = p + n * width * L;  // its output, o[(i * HD + c) * L + lane]
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      if (fused) {
        to_lanes<T>(x, nullptr, b0, rows, n * E, xl);
        project(w, xl, n, E, width, p);
      } else {
        to_lanes<T>(x, nullptr, b0, rows, n * width, p);
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* __restrict q = p + h * D * L;
        const float* __restrict k = p + (H + h) * D * L;
        const float* __restrict v = p + (2 * H + h) * D * L;
        float* __restrict a = attn + ((blk * H + h) * n * n) * L;
        for (int64_t i = 0; i < n; ++i) {
          float* __restrict ai = a + i * n * L;  // ai[j * L + lane]: scores, then weights
          float top[L], total[L];                // locals, so they stay in registers
          for (int64_t l = 0; l < L; ++l) top[l] = -INFINITY, total[l] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            float acc[L];
            lane_dot(q, width, i, k, width, j, D, acc);
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) {
              ai[j * L + l] = acc[l] * scale;
              top[l] = std::max(top[l], acc[l] * scale);
            }
          }
          for (int64_t j = 0; j < n; ++j) {
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) {
              const float e = exp_poly(ai[j * L + l] - top[l]);
              ai[j * L + l] = e;
              total[l] += e;
            }
          }
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) total[l] = 1.0f / total[l];
          for (int64_t j = 0; j < n; ++j) {
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) ai[j * L + l] *= total[l];
          }
          lane_weighted_sum(ai, 1, v, width, n, D, o + (i * HD + h * D) * L);  // o_i = sum_j a_ij v_j
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        float* __restrict oi = o + i * HD * L;
        const float* __restrict ri = p + (i * width + 3 * HD) * L;
        if (residual) {
#pragma omp simd
          for (int64_t x = 0; x < HD * L; ++x) oi[x] += ri[x];
        }
        if (relu) {
#pragma omp simd
          for (int64_t x = 0; x < HD * L; ++x) oi[x] = oi[x] > 0.0f ? oi[x] : 0.0f;
        }
      }
      from_lanes<T>(o, b0, rows, n * HD, out);
    }
  }
}

// The number of groups the backward sums the weight's gradient in (a slot of width * E floats each).
int64_t groups_of(int64_t B) { return std::min<int64_t>(64, (B + L - 1) / L); }

// dout [B, n, H, D]; with `relu`, out is the forward's output (the ReLU's mask: out > 0). Writes dx and dw; slots
// is scratch of groups_of(B) * width * E floats. With w null, x is the projection and dx its gradient (dw, slots
// unused).
template <class T>
void backward(const T* x, const float* w, const float* attn, const T* out, const T* dout, int64_t B, int64_t n,
              int64_t E, int64_t H, int64_t D, bool residual, bool relu, float scale, int threads, T* dx, float* dw,
              float* slots) {
  const int64_t HD = H * D, width = (residual ? 4 : 3) * HD, blocks = (B + L - 1) / L, groups = groups_of(B);
  const bool fused = w != nullptr;  // else x is the projection itself (E = width): dx is its gradient, no dw
  const int64_t xe = fused ? E : 0, we = fused ? width * E : 0;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer((2 * xe + 2 * width + HD + n) * n * L + we * L);
    float* __restrict xl = buffer.data();        // the block's x
    float* __restrict dxl = xl + n * xe * L;     // its gradient
    float* __restrict p = dxl + n * xe * L;      // the block's projections
    float* __restrict dp = p + n * width * L;    // their gradient, the same layout
    float* __restrict go = dp + n * width * L;   // dO (through the ReLU), go[(i * HD + c) * L + lane]
    float* __restrict ds = go + n * HD * L;      // ds[(i * n + j) * L + lane]
    float* __restrict dwl = ds + n * n * L;      // the group's weight gradient, per lane
#pragma omp for schedule(static)
    for (int64_t group = 0; group < groups; ++group) {
      std::fill(dwl, dwl + we * L, 0.0f);
      for (int64_t blk = group * blocks / groups; blk < (group + 1) * blocks / groups; ++blk) {
        const int64_t b0 = blk * L, rows = std::min(L, B - b0);
        if (fused) {
          to_lanes<T>(x, nullptr, b0, rows, n * E, xl);
          project(w, xl, n, E, width, p);
        } else {
          to_lanes<T>(x, nullptr, b0, rows, n * width, p);
        }
        to_lanes<T>(dout, relu ? out : nullptr, b0, rows, n * HD, go);
        if (residual) {  // d residual = dO
          for (int64_t i = 0; i < n; ++i) {
            float* __restrict dr = dp + (i * width + 3 * HD) * L;
            const float* __restrict gi = go + i * HD * L;
#pragma omp simd
            for (int64_t z = 0; z < HD * L; ++z) dr[z] = gi[z];
          }
        }
        for (int64_t h = 0; h < H; ++h) {
          const float* __restrict q = p + h * D * L;
          const float* __restrict k = p + (H + h) * D * L;
          const float* __restrict v = p + (2 * H + h) * D * L;
          const float* __restrict gh = go + h * D * L;
          const float* __restrict a = attn + ((blk * H + h) * n * n) * L;
          // ds_ij = scale * a_ij (dA_ij - sum_j' a_ij' dA_ij'), dA_ij = <dO_i, v_j>: the softmax's backward
          for (int64_t i = 0; i < n; ++i) {
            float dot[L] = {};
            for (int64_t j = 0; j < n; ++j) {
              float acc[L];
              lane_dot(gh, HD, i, v, width, j, D, acc);
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) {
                ds[(i * n + j) * L + l] = acc[l];
                dot[l] += a[(i * n + j) * L + l] * acc[l];
              }
            }
            for (int64_t j = 0; j < n; ++j) {
#pragma omp simd
              for (int64_t l = 0; l < L; ++l)
                ds[(i * n + j) * L + l] = a[(i * n + j) * L + l] * (ds[(i * n + j) * L + l] - dot[l]) * scale;
            }
          }
          // dq_i = sum_j ds_ij k_j (along row i);  dk_j = sum_i ds_ij q_i, dv_j = sum_i a_ij dO_i (down column j)
          for (int64_t z = 0; z < n; ++z) {
            lane_weighted_sum(ds + z * n * L, 1, k, width, n, D, dp + (z * width + h * D) * L);
            lane_weighted_sum(ds + z * L, n, q, width, n, D, dp + (z * width + (H + h) * D) * L);
            lane_weighted_sum(a + z * L, n, gh, HD, n, D, dp + (z * width + (2 * H + h) * D) * L);
          }
        }
        if (fused) {
          project_back(w, xl, dp, n, E, width, dxl, dwl);  // missing lanes have x = 0: they add nothing to dw
          from_lanes<T>(dxl, b0, rows, n * E, dx);
        } else {
          from_lanes<T>(dp, b0, rows, n * width, dx);
        }
      }
      float* slot = slots + group * we;
      for (int64_t c = 0; c < we; ++c) {
        float total = 0.0f;
        for (int64_t l = 0; l < L; ++l) total += dwl[c * L + l];
        slot[c] = total;
      }
    }
  }
  for (int64_t c = 0; c < we; ++c) {
    float total = 0.0f;
    for (int64_t group = 0; group < groups; ++group) total += slots[group * we + c];
    dw[c] = total;
  }
}

}  // namespace

extern "C" {

// The attention buffer's size in floats: ceil(B / L) * L * H * n * n.
int64_t aim_field_attention_buffer(int64_t B, int64_t n, int64_t H) { return (B + L - 1) / L * L * H * n * n; }

// The backward's scratch for the weight's gradient, in floats.
int64_t aim_field_attention_slots(int64_t B, int64_t width, int64_t E) { return groups_of(B) * width * E; }

#define AIM_FIELD_ATTENTION(suffix, T)                                                                         \
  void aim_field_attention_forward_##suffix(const T* x, const float* w, int64_t B, int64_t n, int64_t E,        \
                                            int64_t H, int64_t D, bool residual, bool relu, float scale,        \
                                            int threads, T* out, float* attn) {                                 \
    forward<T>(x, w, B, n, E, H, D, residual, relu, scale, threads, out, attn);                                 \
  }                                                                                                            \
  void aim_field_attention_backward_##suffix(const T* x, const float* w, const float* attn, const T* out,       \
                                             const T* dout, int64_t B, int64_t n, int64_t E, int64_t H,         \
                                             int64_t D, bool residual, bool relu, float scale, int threads,     \
                                             T* dx, float* dw, float* slots) {                                  \
    backward<T>(x, w, attn, out, dout, B, n, E, H, D, residual, relu, scale, threads, dx, dw, slots);           \
  }

AIM_FIELD_ATTENTION(f32, float)
AIM_FIELD_ATTENTION(bf16, uint16_t)

}  // extern "C"
