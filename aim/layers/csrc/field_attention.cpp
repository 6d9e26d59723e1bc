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
// The layer around the attention is fused in too, as its element-wise ops cost as much as the attention at these
// sizes (and under bf16 autocast, casts to float and back): the residual projection comes in the same array as
// q, k and v (one product instead of two), is added on the way out, and the ReLU is applied there; the backward
// takes the ReLU's mask from the output.
//
// Layout: proj [B, n, width], each field's q, k, v of every head ([3, H, D]) then, with `residual`, its residual
// projection [H, D] (width = 3HD or 4HD); out [B, n, H, D]; dproj like proj. Arithmetic is float32 whatever the
// element type; a bf16 result is rounded once, to nearest even.
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

// acc[lane] = sum_d x[(i * D + d) * L + lane] * y[(j * D + d) * L + lane]: <q_i, k_j> in the forward, <dO_i, v_j>
// in the backward.
inline void lane_dot(const float* __restrict x, const float* __restrict y, int64_t i, int64_t j, int64_t D,
                     float* __restrict acc) {
  for (int64_t l = 0; l < L; ++l) acc[l] = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float* __restrict xd = x + (i * D + d) * L;
    const float* __restrict yd = y + (j * D + d) * L;
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) acc[l] += xd[l] * yd[l];
  }
}

// out[(x * D + d) * L + lane] = sum_y w[y * step * L + lane] * e[(y * D + d) * L + lane] for every d: a weighted
// sum of n lane vectors, the weights w[y] read `step` apart (1: along a row of an n x n matrix, n: down a column).
inline void lane_weighted_sum(const float* __restrict w, int64_t step, const float* __restrict e, int64_t x,
                              int64_t n, int64_t D, float* __restrict out) {
  for (int64_t d = 0; d < D; ++d) {
    float acc[L] = {};
    for (int64_t y = 0; y < n; ++y) {
      const float* __restrict wy = w + y * step * L;
      const float* __restrict ed = e + (y * D + d) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) acc[l] += wy[l] * ed[l];
    }
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) out[(x * D + d) * L + l] = acc[l];
  }
}

// Copies D numbers from `offset` of each field of rows [b0, b0 + rows) of a [B, n, width] array into
// x[i][d][lane]; missing lanes get 0. With `mask` (an array like src), an element counts only where mask > 0.
template <class T>
inline void gather(const T* src, const T* mask, int64_t b0, int64_t rows, int64_t n, int64_t width, int64_t offset,
                   int64_t D, float* x) {
  for (int64_t l = 0; l < L; ++l) {
    if (l >= rows) {
      for (int64_t x_id = 0; x_id < n * D; ++x_id) x[x_id * L + l] = 0.0f;
      continue;
    }
    const int64_t row = (b0 + l) * n * width + offset;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t at = row + i * width + d;
        x[(i * D + d) * L + l] = mask == nullptr || load(mask, at) > 0.0f ? load(src, at) : 0.0f;
      }
  }
}

template <class T>
inline void scatter(const float* x, int64_t b0, int64_t rows, int64_t n, int64_t width, int64_t offset, int64_t D,
                    T* dst) {
  for (int64_t l = 0; l < rows; ++l) {
    const int64_t row = (b0 + l) * n * width + offset;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) store(dst, row + i * width + d, x[(i * D + d) * L + l]);
  }
}

// out = [ReLU](attention + [residual]); attn gets the softmax weights.
template <class T>
void forward(const T* proj, int64_t B, int64_t n, int64_t H, int64_t D, bool residual, bool relu, float scale,
             int threads, T* out, float* attn) {
  const int64_t width = (residual ? 4 : 3) * H * D, blocks = (B + L - 1) / L;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(5 * n * D * L);
    float* __restrict q = buffer.data();
    float* __restrict k = q + n * D * L;
    float* __restrict v = k + n * D * L;
    float* __restrict o = v + n * D * L;
    float* __restrict r = o + n * D * L;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      for (int64_t h = 0; h < H; ++h) {
        gather<T>(proj, nullptr, b0, rows, n, width, h * D, D, q);
        gather<T>(proj, nullptr, b0, rows, n, width, (H + h) * D, D, k);
        gather<T>(proj, nullptr, b0, rows, n, width, (2 * H + h) * D, D, v);
        float* __restrict a = attn + ((blk * H + h) * n * n) * L;
        for (int64_t i = 0; i < n; ++i) {
          float* __restrict ai = a + i * n * L;  // ai[j * L + lane]: scores, then weights
          float top[L], total[L];                // locals, so they stay in registers
          for (int64_t l = 0; l < L; ++l) top[l] = -INFINITY, total[l] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            float acc[L];
            lane_dot(q, k, i, j, D, acc);
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
          lane_weighted_sum(ai, 1, v, i, n, D, o);  // o_i = sum_j a_ij v_j
        }
        if (residual) {
          gather<T>(proj, nullptr, b0, rows, n, width, (3 * H + h) * D, D, r);
#pragma omp simd
          for (int64_t x = 0; x < n * D * L; ++x) o[x] += r[x];
        }
        if (relu) {
#pragma omp simd
          for (int64_t x = 0; x < n * D * L; ++x) o[x] = o[x] > 0.0f ? o[x] : 0.0f;
        }
        scatter<T>(o, b0, rows, n, H * D, h * D, D, out);
      }
    }
  }
}

