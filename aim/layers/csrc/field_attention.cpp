// Self-attention over a row's fields, AutoInt's interacting layer core, forward and backward, float32 on CPU.
// Loaded by aim/layers/native.py (ctypes, no torch headers).
//
// Why: at AutoInt's shapes the sequence is a row's fields (Frappe: 10) and a head is a few numbers wide (5), so
// each of B * heads attention problems is a few hundred multiply-adds. torch's fused CPU attention spent 6.1 ms
// forward and 7.5 ms backward per layer at batch 4096 (2 heads), about 40 % of an AutoInt+ step, for 1.6 % of
// its FLOPs. Loops over such small problems do not vectorise, so here the SIMD lanes are rows: a block of L rows
// is copied into lane-minor buffers (x[i][d][lane]), and every loop ends in a loop over the L lanes, which the
// compiler vectorises whatever n and the head width are. The softmax weights are kept for the backward in that
// layout ([blocks, H, n, n, L], private to this file). exp is a polynomial that vectorises (exp_poly). Rows are
// independent, so the thread count changes no bit.
//
// Layout: qkv [B, n, 3, H, D] (the projection's output as it is), out [B, n, H, D], dqkv like qkv.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t L = 16;  // rows per block: the lanes

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

// Copies head h's part (D numbers from `offset` of each field) of rows [b0, b0 + rows) of a [B, n, width] array
// into x[i][d][lane]; missing lanes get 0.
inline void gather(const float* src, int64_t b0, int64_t rows, int64_t n, int64_t width, int64_t offset, int64_t D,
                   float* x) {
  for (int64_t l = 0; l < L; ++l) {
    if (l >= rows) {
      for (int64_t x_id = 0; x_id < n * D; ++x_id) x[x_id * L + l] = 0.0f;
      continue;
    }
    const float* row = src + (b0 + l) * n * width + offset;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) x[(i * D + d) * L + l] = row[i * width + d];
  }
}

inline void scatter(const float* x, int64_t b0, int64_t rows, int64_t n, int64_t width, int64_t offset, int64_t D,
                    float* dst) {
  for (int64_t l = 0; l < rows; ++l) {
    float* row = dst + (b0 + l) * n * width + offset;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t d = 0; d < D; ++d) row[i * width + d] = x[(i * D + d) * L + l];
  }
}

}  // namespace

extern "C" {

// The attention buffer's size in floats: ceil(B / L) * L * H * n * n.
int64_t aim_field_attention_buffer(int64_t B, int64_t n, int64_t H) { return (B + L - 1) / L * L * H * n * n; }

void aim_field_attention_forward(const float* qkv, int64_t B, int64_t n, int64_t H, int64_t D, float scale,
                                 int threads, float* out, float* attn) {
  const int64_t width = 3 * H * D, blocks = (B + L - 1) / L;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(4 * n * D * L);
    float* __restrict q = buffer.data();
    float* __restrict k = q + n * D * L;
    float* __restrict v = k + n * D * L;
    float* __restrict o = v + n * D * L;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      for (int64_t h = 0; h < H; ++h) {
        gather(qkv, b0, rows, n, width, h * D, D, q);
        gather(qkv, b0, rows, n, width, (H + h) * D, D, k);
        gather(qkv, b0, rows, n, width, (2 * H + h) * D, D, v);
        float* __restrict a = attn + ((blk * H + h) * n * n) * L;
        for (int64_t i = 0; i < n; ++i) {
          float* __restrict ai = a + i * n * L;  // ai[j * L + lane]: scores, then weights
          float top[L], total[L];                // locals, so they stay in registers
          for (int64_t l = 0; l < L; ++l) top[l] = -INFINITY, total[l] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            float acc[L] = {};
            for (int64_t d = 0; d < D; ++d) {
              const float* __restrict qd = q + (i * D + d) * L;
              const float* __restrict kd = k + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) acc[l] += qd[l] * kd[l];
            }
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
          for (int64_t d = 0; d < D; ++d) {  // o_i = sum_j a_ij v_j
            float acc[L] = {};
            for (int64_t j = 0; j < n; ++j) {
              const float* __restrict vd = v + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) acc[l] += ai[j * L + l] * vd[l];
            }
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) o[(i * D + d) * L + l] = acc[l];
          }
        }
        scatter(o, b0, rows, n, H * D, h * D, D, out);
      }
    }
  }
}

// dout [B, n, H, D]; writes dqkv [B, n, 3, H, D].
void aim_field_attention_backward(const float* qkv, const float* attn, const float* dout, int64_t B, int64_t n,
                                  int64_t H, int64_t D, float scale, int threads, float* dqkv) {
  const int64_t width = 3 * H * D, blocks = (B + L - 1) / L;
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
        gather(qkv, b0, rows, n, width, h * D, D, q);
        gather(qkv, b0, rows, n, width, (H + h) * D, D, k);
        gather(qkv, b0, rows, n, width, (2 * H + h) * D, D, v);
        gather(dout, b0, rows, n, H * D, h * D, D, go);
        const float* __restrict a = attn + ((blk * H + h) * n * n) * L;
        // ds_ij = scale * a_ij (dA_ij - sum_j' a_ij' dA_ij'), dA_ij = <dO_i, v_j>: the softmax's backward
        for (int64_t i = 0; i < n; ++i) {
          float dot[L] = {};
          for (int64_t j = 0; j < n; ++j) {
            float acc[L] = {};
            for (int64_t d = 0; d < D; ++d) {
              const float* __restrict gd = go + (i * D + d) * L;
              const float* __restrict vd = v + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) acc[l] += gd[l] * vd[l];
            }
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
        // dq_i = sum_j ds_ij k_j;  dk_j = sum_i ds_ij q_i;  dv_j = sum_i a_ij dO_i
        for (int part = 0; part < 3; ++part) {
          const float* __restrict weights = part == 2 ? a : ds;
          const float* __restrict with = part == 0 ? k : part == 1 ? q : go;
          const bool by_row = part == 0;  // dq sums over j of row i; dk and dv over i of column j
          for (int64_t x = 0; x < n; ++x) {
            for (int64_t d = 0; d < D; ++d) {
              float acc[L] = {};
              for (int64_t y = 0; y < n; ++y) {
                const float* __restrict w = weights + (by_row ? x * n + y : y * n + x) * L;
                const float* __restrict e = with + (y * D + d) * L;
#pragma omp simd
                for (int64_t l = 0; l < L; ++l) acc[l] += w[l] * e[l];
              }
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) grad[(x * D + d) * L + l] = acc[l];
            }
          }
          scatter(grad, b0, rows, n, width, (part * H + h) * D, D, dqkv);
        }
      }
    }
  }
}

}  // extern "C"
