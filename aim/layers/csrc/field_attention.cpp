// Self-attention over a row's fields, AutoInt's interacting layer core, forward and backward, float32 on CPU.
// Loaded by aim/layers/native.py (ctypes, no torch headers).
//
// Why: at AutoInt's shapes the sequence is a row's fields (Frappe: 10) and a head is a few numbers wide (5), so
// each of B * heads attention problems is a few hundred multiply-adds. torch's fused CPU attention spent 6.1 ms
// forward and 7.5 ms backward per layer at batch 4096 (2 heads), about 40 % of an AutoInt+ step, for 1.6 % of
// its FLOPs. Loops over such small problems do not vectorise, so here the SIMD lanes are rows: a block of L rows
// is copied into lane-minor buffers (x[i][d][lane]), and every loop ends in a loop over the L lanes, which the
// compiler vectorises whatever n and the head width are. The softmax weights are kept for the backward in that
// layout ([blocks, H, n, n, L], private to this file). exp is a polynomial that vectorises (Cephes' expf, about
// 1 ulp). Rows are independent, so the thread count changes no bit.
//
// Layout: qkv [B, n, 3, H, D] (the projection's output as it is), out [B, n, H, D], dqkv like qkv.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t L = 16;  // rows per block: the lanes

inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
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
    std::vector<float> buffer(4 * n * D * L + 2 * L);
    float* q = buffer.data();
    float* k = q + n * D * L;
    float* v = k + n * D * L;
    float* o = v + n * D * L;
    float* top = o + n * D * L;
    float* total = top + L;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      for (int64_t h = 0; h < H; ++h) {
        gather(qkv, b0, rows, n, width, h * D, D, q);
        gather(qkv, b0, rows, n, width, (H + h) * D, D, k);
        gather(qkv, b0, rows, n, width, (2 * H + h) * D, D, v);
        float* a = attn + ((blk * H + h) * n * n) * L;
        for (int64_t i = 0; i < n; ++i) {
          float* ai = a + i * n * L;
          for (int64_t l = 0; l < L; ++l) top[l] = -INFINITY, total[l] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            float* s = ai + j * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) s[l] = 0.0f;
            for (int64_t d = 0; d < D; ++d) {
              const float* qd = q + (i * D + d) * L;
              const float* kd = k + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) s[l] += qd[l] * kd[l];
            }
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) {
              s[l] *= scale;
              top[l] = std::max(top[l], s[l]);
            }
          }
          for (int64_t j = 0; j < n; ++j) {
            float* s = ai + j * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) {
              s[l] = exp_poly(s[l] - top[l]);
              total[l] += s[l];
            }
          }
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) total[l] = 1.0f / total[l];
          float* oi = o + i * D * L;
          for (int64_t x = 0; x < D * L; ++x) oi[x] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            float* s = ai + j * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) s[l] *= total[l];
            for (int64_t d = 0; d < D; ++d) {
              const float* vd = v + (j * D + d) * L;
              float* od = oi + d * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) od[l] += s[l] * vd[l];
            }
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
    std::vector<float> buffer(7 * n * D * L + n * n * L + 2 * L);
    float* q = buffer.data();
    float* k = q + n * D * L;
    float* v = k + n * D * L;
    float* go = v + n * D * L;
    float* dq = go + n * D * L;
    float* dk = dq + n * D * L;
    float* dv = dk + n * D * L;
    float* ds = dv + n * D * L;
    float* dot = ds + n * n * L;
    float* da = dot + L;
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t b0 = blk * L, rows = std::min(L, B - b0);
      for (int64_t h = 0; h < H; ++h) {
        gather(qkv, b0, rows, n, width, h * D, D, q);
        gather(qkv, b0, rows, n, width, (H + h) * D, D, k);
        gather(qkv, b0, rows, n, width, (2 * H + h) * D, D, v);
        gather(dout, b0, rows, n, H * D, h * D, D, go);
        std::fill(dq, dq + 3 * n * D * L, 0.0f);  // dq, dk, dv
        const float* a = attn + ((blk * H + h) * n * n) * L;
        for (int64_t i = 0; i < n; ++i) {
          for (int64_t l = 0; l < L; ++l) dot[l] = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            const float* aij = a + (i * n + j) * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) da[l] = 0.0f;
            for (int64_t d = 0; d < D; ++d) {
              const float* gd = go + (i * D + d) * L;
              const float* vd = v + (j * D + d) * L;
              float* dvd = dv + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) {
                da[l] += gd[l] * vd[l];    // dA_ij = <dO_i, v_j>
                dvd[l] += aij[l] * gd[l];  // dv_j += a_ij dO_i
              }
            }
            float* dsij = ds + (i * n + j) * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) {
              dsij[l] = da[l];
              dot[l] += aij[l] * da[l];
            }
          }
          for (int64_t j = 0; j < n; ++j) {
            const float* aij = a + (i * n + j) * L;
            float* dsij = ds + (i * n + j) * L;
#pragma omp simd
            for (int64_t l = 0; l < L; ++l) dsij[l] = aij[l] * (dsij[l] - dot[l]) * scale;  // softmax backward
            for (int64_t d = 0; d < D; ++d) {
              const float* kd = k + (j * D + d) * L;
              const float* qd = q + (i * D + d) * L;
              float* dqd = dq + (i * D + d) * L;
              float* dkd = dk + (j * D + d) * L;
#pragma omp simd
              for (int64_t l = 0; l < L; ++l) {
                dqd[l] += dsij[l] * kd[l];
                dkd[l] += dsij[l] * qd[l];
              }
            }
          }
        }
        scatter(dq, b0, rows, n, width, h * D, D, dqkv);
        scatter(dk, b0, rows, n, width, (H + h) * D, D, dqkv);
        scatter(dv, b0, rows, n, width, (2 * H + h) * D, D, dqkv);
      }
    }
  }
}

}  // extern "C"