// dout [B, n, H, D]; with `relu`, out is the forward's output (the ReLU's mask: out > 0). Writes dproj.
template <class T>
void backward(const T* proj, const float* attn, const T* out, const T* dout, int64_t B, int64_t n, int64_t H,
              int64_t D, bool residual, bool relu, float scale, int threads, T* dproj) {
  const int64_t width = (residual ? 4 : 3) * H * D, blocks = (B + L - 1) / L;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(5 * n * D * L + n * n * L);
    float* __restrict q = buffer.data();
    float* __restrict k = q + n * D * L;
    float* __restrict v = k + n * D * L;
    float* __restrict go = v + n * D * L;
    float* __restrict grad = go + n * D * L;  // dq, dk or dv of the head, before it is scattered
    float* __restrict ds = grad + n * D * L;  // ds[(i * n + j) * L + lane]
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      for (int64_t h = 0; h < H; ++h) {
        gather<T>(proj, nullptr, b0, rows, n, width, h * D, D, q);
        gather<T>(proj, nullptr, b0, rows, n, width, (H + h) * D, D, k);
        gather<T>(proj, nullptr, b0, rows, n, width, (2 * H + h) * D, D, v);
        gather<T>(dout, relu ? out : nullptr, b0, rows, n, H * D, h * D, D, go);
        if (residual) scatter<T>(go, b0, rows, n, width, (3 * H + h) * D, D, dproj);  // d residual = dO
        const float* __restrict a = attn + ((blk * H + h) * n * n) * L;
        // ds_ij = scale * a_ij (dA_ij - sum_j' a_ij' dA_ij'), dA_ij = <dO_i, v_j>: the softmax's backward
        for (int64_t i = 0; i < n; ++i) {
          float dot[L] = {};
          for (int64_t j = 0; j < n; ++j) {
            float acc[L];
            lane_dot(go, v, i, j, D, acc);
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
        for (int64_t x = 0; x < n; ++x) lane_weighted_sum(ds + x * n * L, 1, k, x, n, D, grad);
        scatter<T>(grad, b0, rows, n, width, h * D, D, dproj);
        for (int64_t x = 0; x < n; ++x) lane_weighted_sum(ds + x * L, n, q, x, n, D, grad);
        scatter<T>(grad, b0, rows, n, width, (H + h) * D, D, dproj);
        for (int64_t x = 0; x < n; ++x) lane_weighted_sum(a + x * L, n, go, x, n, D, grad);
        scatter<T>(grad, b0, rows, n, width, (2 * H + h) * D, D, dproj);
      }
    }
  }
}

}  // namespace

extern "C" {

// The attention buffer's size in floats: ceil(B / L) * L * H * n * n.
int64_t aim_field_attention_buffer(int64_t B, int64_t n, int64_t H) { return (B + L - 1) / L * L * H * n * n; }

#define AIM_FIELD_ATTENTION(suffix, T)                                                                         \
  void aim_field_attention_forward_##suffix(const T* proj, int64_t B, int64_t n, int64_t H, int64_t D,          \
                                            bool residual, bool relu, float scale, int threads, T* out,         \
                                            float* attn) {                                                      \
    forward<T>(proj, B, n, H, D, residual, relu, scale, threads, out, attn);                                    \
  }                                                                                                            \
  void aim_field_attention_backward_##suffix(const T* proj, const float* attn, const T* out, const T* dout,      \
                                             int64_t B, int64_t n, int64_t H, int64_t D, bool residual,         \
                                             bool relu, float scale, int threads, T* dproj) {                   \
    backward<T>(proj, attn, out, dout, B, n, H, D, residual, relu, scale, threads, dproj);                      \
  }

AIM_FIELD_ATTENTION(f32, float)
AIM_FIELD_ATTENTION(bf16, uint16_t)

}  // extern "C"
